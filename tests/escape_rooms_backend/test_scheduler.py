"""
The seed's public face: the sweep and its log lines, start/stop/get_scheduler, and real time.

The real-time tests run a real scheduler with holds of about a second and
poll with a deadline; the margins say what a user would call "on time": a
slot free again within one second after ``expires_at``.
"""

import logging
import threading
import time
from datetime import timedelta

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.date import DateTrigger
from apscheduler.util import ref_to_obj
from django.utils import timezone

from apps.reservations import services
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import reservation_pay
from apps.rooms.models import TimeSlot
from escape_rooms_backend import scheduler, timeline
from escape_rooms_backend.lifecycle import (
    RECONCILE_JOB_FUNC,
    RECONCILE_JOB_ID,
    SWEEP_JOB_FUNC,
    SWEEP_JOB_ID,
)
from escape_rooms_backend.scheduler import (
    cancel_expired_reservations,
    get_scheduler,
    start_scheduler,
    stop_scheduler,
)

from ..conftest import wait_for
from ..factories import ReservationFactory, TimeSlotFactory, reserve
from .conftest import job_from_another_process

# The expiry engine's own jobs: the messages' kinds have tests of their own.
pytestmark = pytest.mark.usefixtures("hold_end_only")

HOLD_SECONDS = 1
LEGACY_JOB_FUNC = "escape_rooms_backend.scheduler:expire_reservation"


def lapsed_reservation(**fields):
    """A pending reservation whose hold ended a minute ago; its slot is reserved."""
    return ReservationFactory(expires_at=timezone.now() - timedelta(minutes=1), **fields)


def seed_line(reservation) -> str:
    starts_at = timezone.localtime(reservation.time_slot.starts_at)
    return (
        f"Cancelled expired reservation {reservation.pk} for {reservation.customer_name} - "
        f"{reservation.time_slot.room.name} on {starts_at:%Y-%m-%d} at {starts_at:%H:%M:%S}"
    )


def released_at(reservation):
    """When the slot was seen free again (now), or None while still held."""
    reservation.refresh_from_db()
    if reservation.status == Reservation.Status.CANCELLED:
        slot = TimeSlot.objects.get(pk=reservation.time_slot_id)
        assert slot.status == TimeSlot.Status.ACTIVE
        return timezone.now()
    return None


# ---------------------------------------------------------------------------
# The sweep and its log lines
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_sweep_cancels_every_lapsed_hold_and_reports_the_count(caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    lapsed = [lapsed_reservation() for _ in range(3)]
    current = ReservationFactory()

    assert cancel_expired_reservations() == 3

    cancelled = Reservation.objects.filter(status="cancelled").values_list("pk", flat=True)
    assert set(cancelled) == {r.pk for r in lapsed}
    assert Reservation.objects.get(pk=current.pk).status == Reservation.Status.PENDING
    summary = next(r for r in caplog.records if r.getMessage().startswith("Successfully"))
    assert (summary.name, summary.levelname, summary.getMessage()) == (
        "escape_rooms_backend.scheduler",
        "INFO",
        "Successfully cancelled 3 expired reservations",
    )
    for reservation in lapsed:
        reservation.refresh_from_db()
        assert seed_line(reservation) in caplog.messages
        assert reservation.events.get().cause == ReservationEvent.Cause.SWEEP


@pytest.mark.django_db
def test_the_sweep_with_nothing_to_do_says_so_at_debug(caplog):
    caplog.set_level(logging.DEBUG, logger="escape_rooms_backend.scheduler")
    ReservationFactory()

    assert cancel_expired_reservations() == 0

    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "No expired reservations found")
    ]


@pytest.mark.django_db
def test_the_sweep_expires_only_what_lapsed_by_the_time_it_is_given():
    earlier = lapsed_reservation()
    later = ReservationFactory(expires_at=timezone.now() - timedelta(seconds=1))

    assert cancel_expired_reservations(now=timezone.now() - timedelta(seconds=30)) == 1

    assert Reservation.objects.get(pk=earlier.pk).status == Reservation.Status.CANCELLED
    assert Reservation.objects.get(pk=later.pk).status == Reservation.Status.PENDING


@pytest.mark.django_db
def test_the_sweep_survives_a_database_error(monkeypatch, caplog):
    lapsed = lapsed_reservation()

    def broken(**kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(services, "lapsed_holds_release", broken)

    assert cancel_expired_reservations() == 0

    assert "Sweep of the expiry deadlines failed; retrying at the next sweep" in caplog.messages
    assert Reservation.objects.get(pk=lapsed.pk).status == Reservation.Status.PENDING


def test_stored_jobs_name_functions_that_still_import():
    # Stored jobs name their function by import path: these are public APIs.
    assert ref_to_obj(SWEEP_JOB_FUNC) is scheduler.sweep
    assert ref_to_obj(RECONCILE_JOB_FUNC) is scheduler.reconcile_at_start
    assert ref_to_obj(LEGACY_JOB_FUNC) is scheduler.expire_reservation
    assert SWEEP_JOB_ID == "cancel_expired_reservations"


# ---------------------------------------------------------------------------
# get, start and stop
# ---------------------------------------------------------------------------


def test_get_scheduler_builds_one_scheduler_and_starts_nothing():
    built = get_scheduler()

    assert get_scheduler() is built
    assert built.state == STATE_STOPPED


def test_stopping_twice_is_no_error_and_the_next_get_builds_afresh(job_store):
    job_store.create()
    first = get_scheduler()

    stop_scheduler()
    stop_scheduler()

    assert first.state == STATE_STOPPED
    assert get_scheduler() is not first


@pytest.mark.django_db(transaction=True)
def test_start_runs_the_sweep_now_and_then_every_interval(job_store, settings):
    settings.SCHEDULER_SWEEP_SECONDS = 3600
    lapsed = lapsed_reservation()
    before = timezone.now()

    started = start_scheduler()

    assert started is get_scheduler()
    assert started.running
    assert wait_for(lambda: released_at(lapsed), timeout=3)
    assert lapsed.events.get().cause == ReservationEvent.Cause.SWEEP
    assert started.get_job(SWEEP_JOB_ID).trigger.interval == timedelta(seconds=3600)
    assert wait_for(
        lambda: started.get_job(SWEEP_JOB_ID).next_run_time >= before + timedelta(seconds=3600),
        timeout=2,
    )
    assert wait_for(lambda: not job_store.jobs(), timeout=2), job_store.jobs()


# ---------------------------------------------------------------------------
# Real time
# ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
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
    assert reservation.events.last().cause == ReservationEvent.Cause.EXPIRY_JOB
    # The line is written just after the commit that released the slot.
    assert wait_for(lambda: seed_line(reservation) in caplog.messages, timeout=1)
    assert HOLD_END.job_id(reservation.pk) not in job_store.jobs()
    assert TimeSlot.objects.with_availability(timezone.now()).get(pk=slot.pk).available


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_paid_reservation_stays_paid_with_no_job_left(job_store):
    start_scheduler()
    reservation = reserve(hold_seconds=HOLD_SECONDS)
    reservation_pay(reservation=reservation, payment_reference="PAY-1")
    assert HOLD_END.job_id(reservation.pk) not in job_store.jobs()

    time.sleep(HOLD_SECONDS + 0.5)  # past the would-be expiry: nothing may touch it

    reservation.refresh_from_db()
    assert reservation.status == Reservation.Status.PAID
    assert TimeSlot.objects.get(pk=reservation.time_slot_id).status == TimeSlot.Status.RESERVED
    assert not job_store.jobs()


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_holds_that_lapsed_while_no_scheduler_ran_are_cancelled_at_start(job_store):
    # Written by a process that only adds jobs (a paused scheduler), like a web
    # process in worker mode while the worker is down.
    reservations = [reserve(TimeSlotFactory(), hold_seconds=1) for _ in range(5)]
    assert {HOLD_END.job_id(r.pk) for r in reservations} <= set(job_store.jobs())
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
    assert wait_for(lambda: not job_store.jobs(), timeout=2), job_store.jobs()


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_job_stored_by_the_previous_release_still_runs(job_store, settings):
    # The first release stored expire_reservation(pk) jobs; an upgrade must
    # run them, not drop them or leave their holds to the sweep.
    settings.SCHEDULER_SWEEP_SECONDS = 3600
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=0.8))
    job_store.create()
    get_scheduler().add_job(
        LEGACY_JOB_FUNC,
        trigger=DateTrigger(run_date=reservation.expires_at),
        args=[reservation.pk],
        id=f"expire_reservation:{reservation.pk}",
        misfire_grace_time=None,
    )
    stop_scheduler()
    assert set(job_store.jobs()) == {HOLD_END.job_id(reservation.pk)}

    started = start_scheduler()
    assert started.get_job(HOLD_END.job_id(reservation.pk)).func_ref == LEGACY_JOB_FUNC
    freed = wait_for(lambda: released_at(reservation), timeout=3)

    assert freed is not None, "the stored job did not run"
    assert (reservation.cancelled_at - reservation.expires_at).total_seconds() < 1.0
    assert reservation.events.last().cause == ReservationEvent.Cause.EXPIRY_JOB
    assert wait_for(lambda: not job_store.jobs(), timeout=2), job_store.jobs()


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_the_sweep_cancels_a_reservation_that_has_no_job(job_store, settings):
    settings.SCHEDULER_SWEEP_SECONDS = 1
    reconciled = threading.Event()
    get_scheduler().add_listener(
        lambda event: event.job_id == RECONCILE_JOB_ID and reconciled.set(), EVENT_JOB_EXECUTED
    )
    start_scheduler()
    # After the start-up reconcile has finished: it would give the hold a job.
    assert reconciled.wait(timeout=3)
    # Written directly, as if its job had been lost.
    lost = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=0.5))
    assert HOLD_END.job_id(lost.pk) not in job_store.jobs()

    cancelled = wait_for(
        lambda: Reservation.objects.get(pk=lost.pk).status == Reservation.Status.CANCELLED,
        timeout=3,
    )

    assert cancelled, "the sweep did not expire the reservation without a job"
    assert lost.events.last().cause == ReservationEvent.Cause.SWEEP
    assert TimeSlot.objects.get(pk=lost.time_slot_id).status == TimeSlot.Status.ACTIVE


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
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


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_job_written_by_another_process_runs_on_time(job_store, settings):
    # The runner has nothing due, so APScheduler alone would sleep until its
    # sweep; the poller must make it look at the store again.
    settings.SCHEDULER_POLL_SECONDS = 0.2
    settings.SCHEDULER_SWEEP_SECONDS = 3600
    runner = start_scheduler(config=settings.SCHEDULER_CONFIG)
    time.sleep(0.3)  # let the runner finish its first pass and go to sleep
    # Written directly: the job comes from the other process only.
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=1))
    with job_from_another_process(reservation, settings.SCHEDULER_CONFIG):
        freed = wait_for(lambda: released_at(reservation), timeout=3)

    assert runner.running
    assert freed is not None
    assert (freed - reservation.expires_at).total_seconds() < 1.0


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_burst_of_holds_ending_together_is_released_at_once(job_store):
    start_scheduler()
    slots = [TimeSlotFactory() for _ in range(200)]
    burst = [reserve(slot, hold_seconds=600) for slot in slots]
    ends = timezone.now() + timedelta(seconds=1)
    Reservation.objects.filter(pk__in=[r.pk for r in burst]).update(expires_at=ends)
    for reservation in burst:
        reservation.expires_at = ends
    timeline.deadlines_sync(burst)  # as a staff extension moves each job

    held = TimeSlot.objects.filter(pk__in=[s.pk for s in slots], status=TimeSlot.Status.RESERVED)
    assert wait_for(lambda: not held.exists(), timeout=4), f"{held.count()} slots still held"
    late = timezone.now() - ends
    assert late < timedelta(seconds=2), late
    assert wait_for(lambda: not job_store.jobs(), timeout=2), len(job_store.jobs())
    causes = set(
        ReservationEvent.objects.filter(to_status="cancelled").values_list("cause", flat=True)
    )
    assert causes <= {"expiry_job", "sweep"}
