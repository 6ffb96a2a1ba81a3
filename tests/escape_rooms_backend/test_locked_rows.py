"""
A row or database locked by a long transaction elsewhere must not stall expiry.

On PostgreSQL a lapsed hold whose row another session holds ``FOR UPDATE``
delays only itself: every other hold is released on time, no sweep run is
skipped, and the locked one is released soon after its lock ends. On SQLite
a long write transaction holds the whole database: nothing can be written
meanwhile, but the scheduler's threads give up within
``SCHEDULER_LOCK_TIMEOUT``, no sweep run is skipped, and every lapsed hold is
released promptly once the lock ends. Either way a worker asked to stop
stops within seconds, and loses nothing.
"""

import signal
import sqlite3
import time
from collections import Counter

import psycopg
import pytest
from django.db import connection

from apps.reservations.models import Reservation, ReservationEvent
from apps.rooms.models import TimeSlot
from escape_rooms_backend.lifecycle import process
from escape_rooms_backend.scheduler import start_scheduler, stop_scheduler

from ..conftest import database_url, wait_for
from ..factories import TimeSlotFactory, reserve

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.usefixtures("hold_end_only"),
]

SKIPPED = "maximum number of running instances"


def hold(seconds: float, n: int) -> Reservation:
    return reserve(TimeSlotFactory(), hold_seconds=seconds, customer_email=f"guest{n}@example.com")


def lapsing_holds(count: int) -> list[Reservation]:
    """``count`` holds ending 10 ms apart once all are made: each its own job run."""
    first_end = time.monotonic() + 1 + 0.03 * count  # making one takes well under 30 ms
    return [hold(first_end - time.monotonic() + n * 0.01, n) for n in range(count)]


def expiries_of(reservations: list[Reservation]) -> dict[int, int]:
    """Reservation id -> how many times the audit trail says it expired."""
    events = ReservationEvent.objects.filter(
        reservation__in=reservations, to_status="cancelled", lateness_seconds__isnull=False
    )
    return dict(Counter(events.values_list("reservation_id", flat=True)))


def status(reservation: Reservation) -> str:
    return Reservation.objects.values_list("status", flat=True).get(pk=reservation.pk)


def lock_row(reservation: Reservation) -> psycopg.Connection:
    """Hold the reservation's row ``FOR UPDATE`` in another session until rolled back."""
    other = psycopg.connect(database_url())
    table = Reservation._meta.db_table
    other.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", (reservation.pk,))  # noqa: S608
    return other


def lock_database() -> sqlite3.Connection:
    """Hold SQLite's one write lock in another connection until rolled back."""
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


@pytest.fixture
def runner(settings, job_store):
    """This process's scheduler as the runner, sweeping every 3 s."""
    settings.SCHEDULER_SWEEP_SECONDS = 3
    settings.SCHEDULER_LOCK_TIMEOUT = 1.0
    start_scheduler()
    assert wait_for(lambda: process.runner is not None and process.runner.is_runner, timeout=5)
    yield
    stop_scheduler()


@pytest.mark.postgres
def test_a_locked_row_delays_only_its_own_hold(runner, caplog):
    if connection.vendor != "postgresql":
        pytest.fail("run with DATABASE_URL=postgres://... (make test-postgres)")
    locked = hold(0.5, 0)
    other = lock_row(locked)
    try:
        others = []
        for n in range(1, 7):  # holds ending one after another while the row stays locked
            others.append(hold(1, n))
            time.sleep(0.5)
        assert wait_for(lambda: all(status(r) == "cancelled" for r in others), timeout=3)
        assert status(locked) == "pending"
        time.sleep(3.5)  # a full sweep interval more with the row still locked
        assert status(locked) == "pending"
    finally:
        other.rollback()
        other.close()
    released_at = time.monotonic()

    assert wait_for(lambda: status(locked) == "cancelled", timeout=4), "not released after its lock"
    assert time.monotonic() - released_at < 4  # within one sweep interval, with a margin
    for reservation in others:
        reservation.refresh_from_db()
        lateness = (reservation.cancelled_at - reservation.expires_at).total_seconds()
        assert lateness < 1.0, f"reservation {reservation.pk} released {lateness:.2f} s late"
        assert TimeSlot.objects.get(pk=reservation.time_slot_id).status == "active"
    assert SKIPPED not in caplog.text


def test_on_sqlite_a_long_write_transaction_delays_expiry_only_while_it_lasts(runner, caplog):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock; the PostgreSQL test holds a row instead")
    # Many more jobs, each meeting the lock apart, than the scheduler has threads.
    holds = lapsing_holds(100)
    other = lock_database()
    try:
        time.sleep(10)  # the holds lapse, and their jobs and three sweeps meet the lock
        assert all(status(r) == "pending" for r in holds)  # read: WAL lets readers in
    finally:
        other.execute("ROLLBACK")
        other.close()
    released_at = time.monotonic()

    assert wait_for(lambda: all(status(r) == "cancelled" for r in holds), timeout=3)
    assert time.monotonic() - released_at < 2.5
    assert expiries_of(holds) == {r.pk: 1 for r in holds}
    assert SKIPPED not in caplog.text


def test_a_worker_asked_to_stop_stops_within_seconds_whatever_is_locked(start_worker):
    running = start_worker()
    holds = lapsing_holds(100)
    other = lock_row(holds[0]) if connection.vendor == "postgresql" else lock_database()
    try:
        time.sleep(2 + 0.03 * len(holds))  # lapsed: on SQLite their jobs queue behind the lock
        running.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert running.wait(timeout=20) == 0, running.log()
        assert time.monotonic() - began < 5, running.log()
    finally:
        other.rollback() if isinstance(other, psycopg.Connection) else other.execute("ROLLBACK")
        other.close()

    restarted = start_worker()  # the hold still pending is its at once
    assert wait_for(lambda: all(status(r) == "cancelled" for r in holds), timeout=10), (
        restarted.log()
    )
    assert expiries_of(holds) == {r.pk: 1 for r in holds}  # none lost, none twice
    assert not TimeSlot.objects.filter(pk__in=[r.time_slot_id for r in holds], status="reserved")
