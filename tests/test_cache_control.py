"""What a cache may keep: a customer's data and changes never, the public lists briefly."""

from datetime import datetime, time, timedelta

import pytest
from django.utils import timezone

from apps.reservations.models import Reservation

from .factories import ReservationFactory, RoomFactory, TimeSlotFactory

pytestmark = pytest.mark.django_db

NO_STORE = "no-store, private"


def post(client, path, body=None):
    return client.post(f"/api{path}", body or {}, content_type="application/json")


def max_age(response) -> int:
    directives = dict(
        part.strip().partition("=")[::2] for part in response["Cache-Control"].split(",")
    )
    assert "public" in directives, response["Cache-Control"]
    return int(directives["max-age"])


def test_responses_with_a_customers_data_or_a_change_are_never_kept(client):
    slot = TimeSlotFactory()
    made = post(
        client,
        "/reservations/",
        {
            "slot_id": slot.pk,
            "customer_name": "Ada",
            "customer_email": "ada@example.com",
            "party_size": 3,
        },
    )
    token = made.json()["token"]

    responses = {
        "reserve": made,
        "read": client.get(f"/api/reservations/{token}/"),
        "checkout": post(client, f"/reservations/{token}/payment/"),
        "cancel": post(client, f"/reservations/{token}/cancel/"),
        "refused": post(client, "/reservations/", {"slot_id": slot.pk}),
        "unknown": client.get("/api/reservations/00000000-0000-4000-8000-000000000000/"),
        "no such path": client.get("/api/nowhere/"),
        "no slash": client.get("/api/rooms"),
    }

    assert made.status_code == 201
    assert {name: r["Cache-Control"] for name, r in responses.items()} == dict.fromkeys(
        responses, NO_STORE
    )


def test_the_room_list_may_be_kept_briefly(client, settings):
    settings.PUBLIC_LIST_MAX_AGE = 30
    RoomFactory()

    assert max_age(client.get("/api/rooms/")) == 30


def test_a_slot_list_is_never_kept_past_the_next_hold_end(client, settings):
    settings.PUBLIC_LIST_MAX_AGE = 30
    now = timezone.now()
    day = timezone.localdate(now) + timedelta(days=1)
    noon = timezone.make_aware(datetime.combine(day, time(12)))
    room = RoomFactory()
    TimeSlotFactory(room=room, starts_at=noon)
    held = TimeSlotFactory(room=room, starts_at=noon + timedelta(hours=2))
    ReservationFactory(time_slot=held, expires_at=now + timedelta(seconds=12.5))
    lapsed = TimeSlotFactory(room=room, starts_at=noon + timedelta(hours=4))
    ReservationFactory(time_slot=lapsed, expires_at=now - timedelta(seconds=1))
    slots = f"/api/rooms/{room.slug}/slots/?date={day}"

    assert 11 <= max_age(client.get(slots)) <= 12
    Reservation.objects.filter(time_slot=held).update(status=Reservation.Status.PAID, paid_at=now)
    assert max_age(client.get(slots)) == 30


def test_a_slot_list_is_never_kept_past_the_next_start(client, settings):
    settings.PUBLIC_LIST_MAX_AGE = 30
    now = timezone.now()
    room = RoomFactory()
    soon = TimeSlotFactory(room=room, starts_at=now + timedelta(seconds=8.5))

    response = client.get(
        f"/api/rooms/{room.slug}/slots/?date={timezone.localdate(soon.starts_at)}"
    )

    assert 7 <= max_age(response) <= 8


def test_a_slot_list_is_never_kept_past_the_waiting_lists_last_offer(client, settings):
    """A lapsed hold goes to a waiting party until WAITLIST_OFFER_SECONDS before the start."""
    settings.PUBLIC_LIST_MAX_AGE = 30
    settings.WAITLIST_OFFER_SECONDS = 60
    room = RoomFactory()
    slot = TimeSlotFactory(room=room, starts_at=timezone.now() + timedelta(seconds=72.5))

    response = client.get(
        f"/api/rooms/{room.slug}/slots/?date={timezone.localdate(slot.starts_at)}"
    )

    assert 11 <= max_age(response) <= 12
