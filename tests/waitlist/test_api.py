"""The waiting list's API: join, show, leave; each refusal's status and code; nothing written."""

from datetime import timedelta
from uuid import uuid4

import pytest
from django.utils import timezone

from apps.messaging.models import Message
from apps.reservations import services as reservations
from apps.reservations.errors import (
    AlreadyWaiting,
    NotWaiting,
    SlotAvailable,
    TooManyWaiting,
)
from apps.reservations.models import Reservation, WaitingEntry

from ..factories import RoomFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client):
    class Api:
        def get(self, path):
            return client.get(f"/api{path}")

        def post(self, path, body=None):
            return client.post(f"/api{path}", body or {}, content_type="application/json")

    return Api()


def party(slot, name="Ada", **overrides):
    return {
        "slot_id": slot.pk,
        "customer_name": name,
        "customer_email": f"{name.lower()}@example.com",
        "party_size": 3,
        **overrides,
    }


def held_slot(**fields):
    """A slot someone holds (a running hold): parties may wait for it."""
    slot = TimeSlotFactory(**fields)
    reserve(slot, customer_email="holder@example.com")
    return slot


def error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def written() -> tuple[int, int]:
    """Entries on any list, and the messages queued for them."""
    return WaitingEntry.objects.count(), Message.objects.filter(waiting_entry__isnull=False).count()


# ---------------------------------------------------------------------------
# Join
# ---------------------------------------------------------------------------


def test_joining_is_201_with_the_place_in_the_order_of_joining(api):
    slot = held_slot()

    first = api.post("/waitlist/", party(slot, "Ada"))
    second = api.post("/waitlist/", party(slot, "Bo", party_size=2))

    assert (first.status_code, second.status_code) == (201, 201)
    body = second.json()
    entry = WaitingEntry.objects.get(customer_name="Bo")
    assert body == {
        "token": str(entry.token),
        "status": "waiting",
        "place": 2,
        "party_size": 2,
        "customer_name": "Bo",
        "customer_email": "bo@example.com",
        "slot": {
            "id": slot.pk,
            "starts_at": body["slot"]["starts_at"],
            "ends_at": body["slot"]["ends_at"],
            "room": {"slug": slot.room.slug, "name": slot.room.name},
        },
        "offer": None,
    }
    assert first.json()["place"] == 1
    assert Message.objects.filter(waiting_entry=entry, kind="waiting").count() == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_email": "not-an-email"}, "customer_email"),
        ({"customer_name": "   "}, "customer_name"),
        ({"party_size": 0}, "party_size"),
        ({"party_size": "3"}, "party_size"),
        ({"slot_id": None}, "slot_id"),
        ({"status": "offered"}, "status"),
    ],
)
def test_invalid_fields_are_400_with_field_errors_and_nothing_written(api, change, field):
    slot = held_slot()

    response = api.post("/waitlist/", party(slot, **change))

    assert error(response) == (400, "invalid")
    assert list(response.json()["error"]["fields"]) == [field]
    assert written() == (0, 0)


def test_a_party_too_large_for_the_room_is_400_on_party_size(api):
    slot = held_slot(room=RoomFactory(min_players=2, max_players=4))

    response = api.post("/waitlist/", party(slot, party_size=5))

    assert error(response) == (400, "invalid")
    assert response.json()["error"]["fields"] == {"party_size": ["This room takes 2 to 4 players."]}
    assert written() == (0, 0)


def test_an_unknown_slot_is_404(api):
    response = api.post("/waitlist/", {**party(held_slot()), "slot_id": 999999})

    assert error(response) == (404, "slot_not_found")
    assert written() == (0, 0)


def test_a_free_slot_is_409_slot_available_reserve_it_instead(api):
    slot = TimeSlotFactory()

    response = api.post("/waitlist/", party(slot))

    assert error(response) == (409, "slot_available")
    assert response.json()["error"]["message"] == SlotAvailable.default_message
    assert written() == (0, 0)
    assert not Reservation.objects.exists()


def test_a_slot_whose_hold_lapsed_with_no_one_waiting_is_409_slot_available(api):
    slot = held_slot()
    Reservation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    response = api.post("/waitlist/", party(slot))

    assert error(response) == (409, "slot_available")
    assert written() == (0, 0)


def test_joining_twice_with_the_same_email_in_any_case_is_409_already_waiting(api):
    slot = held_slot()
    api.post("/waitlist/", party(slot))

    response = api.post("/waitlist/", party(slot, customer_email="ADA@Example.com"))

    assert error(response) == (409, "already_waiting")
    assert response.json()["error"]["message"] == AlreadyWaiting.default_message
    assert written() == (1, 1)


def test_the_fourth_place_for_one_email_is_429_too_many_waiting_and_writes_nothing(api, settings):
    settings.MAX_WAITING_PER_EMAIL = 3
    slots = [held_slot() for _ in range(4)]
    for slot in slots[:3]:
        assert api.post("/waitlist/", party(slot)).status_code == 201

    response = api.post("/waitlist/", party(slots[3], customer_email="Ada@EXAMPLE.com"))

    assert error(response) == (429, "too_many_waiting")
    assert response.json()["error"]["message"] == TooManyWaiting.default_message
    assert written() == (3, 3)
    assert not WaitingEntry.objects.filter(time_slot=slots[3]).exists()
    # Another address is not held back; leaving one list makes room again.
    assert api.post("/waitlist/", party(slots[3], "Bo")).status_code == 201
    token = WaitingEntry.objects.filter(customer_name="Ada").first().token
    api.post(f"/waitlist/{token}/leave/")
    assert api.post("/waitlist/", party(slots[3])).status_code == 201


# ---------------------------------------------------------------------------
# Show
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", [str(uuid4()), "not-a-uuid", "1"])
def test_unknown_tokens_are_404(api, token):
    for response in (api.get(f"/waitlist/{token}/"), api.post(f"/waitlist/{token}/leave/")):
        assert error(response) == (404, "not_found")


def test_show_gives_the_offer_with_its_seconds_left_once_offered(api, settings):
    settings.WAITLIST_OFFER_SECONDS = 600
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email="holder@example.com")
    ada = api.post("/waitlist/", party(slot, "Ada")).json()["token"]
    bo = api.post("/waitlist/", party(slot, "Bo")).json()["token"]
    before = api.get(f"/waitlist/{ada}/").json()

    reservations.reservation_cancel(reservation=hold)
    offered = api.get(f"/waitlist/{ada}/").json()
    behind = api.get(f"/waitlist/{bo}/").json()

    assert (before["status"], before["place"], before["offer"]) == ("waiting", 1, None)
    offer = Reservation.objects.get(is_offer=True)
    assert (offered["status"], offered["place"]) == ("offered", None)
    assert offered["offer"]["token"] == str(offer.token)
    assert offered["offer"]["status"] == "pending"
    assert offered["offer"]["seconds_left"] in (599, 600)
    assert (behind["status"], behind["place"]) == ("waiting", 1)
    # The offer is a reservation like any other: its own endpoint shows it as one.
    shown = api.get(f"/reservations/{offer.token}/").json()
    assert (shown["is_offer"], shown["customer_email"]) == (True, "ada@example.com")


def test_show_hands_a_lapsed_hold_over_without_waiting_for_the_scheduler(api, settings):
    settings.WAITLIST_OFFER_SECONDS = 900
    slot = held_slot()
    ada = api.post("/waitlist/", party(slot)).json()["token"]
    Reservation.objects.filter(is_offer=False).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    shown = api.get(f"/waitlist/{ada}/").json()

    assert shown["status"] == "offered"
    assert shown["offer"]["seconds_left"] in (899, 900)


# ---------------------------------------------------------------------------
# Leave
# ---------------------------------------------------------------------------


def test_leaving_while_waiting_moves_the_others_up(api):
    slot = held_slot()
    ada = api.post("/waitlist/", party(slot, "Ada")).json()["token"]
    bo = api.post("/waitlist/", party(slot, "Bo")).json()["token"]

    response = api.post(f"/waitlist/{ada}/leave/")

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["place"]) == ("left", None)
    assert api.get(f"/waitlist/{bo}/").json()["place"] == 1
    again = api.post(f"/waitlist/{ada}/leave/")  # leaving twice is leaving
    assert (again.status_code, again.json()["status"]) == (200, "left")


def test_leaving_with_an_offer_cancels_it_and_offers_the_slot_to_the_next_party(api):
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email="holder@example.com")
    ada = api.post("/waitlist/", party(slot, "Ada")).json()["token"]
    bo = api.post("/waitlist/", party(slot, "Bo")).json()["token"]
    reservations.reservation_cancel(reservation=hold)

    response = api.post(f"/waitlist/{ada}/leave/")

    assert response.status_code == 200
    left = response.json()
    assert (left["status"], left["offer"]["status"]) == ("left", "cancelled")
    assert left["offer"]["seconds_left"] == 0
    next_party = api.get(f"/waitlist/{bo}/").json()
    assert next_party["status"] == "offered"
    assert next_party["offer"]["status"] == "pending"
    assert Reservation.objects.get(token=next_party["offer"]["token"]).customer_name == "Bo"


@pytest.mark.parametrize("ended", ["booked", "lapsed"])
def test_leaving_a_place_that_ended_is_409_not_waiting(api, ended):
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email="holder@example.com")
    ada = api.post("/waitlist/", party(slot, "Ada")).json()["token"]
    reservations.reservation_cancel(reservation=hold)
    offer = Reservation.objects.get(is_offer=True)
    if ended == "booked":
        api.post(f"/reservations/{offer.token}/pay/", {"payment_reference": "PAY-ADA"})
    else:
        Reservation.objects.filter(pk=offer.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    before = api.get(f"/waitlist/{ada}/").json()

    response = api.post(f"/waitlist/{ada}/leave/")

    assert before["status"] == ended
    assert error(response) == (409, "not_waiting")
    assert response.json()["error"]["message"] == NotWaiting.default_message
    assert api.get(f"/waitlist/{ada}/").json() == before
