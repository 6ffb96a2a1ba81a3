"""
The three APScheduler 3.11 failure modes the project's scheduler closes.

A stopped scheduler touches the store no more; a failing pass is tried again
instead of ending the scheduler's thread; shutdown waits for running jobs
without holding the store's lock.
"""

import contextlib
import logging
import threading
import time
from datetime import timedelta

import pytest
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from django.db import OperationalError
from django.utils import timezone

from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation
from escape_rooms_backend.compat import Scheduler
from escape_rooms_backend.lifecycle import build_scheduler
from escape_rooms_backend.scheduler import start_scheduler

from ..conftest import wait_for
from ..factories import reserve


def nothing() -> None:
    """A job with nothing to do."""


def test_a_scheduler_that_stops_leaves_due_jobs_in_the_store_as_they_were(
    job_store, settings, caplog
):
    # A standby (paused) stopping with jobs due: the runner, or the next
    # start, runs them. Stock 3.11 makes one more pass after shutdown, which
    # drops the due date job and pushes the interval job back a period.
    scheduler = build_scheduler(settings.SCHEDULER_CONFIG)
    assert isinstance(scheduler, Scheduler)
    scheduler.start(paused=True)
    now = timezone.now()
    scheduler.add_job(
        f"{__name__}:nothing", "interval", hours=1, next_run_time=now - timedelta(seconds=2)
    )
    scheduler.add_job(f"{__name__}:nothing", "date", run_date=now - timedelta(seconds=1))
    before = job_store.jobs()

    scheduler.shutdown()

    assert len(before) == 2
    assert job_store.jobs() == before
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def expired_on_time(reservation, timeout=3.0) -> bool:
    def done():
        reservation.refresh_from_db()
        return reservation.status == Reservation.Status.CANCELLED

    if not wait_for(done, timeout=timeout):
        return False
    return (reservation.cancelled_at - reservation.expires_at).total_seconds() < 1.0


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_job_removed_by_another_process_mid_run_does_not_stop_the_scheduler(monkeypatch):
    start_scheduler()
    first = reserve(hold_seconds=0.3)
    original = SQLAlchemyJobStore.remove_job
    raced = threading.Event()

    def remove_job(self, job_id):
        if job_id == HOLD_END.job_id(first.pk) and not raced.is_set():
            raced.set()
            original(self, job_id)  # another process got there first...
            raise JobLookupError(job_id)  # ...so this delete finds nothing
        return original(self, job_id)

    monkeypatch.setattr(SQLAlchemyJobStore, "remove_job", remove_job)

    assert expired_on_time(first)
    assert raced.is_set()
    later = reserve(hold_seconds=0.5)
    assert expired_on_time(later), "the scheduler stopped running jobs after the race"


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_job_store_error_while_running_jobs_is_retried_not_fatal(monkeypatch, settings, caplog):
    settings.SCHEDULER_CONFIG = {
        **settings.SCHEDULER_CONFIG,
        "apscheduler.jobstore_retry_interval": 0.2,
    }
    start_scheduler()
    first = reserve(hold_seconds=0.3)
    original = SQLAlchemyJobStore.remove_job
    failed = threading.Event()

    def remove_job(self, job_id):
        if job_id == HOLD_END.job_id(first.pk) and not failed.is_set():
            failed.set()
            raise OperationalError("database is locked")
        return original(self, job_id)

    monkeypatch.setattr(SQLAlchemyJobStore, "remove_job", remove_job)

    assert expired_on_time(first)
    assert failed.wait(2)
    assert "Scheduler pass failed; retrying in 0.2s" in caplog.messages
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


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_shutdown_waits_for_a_job_that_writes_to_the_store_without_hanging():
    global _running
    _running = start_scheduler()
    _job_started.clear()
    _running.add_job(
        f"{__name__}:slow_job_that_writes_to_the_store",
        trigger="date",
        run_date=timezone.now(),
        id="slow",
    )
    assert _job_started.wait(3)

    stopper = threading.Thread(target=_running.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    stopper.join(timeout=5)

    assert not stopper.is_alive(), "shutdown(wait=True) deadlocked with a running job"


def test_a_job_due_after_the_planned_pass_wakes_nothing_and_one_due_before_runs_on_time(
    job_store, settings
):
    scheduler = build_scheduler(settings.SCHEDULER_CONFIG)
    scheduler.start()
    try:
        now = timezone.now()
        scheduler.add_job(f"{__name__}:nothing", "date", run_date=now + timedelta(minutes=1))
        assert wait_for(lambda: scheduler._next_pass_at is not None, timeout=2)
        passes = []
        process_jobs = scheduler._process_jobs

        def counted():
            passes.append(time.monotonic())
            return process_jobs()

        scheduler._process_jobs = counted
        for minutes in (2, 3, 4):  # after the planned pass: no wakeup, no pass
            later = now + timedelta(minutes=minutes)
            scheduler.add_job(f"{__name__}:ran_job", "date", run_date=later)
        time.sleep(0.2)
        assert passes == []

        ran.clear()
        due = timezone.now() + timedelta(milliseconds=300)
        scheduler.add_job(f"{__name__}:ran_job", "date", run_date=due)  # before it: wakes and runs
        assert wait_for(lambda: ran, timeout=2)
        assert 0 <= ran[0] - due.timestamp() < 0.2
    finally:
        scheduler.shutdown()


ran: list[float] = []


def ran_job() -> None:
    ran.append(time.time())
