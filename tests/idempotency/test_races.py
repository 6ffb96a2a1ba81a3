"""
Two requests with one Idempotency-Key at once: one reservation, and both get its 201.

Threads start together (``run_together``) on both databases.
"""

import time

import pytest
from django.test import Client

from apps.idempotency.models import IdempotencyRecord
from apps.reservations import services
from apps.reservations.models import Reservation

from ..conftest import run_together
from ..factories import TimeSlotFactory
from .conftest import booking

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 8


def reserving(slot, key: str, replayed: list[bool]):
    """A client reserving ``slot`` with ``key``: what it was told, as "status token"."""

    def action() -> str:
        response = Client().post(
            "/api/reservations/",
            booking(slot),
            content_type="application/json",
            headers={"Idempotency-Key": key},
        )
        replayed.append(response.has_header("Idempotent-Replayed"))
        body = response.json()
        return f"{response.status_code} {body.get('token') or body['error']['code']}"

    return action


def test_two_requests_with_one_key_make_one_reservation_and_get_the_same_201():
    for round_ in range(ROUNDS):
        slot = TimeSlotFactory()
        replayed: list[bool] = []

        outcome = run_together(*(reserving(slot, f"key-{round_}", replayed) for _ in range(2)))

        reservation = Reservation.objects.get(time_slot=slot)
        assert outcome == {f"201 {reservation.token}": 2}, round_
        assert sorted(replayed) == [False, True], round_
    assert IdempotencyRecord.objects.filter(status="done").count() == ROUNDS


def test_a_retry_waits_for_the_first_request_still_running_and_repeats_its_answer(monkeypatch):
    slot = TimeSlotFactory()
    create = services.reservation_create

    def slow(**kwargs):
        time.sleep(0.5)  # the first request is still running when the retry arrives
        return create(**kwargs)

    monkeypatch.setattr(services, "reservation_create", slow)
    replayed: list[bool] = []

    outcome = run_together(*(reserving(slot, "slow-key", replayed) for _ in range(3)))

    reservation = Reservation.objects.get()
    assert outcome == {f"201 {reservation.token}": 3}
    assert sorted(replayed) == [False, True, True]
