"""
A real scheduler, real time, holds of about a second.

These tests poll with a deadline; the margins say what a user would call
"on time": a slot free again within one second after ``expires_at``.
"""

import logging
import threading
import time
from datetime import timedelta

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED
from django.db.models.signals import post_save
from django.utils import timezone
from factory.django import mute_signals

from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import reservation_pay
from apps.rooms.models import TimeSlot
from escape_rooms_backend.scheduler import (
    RECONCILE_JOB_ID,
    SWEEP_JOB_ID,
    expiry_job_id,
    get_scheduler,
    start_scheduler,
    stop_scheduler,
)

from .conftest import wait_for
from .factories import ReservationFactory, TimeSlotFactory, reserve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

HOLD_SECONDS = 1


def released_at(reservation):
    """When the slot was seen free again (now), or None while still held."""
    reservation.refresh_from_db()
    if reservation.status == Reservation.Status.CANCELLED:
        slot = TimeSlot.objects.get(pk=reservation.time_slot_id)
        assert slot.status == TimeSlot.Status.ACTIVE
        return timezone.now()
    return None


def test_an_unpaid_reservation_is_cancelled_within_a_second_of_its_expiry(job_store, caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    start_scheduler()
    slot = TimeSlotFactory()
    reservation = reserve(slot, hold_seconds=HOLD_SECONDS)

    freed = wait_for(lambda: released_at(reservation), timeout=HOLD_SECONDS + 3)

    assert freed is not None, "the hold was never released"
    assert reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED
    lateness = (freed - reservation.expires_at).total_seconds()
    assert 0 <= lateness < 1.0
    # Cancelled by its own job, at its own expiry, with the seed's log line.
    assert 0 <= (reservation.cancelled_at - reservation.expires_at).total_seconds() < 1.0
    seed_line = f"Cancelled expired reservation {reservation.pk} for John Doe"
    # The line is written just after the commit that released the slot.
    assert wait_for(lambda: any(m.startswith(seed_line) for m in caplog.messages), timeout=1)
    assert expiry_job_id(reservation.pk) not in job_store.jobs()
    assert TimeSlot.objects.with_availability(timezone.now()).get(pk=slot.pk).available


def test_a_paid_reservation_stays_paid_with_no_job_left(job_store):
    start_scheduler()
    reservation = reserve(hold_seconds=HOLD_SECONDS)
    reservation_pay(reservation=reservation, payment_reference="PAY-1")
    assert expiry_job_id(reservation.pk) not in job_store.jobs()

    time.sleep(HOLD_SECONDS + 0.5)  # past the would-be expiry: nothing may touch it

    reservation.refresh_from_db()
    assert reservation.status == Reservation.Status.PAID
    assert TimeSlot.objects.get(pk=reservation.time_slot_id).status == TimeSlot.Status.RESERVED
    assert set(job_store.jobs()) == {SWEEP_JOB_ID}


def test_holds_that_lapsed_while_no_scheduler_ran_are_cancelled_at_start(job_store):
    # Written by a process that only adds jobs (a paused scheduler), like a web
    # process in worker mode while the worker is down.
    reservations = [reserve(TimeSlotFactory(), hold_seconds=1) for _ in range(5)]
    assert {expiry_job_id(r.pk) for r in reservations} <= set(job_store.jobs())
    stop_scheduler()
    time.sleep(1.2)  # every hold is now overdue, and no scheduler is running

    started = time.monotonic()
    start_scheduler()
    done = wait_for(
        lambda: not Reservation.objects.filter(status=Reservation.Status.PENDING).exists(),
        timeout=3,
    )

    assert done, "overdue holds were not expired after start"
    assert time.monotonic() - started < 1.0
    assert wait_for(lambda: set(job_store.jobs()) == {SWEEP_JOB_ID}, timeout=2), job_store.jobs()


def test_the_sweep_cancels_a_reservation_that_has_no_job(job_store, settings):
    settings.SCHEDULER_SWEEP_SECONDS = 1
    reconciled = threading.Event()
    get_scheduler().add_listener(
        lambda event: event.job_id == RECONCILE_JOB_ID and reconciled.set(), EVENT_JOB_EXECUTED
    )
    start_scheduler()
    # After the start-up reconcile has finished: it would give the hold a job.
    assert reconciled.wait(timeout=3)
    with mute_signals(post_save):  # as if its job had been lost
        lost = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=0.5))
    assert expiry_job_id(lost.pk) not in job_store.jobs()

    cancelled = wait_for(
        lambda: Reservation.objects.get(pk=lost.pk).status == Reservation.Status.CANCELLED,
        timeout=3,
    )

    assert cancelled, "the sweep did not expire the reservation without a job"
    assert lost.events.last().cause == ReservationEvent.Cause.SWEEP
    assert TimeSlot.objects.get(pk=lost.time_slot_id).status == TimeSlot.Status.ACTIVE


def test_after_the_job_store_was_deleted_holds_still_expire_on_time(job_store, settings):
    settings.SCHEDULER_SWEEP_SECONDS = 3600  # the sweep will not come to the rescue
    reservations = [reserve(TimeSlotFactory(), hold_seconds=1.5) for _ in range(3)]
    stop_scheduler()
    job_store.delete()

    start_scheduler()  # rebuilds the missing jobs from the database
    freed = [wait_for(lambda r=r: released_at(r), timeout=4) for r in reservations]

    assert all(freed), "a hold whose job was lost waited for the sweep"
    for reservation, at in zip(reservations, freed, strict=True):
        assert (at - reservation.expires_at).total_seconds() < 1.0
        assert reservation.events.last().cause == ReservationEvent.Cause.EXPIRY_JOB


def test_a_job_written_by_another_process_runs_on_time(job_store, settings):
    # The runner has nothing due, so APScheduler alone would sleep until its
    # sweep; the poller must make it look at the store again.
    settings.SCHEDULER_POLL_SECONDS = 0.2
    settings.SCHEDULER_SWEEP_SECONDS = 3600
    runner = start_scheduler(config=settings.SCHEDULER_CONFIG)
    time.sleep(0.3)  # let the runner finish its first pass and go to sleep
    with mute_signals(post_save):  # the job comes from the other process only
        reservation = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=1))
    other_process = _separate_writer(settings.SCHEDULER_CONFIG)
    other_process.add_job(
        "escape_rooms_backend.scheduler:expire_reservation",
        trigger="date",
        run_date=reservation.expires_at,
        args=[reservation.pk],
        id=expiry_job_id(reservation.pk),
        misfire_grace_time=None,
    )

    freed = wait_for(lambda: released_at(reservation), timeout=3)

    other_process.shutdown(wait=False)
    assert runner.running
    assert freed is not None
    assert (freed - reservation.expires_at).total_seconds() < 1.0


def _separate_writer(config):
    """A second, paused scheduler on the same store: what another process holds."""
    from escape_rooms_backend.scheduler import _build_scheduler

    writer = _build_scheduler(config)
    writer.start(paused=True)
    return writer
