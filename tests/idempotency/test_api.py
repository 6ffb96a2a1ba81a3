"""
Retries with an Idempotency-Key: the first answer again, whatever happened since; no second effect.

A response "lost on the network" is simply one the test does not read
before it retries.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.idempotency import services as idempotency
from apps.idempotency.models import IdempotencyRecord
from apps.payments.models import Payment
from apps.reservations import services
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import lapsed_holds_release

from ..factories import TimeSlotFactory
from .conftest import booking

pytestmark = pytest.mark.django_db

KEY = "5f0b7a52-8f0c-4f4b-9a38-3c1a51c3f1d2"


def test_a_reservation_whose_201_was_lost_is_answered_again_by_the_retry(api, settings):
    settings.MAX_PENDING_HOLDS_PER_EMAIL = 1
    slot = TimeSlotFactory()
    api.post("/reservations/", booking(slot), key=KEY)  # the 201 is lost on the way

    retry = api.post("/reservations/", booking(slot), key=KEY)

    reservation = Reservation.objects.get()
    assert retry.status_code == 201
    assert retry.json()["token"] == str(reservation.token)
    assert retry.json()["status"] == "pending"
    assert retry["Content-Type"] == "application/json; charset=utf-8"
    assert retry["Idempotent-Replayed"] == "true"
    assert retry["Cache-Control"] == "no-store, private"
    # One hold against the customer's limit of one: a new reservation is refused for it.
    other = api.post("/reservations/", booking(TimeSlotFactory()), key="another key")
    assert (other.status_code, other.json()["error"]["code"]) == (429, "too_many_holds")


def test_the_retry_gets_the_first_response_byte_for_byte(api):
    slot = TimeSlotFactory()
    first = api.post("/reservations/", booking(slot), key=KEY)

    retry = api.post("/reservations/", booking(slot), key=KEY)

    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert "Idempotent-Replayed" not in first


def test_a_retry_without_a_key_finds_the_slot_taken_by_its_own_hold(api):
    slot = TimeSlotFactory()
    api.post("/reservations/", booking(slot))

    retry = api.post("/reservations/", booking(slot))

    assert (retry.status_code, retry.json()["error"]["code"]) == (409, "slot_taken")
    assert Reservation.objects.count() == 1


def test_the_same_key_with_another_body_is_422_and_changes_nothing(api):
    slot = TimeSlotFactory()
    first = api.post("/reservations/", booking(slot), key=KEY)

    reused = api.post("/reservations/", booking(TimeSlotFactory()), key=KEY)

    assert reused.status_code == 422
    assert reused.json() == {
        "error": {
            "code": idempotency.KEY_REUSED,
            "message": idempotency.KEY_REUSED_MESSAGE,
        }
    }
    assert list(Reservation.objects.values_list("token", flat=True)) == [
        Reservation.objects.get(token=first.json()["token"]).token
    ]
    assert api.post("/reservations/", booking(slot), key=KEY).content == first.content


def test_the_body_is_compared_as_json_not_as_bytes(api, client):
    slot = TimeSlotFactory()
    first = api.post("/reservations/", booking(slot), key=KEY)
    reordered = '{"party_size": 3, "customer_email": "john@example.com", '
    reordered += f'"customer_name": "John Doe",  "slot_id": {slot.pk}}}'

    retry = client.post(
        "/api/reservations/",
        reordered,
        content_type="application/json",
        headers={"Idempotency-Key": KEY},
    )

    assert (retry.status_code, retry.content) == (201, first.content)


def test_a_retry_after_the_hold_lapsed_still_gets_the_first_201(api):
    slot = TimeSlotFactory()
    first = api.post("/reservations/", booking(slot), key=KEY)
    token = first.json()["token"]
    later = timezone.now() + timedelta(hours=1)
    lapsed_holds_release(cause=ReservationEvent.Cause.EXPIRY_JOB, now=later)

    retry = api.post("/reservations/", booking(slot), key=KEY)

    assert api.get(f"/reservations/{token}/").json()["status"] == "cancelled"
    assert (retry.status_code, retry.content) == (201, first.content)
    assert retry.json()["status"] == "pending"
    assert Reservation.objects.count() == 1


def test_a_payment_retried_is_one_payment_and_the_same_answer(api):
    token = api.post("/reservations/", booking(TimeSlotFactory())).json()["token"]
    pay = {"payment_reference": "PAY-1"}
    first = api.post(f"/reservations/{token}/pay/", pay, key=KEY)

    retry = api.post(f"/reservations/{token}/pay/", pay, key=KEY)

    assert (first.status_code, first.json()["status"]) == (200, "paid")
    assert (retry.status_code, retry.content) == (200, first.content)
    assert Payment.objects.count() == 1
    assert ReservationEvent.objects.filter(to_status="paid").count() == 1


def test_a_cancel_retried_gets_its_200_again_where_a_bare_retry_is_refused(api):
    token = api.post("/reservations/", booking(TimeSlotFactory())).json()["token"]
    first = api.post(f"/reservations/{token}/cancel/", key=KEY)

    retry = api.post(f"/reservations/{token}/cancel/", key=KEY)
    bare = api.post(f"/reservations/{token}/cancel/")

    assert (first.status_code, first.json()["status"]) == (200, "cancelled")
    assert (retry.status_code, retry.content) == (200, first.content)
    assert (bare.status_code, bare.json()["error"]["code"]) == (409, "already_cancelled")
    assert ReservationEvent.objects.filter(to_status="cancelled").count() == 1


def test_a_refusal_is_replayed_too(api):
    slot = TimeSlotFactory()
    api.post("/reservations/", booking(slot, customer_email="ada@example.com"))
    first = api.post("/reservations/", booking(slot), key=KEY)
    Reservation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # slot free

    retry = api.post("/reservations/", booking(slot), key=KEY)

    assert (first.status_code, first.json()["error"]["code"]) == (409, "slot_taken")
    assert (retry.status_code, retry.content) == (409, first.content)
    assert api.post("/reservations/", booking(slot), key="a new key").status_code == 201


def test_a_waiting_list_join_retried_is_one_place(api):
    slot = TimeSlotFactory()
    api.post("/reservations/", booking(slot, customer_email="ada@example.com"))
    first = api.post("/waitlist/", booking(slot), key=KEY)

    retry = api.post("/waitlist/", booking(slot), key=KEY)
    bare = api.post("/waitlist/", booking(slot))

    assert (first.status_code, first.json()["place"]) == (201, 1)
    assert (retry.status_code, retry.content) == (201, first.content)
    assert (bare.status_code, bare.json()["error"]["code"]) == (409, "already_waiting")


def test_a_429_is_not_stored_the_retry_after_retry_after_runs_again(api, settings):
    settings.MAX_PENDING_HOLDS_PER_EMAIL = 1
    held = api.post("/reservations/", booking(TimeSlotFactory())).json()["token"]
    slot = TimeSlotFactory()
    first = api.post("/reservations/", booking(slot), key=KEY)
    api.post(f"/reservations/{held}/cancel/")

    retry = api.post("/reservations/", booking(slot), key=KEY)

    assert (first.status_code, first.json()["error"]["code"]) == (429, "too_many_holds")
    assert first.has_header("Retry-After")
    assert retry.status_code == 201


def test_keys_are_scoped_to_the_endpoint(api):
    slot = TimeSlotFactory()
    token = api.post("/reservations/", booking(slot), key=KEY).json()["token"]
    other = api.post("/reservations/", booking(TimeSlotFactory()), key=KEY + "-2").json()["token"]

    cancel = api.post(f"/reservations/{token}/cancel/", key=KEY)
    cancel_other = api.post(f"/reservations/{other}/cancel/", key=KEY)

    assert (cancel.status_code, cancel.json()["token"]) == (200, token)
    assert (cancel_other.status_code, cancel_other.json()["token"]) == (200, other)
    assert set(IdempotencyRecord.objects.values_list("scope", flat=True)) == {
        "POST /api/reservations/",
        f"POST /api/reservations/{token}/cancel/",
        f"POST /api/reservations/{other}/cancel/",
    }


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "caf\u00e9", "tab\there", " leading", "trailing ", "bell\x07"],
    ids=["empty", "too-long", "not-ascii", "tab", "leading-space", "trailing-space", "control"],
)
def test_an_invalid_key_is_400_and_nothing_is_done(api, key):
    response = api.post("/reservations/", booking(TimeSlotFactory()), key=key)

    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": idempotency.INVALID_KEY, "message": idempotency.INVALID_KEY_MESSAGE}
    }
    assert not Reservation.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_a_key_of_255_printable_characters_is_accepted(api):
    key = ("a b~!" * 51)[:255]

    response = api.post("/reservations/", booking(TimeSlotFactory()), key=key)

    assert response.status_code == 201
    assert IdempotencyRecord.objects.get().key == key


def test_after_idempotency_key_hours_the_key_is_new_again(api, settings):
    settings.IDEMPOTENCY_KEY_HOURS = 24
    first = api.post("/reservations/", booking(TimeSlotFactory()), key=KEY)
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=24, seconds=1))

    again = api.post("/reservations/", booking(TimeSlotFactory()), key=KEY)

    assert again.status_code == 201, again.json()
    assert again.json()["token"] != first.json()["token"]
    assert Reservation.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 1


def test_a_view_that_raises_stores_nothing_and_the_retry_runs_again(api, monkeypatch):
    slot = TimeSlotFactory()
    create = services.reservation_create

    def fails(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(services, "reservation_create", fails)
    with pytest.raises(RuntimeError):
        api.post("/reservations/", booking(slot), key=KEY)
    assert not IdempotencyRecord.objects.exists()
    monkeypatch.setattr(services, "reservation_create", create)

    retry = api.post("/reservations/", booking(slot), key=KEY)

    assert retry.status_code == 201
    assert Reservation.objects.count() == 1


def test_a_crash_after_the_reservation_was_made_is_answered_with_that_reservation(api, monkeypatch):
    slot = TimeSlotFactory()
    create = services.reservation_create

    def crashes_after(**kwargs):
        create(**kwargs)
        raise RuntimeError("the worker was killed")

    monkeypatch.setattr(services, "reservation_create", crashes_after)
    with pytest.raises(RuntimeError):
        api.post("/reservations/", booking(slot), key=KEY)
    monkeypatch.setattr(services, "reservation_create", create)

    retry = api.post("/reservations/", booking(slot), key=KEY)

    reservation = Reservation.objects.get()
    assert (retry.status_code, retry.json()["token"]) == (201, str(reservation.token))


def test_a_request_left_in_progress_by_a_dead_process_is_taken_over(api, settings):
    settings.IDEMPOTENCY_STALE_SECONDS = 60
    slot = TimeSlotFactory()
    token = api.post("/reservations/", booking(slot), key=KEY).json()["token"]
    # As if the process died after the reservation committed, before its answer was stored.
    IdempotencyRecord.objects.update(
        status=IdempotencyRecord.Status.IN_PROGRESS,
        response_status=None,
        response_body=b"",
        started_at=timezone.now() - timedelta(seconds=61),
    )

    retry = api.post("/reservations/", booking(slot), key=KEY)

    assert (retry.status_code, retry.json()["token"]) == (201, token)
    assert Reservation.objects.count() == 1
    assert IdempotencyRecord.objects.get().status == "done"


def test_a_request_still_in_progress_makes_the_retry_wait_then_409(api, settings):
    settings.IDEMPOTENCY_WAIT_SECONDS = 0.3
    slot = TimeSlotFactory()
    api.post("/reservations/", booking(slot), key=KEY)
    IdempotencyRecord.objects.update(
        status=IdempotencyRecord.Status.IN_PROGRESS, started_at=timezone.now()
    )

    retry = api.post("/reservations/", booking(slot), key=KEY)

    assert retry.status_code == 409
    assert retry.json()["error"]["code"] == idempotency.KEY_IN_PROGRESS
    assert retry["Retry-After"] == "1"
    assert Reservation.objects.count() == 1


def test_the_openapi_document_describes_the_header_on_every_unsafe_call(api):
    paths = api.get("/openapi.json").json()["paths"]

    posts = {path: item["post"] for path, item in paths.items() if "post" in item}
    assert len(posts) == 11
    for path, operation in posts.items():
        headers = [p for p in operation["parameters"] if p["in"] == "header"]
        assert [h["name"] for h in headers] == ["Idempotency-Key"], path
        assert headers[0]["schema"]["maxLength"] == 255
        assert {"400", "409", "422"} <= set(operation["responses"]), path
    for item in paths.values():
        assert all(p["in"] != "header" for p in item.get("get", {}).get("parameters", []))
