"""The rooms API: the active rooms, and a day's slots with their availability."""

from datetime import datetime, time, timedelta

import pytest
from django.utils import timezone

from apps.reservations.models import Reservation

from ..factories import RoomFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client):
    class Api:
        def get(self, path):
            return client.get(f"/api{path}")

    return Api()


def test_rooms_lists_the_active_rooms(api):
    RoomFactory(slug="tomb", name="The Tomb", price="89.50", min_players=2, max_players=6)
    RoomFactory(slug="closed", is_active=False)

    response = api.get("/rooms/")

    assert response.status_code == 200
    assert response.json() == [
        {
            "slug": "tomb",
            "name": "The Tomb",
            "description": "A room for tests.",
            "duration_minutes": 60,
            "min_players": 2,
            "max_players": 6,
            "price": "89.50",
            "currency": "EUR",
            "pricing": "room",
            "price_tiers": [],
        }
    ]


def test_slots_of_a_day_show_availability(api):
    room = RoomFactory(slug="tomb")
    day = timezone.localdate() + timedelta(days=2)
    ten_o_clock = datetime.combine(day, time(10), tzinfo=timezone.get_default_timezone())
    free = TimeSlotFactory(room=room, starts_at=ten_o_clock)
    taken = TimeSlotFactory(room=room, starts_at=free.starts_at + timedelta(hours=2))
    TimeSlotFactory(room=room, starts_at=free.starts_at + timedelta(days=1))  # another day
    reserve(taken)

    response = api.get(f"/rooms/tomb/slots/?date={day.isoformat()}")

    assert response.status_code == 200
    assert [(s["id"], s["available"]) for s in response.json()] == [
        (free.pk, True),
        (taken.pk, False),
    ]


def test_a_lapsed_hold_shows_its_slot_available(api):
    slot = TimeSlotFactory()
    reserve(slot)
    Reservation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # no job ran
    day = timezone.localdate(slot.starts_at)

    slots = api.get(f"/rooms/{slot.room.slug}/slots/?date={day}").json()

    assert [s["available"] for s in slots if s["id"] == slot.pk] == [True]


def test_slots_of_an_unknown_room_are_404(api):
    response = api.get("/rooms/nope/slots/")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_slots_with_a_bad_date_are_400_with_the_field(api):
    RoomFactory(slug="tomb")

    response = api.get("/rooms/tomb/slots/?date=tomorrow")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "date" in response.json()["error"]["fields"]


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01", "2000-01-01"])
def test_dates_far_away_are_400(api, day):
    RoomFactory(slug="tomb")

    response = api.get(f"/rooms/tomb/slots/?date={day}")

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "date": ["Pick a date within ten years of today."]
    }
