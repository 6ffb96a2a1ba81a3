"""The scheduler keeps running jobs through store races and errors, and stops without hanging."""

import contextlib
import sqlite3
import threading
import time

import pytest
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from django.db import OperationalError, connection
from django.utils import timezone

from apps.reservations import services
from apps.reservations.models import Reservation
from apps.rooms.models import TimeSlot
from escape_rooms_backend.scheduler import expiry_job_id, start_scheduler

from .conftest import wait_for
from .factories import reserve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def expired_on_time(reservation, timeout=3.0) -> bool:
    def done():
        reservation.refresh_from_db()
        return reservation.status == Reservation.Status.CANCELLED

    if not wait_for(done, timeout=timeout):
        return False
    return (reservation.cancelled_at - reservation.expires_at).total_seconds() < 1.0


def test_a_job_removed_by_another_process_mid_run_does_not_stop_the_scheduler(monkeypatch):
    start_scheduler()
    first = reserve(hold_seconds=0.3)
    original = SQLAlchemyJobStore.remove_job
    raced = threading.Event()

    def remove_job(self, job_id):
        if job_id == expiry_job_id(first.pk) and not raced.is_set():
            raced.set()
            original(self, job_id)  # another process got there first...
            raise JobLookupError(job_id)  # ...so this delete finds nothing
        return original(self, job_id)

    monkeypatch.setattr(SQLAlchemyJobStore, "remove_job", remove_job)

    assert expired_on_time(first)
    assert raced.is_set()
    later = reserve(hold_seconds=0.5)
    assert expired_on_time(later), "the scheduler stopped running jobs after the race"


def test_a_job_store_error_while_running_jobs_is_retried_not_fatal(monkeypatch, settings):
    settings.SCHEDULER_CONFIG = {
        **settings.SCHEDULER_CONFIG,
        "apscheduler.jobstore_retry_interval": 0.2,
    }
    start_scheduler()
    first = reserve(hold_seconds=0.3)
    original = SQLAlchemyJobStore.remove_job
    failed = threading.Event()

    def remove_job(self, job_id):
        if job_id == expiry_job_id(first.pk) and not failed.is_set():
            failed.set()
            raise OperationalError("database is locked")
        return original(self, job_id)

    monkeypatch.setattr(SQLAlchemyJobStore, "remove_job", remove_job)

    assert expired_on_time(first)
    assert failed.wait(2)
    later = reserve(hold_seconds=0.5)
    assert expired_on_time(later), "the scheduler stopped running jobs after a store error"


_running = None
_job_started = threading.Event()


def slow_job_that_writes_to_the_store() -> None:
    """A job still running at shutdown that then writes to the store, as an expiry does."""
    _job_started.set()
    time.sleep(0.3)
    with contextlib.suppress(JobLookupError):
        _running.remove_job("expire_reservation:0")


def test_shutdown_waits_for_a_job_that_writes_to_the_store_without_hanging():
    global _running
    _running = start_scheduler()
    _job_started.clear()
    _running.add_job(
        "tests.test_scheduler_resilience:slow_job_that_writes_to_the_store",
        trigger="date",
        run_date=timezone.now(),
        id="slow",
    )
    assert _job_started.wait(3)

    stopper = threading.Thread(target=_running.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    stopper.join(timeout=5)

    assert not stopper.is_alive(), "shutdown(wait=True) deadlocked with a running job"


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
