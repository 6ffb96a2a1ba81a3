"""Races on one reservation or one slot end with exactly one consistent winner."""

import time
from collections import Counter
from datetime import timedelta

import pytest

from apps.reservations.models import Reservation
from apps.reservations.services import reservation_create, reservation_expire, reservation_pay
from apps.rooms.models import TimeSlot

from ..conftest import run_together
from ..factories import TimeSlotFactory

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 15


def reserve(slot_id, name="John Doe", now=None, hold_seconds=60):
    reservation_create(
        time_slot_id=slot_id,
        customer_name=name,
        customer_email="john@example.com",
        party_size=3,
        now=now,
        hold_seconds=hold_seconds,
    )
    return "reserved"


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_pay_and_expire_at_the_hold_boundary_have_one_winner(round_):
    slot = TimeSlotFactory()
    reserve(slot.pk)
    reservation = Reservation.objects.get(time_slot=slot)
    boundary = reservation.expires_at

    def pay(reference):
        # Paid a millisecond before the hold ends: valid on its own.
        copy = Reservation.objects.get(pk=reservation.pk)
        reservation_pay(
            reservation=copy, payment_reference=reference, now=boundary - timedelta(milliseconds=1)
        )
        return "paid"

    def expire():
        # Expired at the boundary: also valid on its own.
        return reservation_expire(reservation_id=reservation.pk, now=boundary).outcome.value

    outcome = run_together(
        lambda: pay("PAY-A"), expire, lambda: pay("PAY-B"), expire, lambda: pay("PAY-C"), expire
    )

    reservation.refresh_from_db()
    slot.refresh_from_db()
    assert outcome["paid"] + outcome["expired"] == 1, outcome
    if outcome["paid"]:
        assert reservation.status == Reservation.Status.PAID
        assert reservation.payment_reference in {"PAY-A", "PAY-B", "PAY-C"}
        assert slot.status == TimeSlot.Status.RESERVED
        assert outcome == Counter({"paid": 1, "already_paid": 5})
    else:
        assert reservation.status == Reservation.Status.CANCELLED
        assert reservation.paid_at is None
        assert slot.status == TimeSlot.Status.ACTIVE
        # The pays that lost are told the hold expired; the other expiries, that it is done.
        assert outcome == Counter({"expired": 1, "already_cancelled": 2, "hold_expired": 3})


def test_many_customers_racing_for_one_slot_get_one_reservation():
    slot = TimeSlotFactory()

    outcome = run_together(*[lambda i=i: reserve(slot.pk, name=f"Customer {i}") for i in range(8)])

    assert outcome == Counter({"reserved": 1, "slot_taken": 7})
    assert Reservation.objects.filter(time_slot=slot).count() == 1
    assert TimeSlot.objects.get(pk=slot.pk).status == TimeSlot.Status.RESERVED


def test_customers_racing_for_a_lapsed_hold_get_one_reservation():
    slot = TimeSlotFactory()
    reserve(slot.pk, hold_seconds=60)
    stale = Reservation.objects.get(time_slot=slot)
    later = stale.expires_at + timedelta(seconds=1)

    outcome = run_together(
        *[lambda i=i: reserve(slot.pk, name=f"Customer {i}", now=later) for i in range(6)]
    )

    assert outcome == Counter({"reserved": 1, "slot_taken": 5})
    statuses = Counter(Reservation.objects.filter(time_slot=slot).values_list("status", flat=True))
    assert statuses == Counter({"cancelled": 1, "pending": 1})
    assert TimeSlot.objects.get(pk=slot.pk).status == TimeSlot.Status.RESERVED


def test_two_hundred_pay_versus_expire_races_each_end_one_way():
    """Paid with its slot reserved, or cancelled with its slot free: never both, never neither."""
    endings = Counter()
    for _ in range(200):
        slot = TimeSlotFactory()
        reserve(slot.pk)
        reservation = Reservation.objects.get(time_slot=slot)
        end = reservation.expires_at
        copy = Reservation.objects.get(pk=reservation.pk)
        run_together(
            lambda copy=copy, end=end: (
                reservation_pay(
                    reservation=copy, payment_reference="PAY", now=end - timedelta(milliseconds=1)
                )
                and "paid"
            ),
            lambda pk=reservation.pk, end=end: (
                reservation_expire(reservation_id=pk, now=end).outcome.value
            ),
        )
        reservation.refresh_from_db()
        slot.refresh_from_db()
        ending = (reservation.status, slot.status)
        assert ending in {("paid", "reserved"), ("cancelled", "active")}, ending
        endings[ending[0]] += 1
    print(f"\n200 pay-versus-expire races: {dict(endings)}")


def test_fifty_requests_for_one_slot_over_http_make_one_reservation(live_server):
    import json
    import urllib.error
    import urllib.request

    slot = TimeSlotFactory()
    body = json.dumps(
        {
            "slot_id": slot.pk,
            "customer_name": "Racer",
            "customer_email": "r@example.com",
            "party_size": 3,
        }
    ).encode()

    def attempt() -> str:
        request = urllib.request.Request(  # noqa: S310 (the test server's own http URL)
            f"{live_server.url}/api/reservations/",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        for _ in range(10):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                    return str(response.status)
            except urllib.error.HTTPError as error:
                return f"{error.code} {json.loads(error.read())['error']['code']}"
            except (urllib.error.URLError, ConnectionError):
                # The test server's small listen queue turned the connection
                # away before any view ran; a client tries again.
                time.sleep(0.05)
        return "no connection"

    outcome = run_together(*[attempt for _ in range(50)])

    assert outcome == Counter({"201": 1, "409 slot_taken": 49})
    assert Reservation.objects.filter(time_slot=slot).count() == 1
