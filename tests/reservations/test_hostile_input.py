"""
A catalogue of hostile input to the API.

Each case asserts the status, the error code, and that nothing changed: no
reservation, the slot still free, no job in the store.
"""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.reservations.models import Reservation, ReservationEvent
from apps.rooms.models import TimeSlot

from ..factories import RoomFactory, TimeSlotFactory

pytestmark = pytest.mark.django_db

LONG = "x" * 10_000


@pytest.fixture
def slot():
    return TimeSlotFactory(room=RoomFactory(slug="tomb", min_players=2, max_players=6))


@pytest.fixture
def past_slot():
    start = timezone.now() - timedelta(hours=2)
    return TimeSlotFactory(room=RoomFactory(slug="old"), starts_at=start)


def valid(slot, **changes):
    body = {
        "slot_id": slot.pk,
        "customer_name": "John Doe",
        "customer_email": "john@example.com",
        "party_size": 3,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.fixture
def unchanged(slot, job_store, django_capture_on_commit_callbacks):
    """Assert after the request that nothing was written anywhere, the job store included."""
    with django_capture_on_commit_callbacks(execute=True):
        yield
    assert not Reservation.objects.exists()
    assert not ReservationEvent.objects.exists()
    assert TimeSlot.objects.get(pk=slot.pk).status == TimeSlot.Status.ACTIVE
    assert job_store.jobs() == {}


def post(client, path, body, content_type="application/json"):
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(f"/api{path}", raw, content_type=content_type)


BODY_CASES = {
    "malformed JSON": ('{"slot_id": 1,', 400, "malformed"),
    "JSON that is a list": ("[1, 2, 3]", 400, "invalid"),
    "empty body": ("", 400, "invalid"),
}


@pytest.mark.parametrize("case", BODY_CASES, ids=list(BODY_CASES))
def test_bodies_that_are_not_a_booking(client, unchanged, case):
    raw, status, code = BODY_CASES[case]
    response = post(client, "/reservations/", raw)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_a_wrong_content_type(client, slot, unchanged):
    response = post(client, "/reservations/", valid(slot), content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


FIELD_CASES = {
    "party size as a string": ({"party_size": "3"}, "party_size"),
    "party size 0": ({"party_size": 0}, "party_size"),
    "party size negative": ({"party_size": -4}, "party_size"),
    "party size above the room's maximum": ({"party_size": 7}, "party_size"),
    "party size enormous": ({"party_size": 10**30}, "party_size"),
    "slot id as a list": ({"slot_id": [1]}, "slot_id"),
    "name as a list": ({"customer_name": ["John"]}, "customer_name"),
    "name missing": ({"customer_name": ...}, "customer_name"),
    "name of 10,000 characters": ({"customer_name": LONG}, "customer_name"),
    "name with control characters": ({"customer_name": "Jo\x00hn\x1b[31m"}, "customer_name"),
    "name with a right-to-left override": ({"customer_name": "John\u202eeoD"}, "customer_name"),
    "name with a right-to-left mark": ({"customer_name": "John\u200fDoe"}, "customer_name"),
    "email that is not an email": ({"customer_email": "john@"}, "customer_email"),
    "email of 10,000 characters": ({"customer_email": LONG + "@example.com"}, "customer_email"),
    "an extra field": ({"status": "paid"}, "status"),
    "a null slot id": ({"slot_id": None}, "slot_id"),
}


@pytest.mark.parametrize("case", FIELD_CASES, ids=list(FIELD_CASES))
def test_fields_that_are_wrong(client, slot, unchanged, case):
    changes, field = FIELD_CASES[case]
    response = post(client, "/reservations/", valid(slot, **changes))
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"]


def test_emoji_in_a_name_are_welcome(client, slot, job_store):
    response = post(client, "/reservations/", valid(slot, customer_name="Zoë 🎉 Team"))
    assert response.status_code == 201
    assert response.json()["customer_name"] == "Zoë 🎉 Team"


@pytest.mark.parametrize("slot_id", [999_999, 2**62])
def test_slots_that_do_not_exist(client, slot, unchanged, slot_id):
    response = post(client, "/reservations/", valid(slot, slot_id=slot_id))
    assert (response.status_code, response.json()["error"]["code"]) == (404, "slot_not_found")


def test_a_slot_in_the_past(client, slot, past_slot, unchanged):
    response = post(client, "/reservations/", valid(slot, slot_id=past_slot.pk))
    assert (response.status_code, response.json()["error"]["code"]) == (409, "slot_unavailable")
    assert not Reservation.objects.filter(time_slot=past_slot).exists()


@pytest.mark.parametrize(
    "token",
    ["00000000-0000-0000-0000-000000000000", "not-a-token", "1", "%00", "a" * 2000],
)
def test_tokens_that_do_not_exist_or_are_malformed(client, unchanged, token):
    for response in (
        client.get(f"/api/reservations/{token}/"),
        post(client, f"/reservations/{token}/pay/", {"payment_reference": "P-1"}),
        post(client, f"/reservations/{token}/cancel/", {}),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("day", ["1900-01-01", "9999-12-31", "tomorrow", "2026-02-30", "20261130"])
def test_dates_far_away_or_not_dates(client, unchanged, day):
    response = client.get(f"/api/rooms/tomb/slots/?date={day}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "date" in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", "/api/rooms/"),
        ("delete", "/api/rooms/"),
        ("post", "/api/rooms/tomb/slots/"),
        ("get", "/api/reservations/"),
        ("delete", "/api/reservations/00000000-0000-0000-0000-000000000000/"),
        ("get", "/api/reservations/00000000-0000-0000-0000-000000000000/pay/"),
        ("patch", "/api/reservations/00000000-0000-0000-0000-000000000000/cancel/"),
    ],
)
def test_methods_an_endpoint_does_not_support_are_405(client, unchanged, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response["Allow"]


def test_an_unknown_api_path_is_a_json_404(client, unchanged):
    response = client.get("/api/nothing-here/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_a_body_of_several_megabytes_is_refused_early(client, slot, unchanged):
    response = post(client, "/reservations/", valid(slot, customer_name="x" * 5_000_000))
    assert (response.status_code, response.json()["error"]["code"]) == (413, "too_large")
