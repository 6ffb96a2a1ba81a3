"""
Expiring lapsed holds in bulk, the one-by-one fallback, and payments racing an expiry.

``lapsed_holds_expire`` releases a batch in one transaction;
``lapsed_holds_release`` loops until none is left and never raises.
"""

import sqlite3
import threading
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from apps.reservations import services
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import (
    lapsed_holds_expire,
    lapsed_holds_release,
    reservation_pay,
)
from apps.rooms.models import TimeSlot

from ..conftest import run_together
from ..factories import ReservationFactory, reserve
from .conftest import lapsed, statuses

Cause = ReservationEvent.Cause


# ---------------------------------------------------------------------------
# lapsed_holds_expire: one batch
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_bulk_expiry_releases_every_lapsed_hold_and_records_each():
    gone = [lapsed(seconds_ago=s) for s in (90, 60, 30)]
    current = ReservationFactory()
    now = timezone.now()

    expired = lapsed_holds_expire(now=now, cause=Cause.SWEEP)

    assert [hold.reservation_id for hold in expired] == [r.pk for r in gone]  # earliest first
    assert statuses(*gone) == [("cancelled", "active")] * 3
    assert statuses(current) == [("pending", "reserved")]
    for reservation, hold in zip(gone, expired, strict=True):
        assert reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED
        assert reservation.cancelled_at == now
        event = reservation.events.get()
        assert (event.from_status, event.to_status, event.cause) == (
            "pending",
            "cancelled",
            "sweep",
        )
        assert event.lateness_seconds == (now - reservation.expires_at).total_seconds()
        assert (hold.customer_name, hold.room_name) == ("John Doe", reservation.time_slot.room.name)
        assert (hold.starts_at, hold.expires_at) == (
            reservation.time_slot.starts_at,
            reservation.expires_at,
        )
    assert current.events.count() == 0


@pytest.mark.django_db
def test_bulk_expiry_takes_the_earliest_holds_up_to_its_limit():
    oldest, middle, newest = (lapsed(seconds_ago=s) for s in (30, 20, 10))

    expired = lapsed_holds_expire(limit=2)

    assert [hold.reservation_id for hold in expired] == [oldest.pk, middle.pk]
    assert statuses(newest) == [("pending", "reserved")]
    assert [hold.reservation_id for hold in lapsed_holds_expire(limit=2)] == [newest.pk]
    assert lapsed_holds_expire(limit=2) == []


@pytest.mark.django_db
def test_bulk_expiry_of_given_reservations_leaves_the_other_lapsed_holds():
    chosen, other = lapsed(), lapsed()

    expired = lapsed_holds_expire(reservation_ids=[chosen.pk])

    assert [hold.reservation_id for hold in expired] == [chosen.pk]
    assert statuses(chosen, other) == [("cancelled", "active"), ("pending", "reserved")]


@pytest.mark.django_db
def test_bulk_expiry_leaves_paid_and_current_holds_alone():
    paid = ReservationFactory()
    reservation_pay(reservation=paid, payment_reference="PAY-1")
    Reservation.objects.filter(pk=paid.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    current = ReservationFactory()

    assert lapsed_holds_expire() == []
    assert statuses(paid, current) == [("paid", "reserved"), ("pending", "reserved")]


# ---------------------------------------------------------------------------
# lapsed_holds_release: every lapsed hold, never raising
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_burst_larger_than_a_batch_is_released_in_several(monkeypatch):
    monkeypatch.setattr(services, "EXPIRE_BATCH_SIZE", 4)
    real_expire = services.lapsed_holds_expire
    batches = []

    def expire(**kwargs):
        expired = real_expire(**kwargs)
        batches.append(len(expired))
        return expired

    monkeypatch.setattr(services, "lapsed_holds_expire", expire)
    burst = [lapsed() for _ in range(10)]

    released = lapsed_holds_release(cause=Cause.EXPIRY_JOB)

    assert batches == [4, 4, 2]
    assert [hold.reservation_id for hold in released] == [r.pk for r in burst]
    assert statuses(*burst) == [("cancelled", "active")] * 10


@pytest.mark.django_db
def test_one_failing_reservation_does_not_stop_the_others(monkeypatch, caplog):
    first, broken, last = (lapsed(seconds_ago=s) for s in (30, 20, 10))
    real_expire = services.lapsed_holds_expire

    def expire(**kwargs):
        if broken.pk in (kwargs.get("reservation_ids") or [broken.pk]):
            raise RuntimeError("row is corrupt")
        return real_expire(**kwargs)

    monkeypatch.setattr(services, "lapsed_holds_expire", expire)

    released = lapsed_holds_release(cause=Cause.SWEEP)

    assert [hold.reservation_id for hold in released] == [first.pk, last.pk]
    statuses_now = dict(Reservation.objects.values_list("pk", "status"))
    assert statuses_now == {first.pk: "cancelled", broken.pk: "pending", last.pk: "cancelled"}
    assert "Bulk expiry failed; expiring the lapsed holds one at a time" in caplog.messages
    assert f"Failed to cancel expired reservation {broken.pk}" in caplog.messages


@pytest.mark.django_db
def test_when_the_lapsed_holds_cannot_even_be_listed_they_wait_for_the_next_try(
    monkeypatch, caplog
):
    hold = lapsed()

    def broken(self, now):
        raise RuntimeError("database is corrupt")

    monkeypatch.setattr(type(Reservation.objects.all()), "due_for_expiry", broken)

    assert lapsed_holds_release(cause=Cause.SWEEP) == []

    assert "Could not list the lapsed holds; they wait for the next try" in caplog.messages
    monkeypatch.undo()
    assert statuses(hold) == [("pending", "reserved")]


@pytest.mark.django_db
def test_a_database_too_busy_to_write_ends_the_pass_without_the_fallback(monkeypatch, caplog):
    hold = lapsed()
    calls = []

    def busy(**kwargs):
        calls.append(kwargs)
        raise OperationalError("database is locked")

    monkeypatch.setattr(services, "lapsed_holds_expire", busy)

    assert lapsed_holds_release(cause=Cause.SWEEP) == []

    assert len(calls) == 1  # not one try per hold: none would get through
    assert caplog.messages == [
        "Database busy; lapsed holds wait for the next try: database is locked"
    ]
    assert statuses(hold) == [("pending", "reserved")]


# ---------------------------------------------------------------------------
# Payments racing an expiry
# ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(4))
def test_payments_racing_two_bulk_expiries_each_have_one_winner(round_):
    boundary = timezone.now() + timedelta(minutes=5)
    holds = [ReservationFactory(expires_at=boundary) for _ in range(6)]

    def pay(reservation):
        copy = Reservation.objects.get(pk=reservation.pk)
        reservation_pay(
            reservation=copy,
            payment_reference=f"PAY-{reservation.pk}",
            now=boundary - timedelta(milliseconds=1),
        )
        return "paid"

    def expire():
        expired = lapsed_holds_expire(now=boundary)
        return f"expired {len(expired)}"

    outcome = run_together(*[lambda r=r: pay(r) for r in holds], expire, expire)

    rows = statuses(*holds)
    paid = rows.count(("paid", "reserved"))
    assert paid + rows.count(("cancelled", "active")) == len(holds), rows
    # Every reservation has one winner: its payment, or one of the two bulk expiries.
    assert outcome["paid"] == paid
    assert outcome["hold_expired"] == len(holds) - paid
    expired = sum(
        int(key.split()[1]) * n for key, n in outcome.items() if key.startswith("expired")
    )
    assert expired == len(holds) - paid, outcome


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "sqlite", reason="holds SQLite's write lock")
def test_a_payment_that_waits_for_a_lock_past_the_hold_is_refused():
    reservation = reserve(hold_seconds=0.5)
    blocker = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # someone else writes for a while
    outcome = []

    def pay():
        try:
            services.reservation_pay(
                reservation=Reservation.objects.get(pk=reservation.pk), payment_reference="PAY-1"
            )
            outcome.append("paid")
        except services.errors.ReservationError as refused:
            outcome.append(refused.code)
        finally:
            connection.close()

    payer = threading.Thread(target=pay)
    payer.start()  # arrives within the hold...
    time.sleep(0.8)  # ...but gets the lock only after it
    blocker.execute("ROLLBACK")
    payer.join(timeout=10)
    blocker.close()

    assert outcome == ["hold_expired"]
    reservation.refresh_from_db()
    assert (reservation.status, reservation.paid_at) == ("cancelled", None)
    assert TimeSlot.objects.get(pk=reservation.time_slot_id).status == "active"
