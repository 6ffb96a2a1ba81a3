"""
The hold's end (``HOLD_END``), the reservations app's deadline kind.

Its handle releases every lapsed hold with the seed's log line for each,
re-schedules holds that moved later and returns the ones whose rows were
busy; its sweep releases what lapsed by the time it is given.
"""

import logging
import sqlite3
import time
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from apps.reservations import services
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation, ReservationEvent
from apps.rooms.models import TimeSlot
from escape_rooms_backend import deadlines
from escape_rooms_backend.scheduler import get_scheduler
from escape_rooms_backend.timeline import BY_JOB, BY_SWEEP, run_deadline

from ..conftest import database_url
from ..factories import ReservationFactory, RoomFactory, TimeSlotFactory
from .conftest import lapsed, statuses

# The expiry engine's own jobs: the messages' kinds have tests of their own.
pytestmark = pytest.mark.usefixtures("hold_end_only")

Cause = ReservationEvent.Cause


def seed_line(reservation) -> str:
    starts_at = timezone.localtime(reservation.time_slot.starts_at)
    return (
        f"Cancelled expired reservation {reservation.pk} for {reservation.customer_name} - "
        f"{reservation.time_slot.room.name} on {starts_at:%Y-%m-%d} at {starts_at:%H:%M:%S}"
    )


def test_the_hold_end_is_registered_with_the_first_releases_job_ids():
    assert deadlines.kind_named("expiry") is HOLD_END
    assert HOLD_END.job_id(123) == "expire_reservation:123"
    assert HOLD_END.fold is True  # its handle releases every due hold at once


@pytest.mark.django_db
def test_a_pending_hold_falls_due_at_its_end_and_any_other_reservation_never():
    pending = ReservationFactory()
    paid = ReservationFactory.build(status=Reservation.Status.PAID)
    cancelled = ReservationFactory.build(status=Reservation.Status.CANCELLED)

    assert HOLD_END.due_at(pending) == pending.expires_at
    assert HOLD_END.due_at(paid) is None
    assert HOLD_END.due_at(cancelled) is None
    assert list(HOLD_END.scheduled()) == [(pending.pk, pending.expires_at)]


@pytest.mark.django_db
def test_the_job_expires_its_reservation_and_logs_the_seed_line(caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    reservation = lapsed(
        time_slot=TimeSlotFactory(
            room=RoomFactory(name="Test Room"), status=TimeSlot.Status.RESERVED
        )
    )

    run_deadline(HOLD_END.name, reservation.pk)

    assert statuses(reservation) == [("cancelled", "active")]
    assert reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED
    assert reservation.events.get().cause == Cause.EXPIRY_JOB
    record = next(r for r in caplog.records if r.getMessage().startswith("Cancelled expired"))
    assert (record.name, record.levelname) == ("escape_rooms_backend.scheduler", "INFO")
    assert record.getMessage() == seed_line(reservation)


@pytest.mark.django_db
def test_one_job_releases_every_due_hold_with_the_seed_line_for_each(caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    own, other, another = (lapsed() for _ in range(3))
    current = ReservationFactory()

    assert HOLD_END.handle([own.pk], BY_JOB) == []

    assert statuses(own, other, another) == [("cancelled", "active")] * 3
    assert statuses(current) == [("pending", "reserved")]
    for reservation in (own, other, another):
        assert seed_line(reservation) in caplog.messages
        assert reservation.events.get().cause == Cause.EXPIRY_JOB


@pytest.mark.django_db
def test_the_job_leaves_a_paid_reservation_paid(caplog):
    reservation = ReservationFactory()
    services.reservation_pay(reservation=reservation, payment_reference="PAY-1")

    assert HOLD_END.handle([reservation.pk], BY_JOB) == []

    assert Reservation.objects.get(pk=reservation.pk).status == Reservation.Status.PAID
    assert "Cancelled expired" not in caplog.text


@pytest.mark.django_db
def test_the_job_for_a_deleted_reservation_does_nothing(job_store, caplog):
    run_deadline(HOLD_END.name, 987654)

    assert caplog.messages == []
    assert job_store.jobs() == {}


@pytest.mark.django_db
def test_a_job_that_fires_before_a_moved_hold_reschedules_itself(job_store):
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(minutes=5))

    run_deadline(HOLD_END.name, reservation.pk)

    assert Reservation.objects.get(pk=reservation.pk).status == Reservation.Status.PENDING
    assert job_store.jobs() == {HOLD_END.job_id(reservation.pk): reservation.expires_at}


@pytest.mark.django_db
def test_a_folded_reservation_whose_hold_moved_gets_its_job_back(job_store):
    own = lapsed()
    moved = ReservationFactory(expires_at=timezone.now() + timedelta(minutes=10))

    run_deadline(HOLD_END.name, own.pk, coalesced=[moved.pk])

    assert statuses(own, moved) == [("cancelled", "active"), ("pending", "reserved")]
    assert job_store.jobs() == {HOLD_END.job_id(moved.pk): moved.expires_at}


@pytest.mark.django_db
def test_the_sweep_expires_what_lapsed_by_the_time_it_is_given(caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    earlier, later = lapsed(seconds_ago=60), lapsed(seconds_ago=1)

    assert HOLD_END.sweep(timezone.now() - timedelta(seconds=30), BY_SWEEP) == 1

    assert statuses(earlier, later) == [("cancelled", "active"), ("pending", "reserved")]
    assert earlier.events.get().cause == Cause.SWEEP
    assert caplog.messages == [seed_line(earlier)]


class RowLock:
    """Another session holding a reservation's row (on SQLite: the database's write lock)."""

    def __init__(self, reservation: Reservation) -> None:
        if connection.vendor == "postgresql":
            self.session = psycopg.connect(database_url())
            self.session.execute(
                "SELECT 1 FROM reservations_reservation WHERE id = %s FOR UPDATE", [reservation.pk]
            )
        else:
            self.session = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
            self.session.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.session.rollback()
        self.session.close()


@pytest.mark.django_db(transaction=True)
def test_a_hold_whose_row_is_busy_is_tried_again_shortly_and_the_others_never_wait(
    job_store, settings
):
    # On PostgreSQL the others are released around the locked row; on SQLite
    # the whole database is locked, so every hold waits for the retry.
    settings.SCHEDULER_LOCK_TIMEOUT = 0.2
    locked, other = lapsed(), lapsed()
    lock = RowLock(locked)
    try:
        started = time.monotonic()
        run_deadline(HOLD_END.name, locked.pk, coalesced=[other.pk])
        took = time.monotonic() - started
    finally:
        lock.release()

    assert took < 1.5
    # One job, half a second later, carries every busy hold.
    [job_id] = job_store.jobs()
    retry = get_scheduler().get_job(job_id)
    busy = {HOLD_END.reservation_id(job_id), *retry.kwargs.get("coalesced", [])}
    assert retry.kwargs["attempt"] == 1
    if connection.vendor == "postgresql":
        assert busy == {locked.pk}
        assert statuses(locked, other) == [("pending", "reserved"), ("cancelled", "active")]
    else:
        assert busy == {locked.pk, other.pk}
        assert statuses(locked, other) == [("pending", "reserved")] * 2

    run_deadline(*retry.args, **retry.kwargs)  # as the runner will, half a second later

    assert statuses(locked, other) == [("cancelled", "active")] * 2
    assert job_store.jobs() == {}
