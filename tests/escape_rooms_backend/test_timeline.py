"""
Every kind's deadlines as jobs: kept in step after commit, run, retried, swept and reconciled.

Most tests register a second, test-only kind beside the hold's end: a
reminder one minute before the hold ends, while the reservation is pending.
Its handle and sweep record what they were asked to do.
"""

import logging
from datetime import datetime, timedelta
from io import StringIO

import pytest
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.schedulers.base import BaseScheduler
from django.core.management import call_command
from django.db import OperationalError, transaction
from django.utils import timezone

from apps.operations.services import heartbeat_record
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation
from apps.reservations.services import reservation_extend_hold, reservation_pay
from escape_rooms_backend import deadlines, jobstore, timeline
from escape_rooms_backend.deadlines import EXPIRY, DeadlineKind
from escape_rooms_backend.jobstore import JobStoreMissing
from escape_rooms_backend.lifecycle import process
from escape_rooms_backend.scheduler import cancel_expired_reservations, get_scheduler
from escape_rooms_backend.timeline import (
    BY_JOB,
    BY_RECONCILE,
    BY_SWEEP,
    DriftKind,
    deadline_schedule,
    deadline_unschedule,
    deadlines_reconcile,
    deadlines_sweep,
    deadlines_sync,
    deadlines_unschedule,
    job_store_next_run_time,
    retry_delay,
    run_deadline,
    stored_jobs,
)

from ..conftest import reconcile_command
from ..factories import ReservationFactory, reserve

# The expiry engine's own jobs: the messages' kinds have tests of their own.
pytestmark = pytest.mark.usefixtures("hold_end_only")

REMINDER_BEFORE = timedelta(minutes=1)


class Reminders:
    """The test-only reminder kind, what it was asked to do, and how it answers."""

    def __init__(self) -> None:
        self.handled: list[tuple[list[int], str]] = []
        self.swept: list[tuple[datetime | None, str]] = []
        self.busy: set[int] = set()  # ids whose rows the handle finds busy
        self.failing = False  # whether handle and sweep raise
        self.sweep_count = 0  # what the sweep says it handled
        self.kind = deadlines.register(
            DeadlineKind(
                name="reminder",
                job_prefix="remind_reservation:",
                due_at=self.due_at,
                handle=self.handle,
                sweep=self.sweep,
                scheduled=self.scheduled,
            )
        )

    @staticmethod
    def due_at(reservation: Reservation) -> datetime | None:
        if reservation.status == Reservation.Status.PENDING:
            return reservation.expires_at - REMINDER_BEFORE
        return None

    def handle(self, reservation_ids, by: str) -> list[int]:
        self.handled.append((list(reservation_ids), by))
        if self.failing:
            raise OperationalError("database went away")
        return [pk for pk in reservation_ids if pk in self.busy]

    def sweep(self, now: datetime | None, by: str) -> int:
        self.swept.append((now, by))
        if self.failing:
            raise OperationalError("database went away")
        return self.sweep_count

    @staticmethod
    def scheduled():
        pending = Reservation.objects.filter(status=Reservation.Status.PENDING)
        return [(pk, at - REMINDER_BEFORE) for pk, at in pending.values_list("pk", "expires_at")]


@pytest.fixture
def reminder():
    reminders = Reminders()
    yield reminders
    deadlines.unregister(reminders.kind.name)


def jobs_of(reservation: Reservation) -> dict[str, datetime]:
    """The jobs both kinds need for a pending reservation, at their due times."""
    return {
        HOLD_END.job_id(reservation.pk): reservation.expires_at,
        f"remind_reservation:{reservation.pk}": reservation.expires_at - REMINDER_BEFORE,
    }


def stored(job_id: str):
    """The job as the store has it (function, arguments, run time), or None."""
    return get_scheduler().get_job(job_id)


# ---------------------------------------------------------------------------
# Keeping every kind's jobs in step
# ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_reserving_writes_the_job_of_every_kind_after_commit(job_store, reminder):
    with transaction.atomic():
        reservation = reserve()
        assert job_store.jobs() == {}, "the jobs must wait for the commit"

    assert job_store.jobs() == jobs_of(reservation)


@pytest.mark.django_db
def test_paying_removes_the_jobs_of_every_kind(
    job_store, reminder, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve()
    assert len(job_store.jobs()) == 2

    with django_capture_on_commit_callbacks(execute=True):
        reservation_pay(reservation=reservation, payment_reference="PAY-1")

    assert job_store.jobs() == {}


@pytest.mark.django_db
def test_moving_the_hold_moves_the_jobs_of_every_kind(
    job_store, reminder, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve()
    first_end = reservation.expires_at

    with django_capture_on_commit_callbacks(execute=True):
        reservation_extend_hold(reservation=reservation, by=timedelta(minutes=10))

    reservation.refresh_from_db()
    assert reservation.expires_at == first_end + timedelta(minutes=10)
    assert job_store.jobs() == jobs_of(reservation)


@pytest.mark.django_db
def test_with_jobs_switched_off_the_sync_writes_nothing(job_store, settings):
    settings.SCHEDULER_EXPIRY_JOBS = False

    deadlines_sync([ReservationFactory()])

    assert job_store.jobs() == {}


# ---------------------------------------------------------------------------
# Writing one job
# ---------------------------------------------------------------------------


def test_a_job_write_racing_the_runners_delete_is_tried_once_more(
    job_store, reminder, monkeypatch, caplog
):
    real_add_job = BaseScheduler.add_job
    attempts = []

    def add_job(self, *args, **kwargs):
        attempts.append(kwargs["id"])
        if len(attempts) == 1:
            raise ConflictingIdError(kwargs["id"])
        return real_add_job(self, *args, **kwargs)

    monkeypatch.setattr(BaseScheduler, "add_job", add_job)
    at = timezone.now() + timedelta(hours=1)

    assert deadline_schedule(reminder.kind, 77, at) is True

    assert attempts == ["remind_reservation:77"] * 2
    assert job_store.jobs() == {"remind_reservation:77": at}
    assert "Could not schedule" not in caplog.text


def test_a_job_store_that_stays_broken_is_logged_and_reported(reminder, monkeypatch, caplog):
    def add_job(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(BaseScheduler, "add_job", add_job)

    assert deadline_schedule(reminder.kind, 78, timezone.now() + timedelta(hours=1)) is False
    assert caplog.messages == [
        "Could not schedule the reminder job of reservation 78: the sweep handles it once it "
        "falls due, and the next start's reconcile restores the job"
    ]


@pytest.mark.parametrize(("due_in", "notified"), [(10, True), (60, True), (1800, False)])
def test_only_jobs_due_before_the_runners_next_look_are_announced(
    job_store, reminder, monkeypatch, due_in, notified
):
    calls = []
    monkeypatch.setattr(process, "notify_runner", lambda: calls.append(1))

    assert deadline_schedule(reminder.kind, 5, timezone.now() + timedelta(seconds=due_in))

    assert bool(calls) is notified
    assert "remind_reservation:5" in job_store.jobs()


def test_removing_a_job_that_is_not_there_is_no_error(job_store, reminder):
    assert deadline_unschedule(reminder.kind, 404) is True


def test_a_job_that_cannot_be_removed_is_logged_and_reported(reminder, monkeypatch, caplog):
    def remove_job(self, job_id, jobstore=None):
        raise RuntimeError("store unreachable")

    monkeypatch.setattr(BaseScheduler, "remove_job", remove_job)

    assert deadline_unschedule(reminder.kind, 79) is False
    assert "Could not remove the reminder job of reservation 79" in caplog.messages


def test_removing_many_jobs_leaves_the_due_ones_to_the_runner(job_store, reminder):
    now = timezone.now()
    for pk, at in [(1, now - timedelta(seconds=1)), (2, now + timedelta(hours=1)), (3, now)]:
        deadline_schedule(reminder.kind, pk, at)

    assert deadlines_unschedule(reminder.kind, [1, 2, 3, 4]) is True

    assert set(job_store.jobs()) == {"remind_reservation:1", "remind_reservation:3"}


def test_a_failure_removing_many_jobs_is_logged_and_reported(reminder, monkeypatch, caplog):
    def delete_not_due(*args):
        raise RuntimeError("store unreachable")

    monkeypatch.setattr(jobstore, "delete_not_due", delete_not_due)

    assert deadlines_unschedule(reminder.kind, [1, 2]) is False
    assert "Could not remove the reminder jobs of 2 reservations" in caplog.messages


# ---------------------------------------------------------------------------
# The job: run_deadline
# ---------------------------------------------------------------------------


def test_stored_jobs_name_the_job_function_by_its_import_path():
    from apscheduler.util import ref_to_obj

    assert ref_to_obj(timeline.JOB_FUNC) is run_deadline


@pytest.mark.django_db
def test_the_job_hands_its_reservation_and_the_folded_ones_to_its_kind(job_store, reminder):
    run_deadline("reminder", 41, coalesced=[42, 43])

    assert reminder.handled == [([41, 42, 43], BY_JOB)]
    assert job_store.jobs() == {}


@pytest.mark.django_db
def test_a_failing_job_is_logged_and_stored_again_with_every_reservation_it_had(
    job_store, reminder, caplog
):
    reminder.failing = True

    run_deadline("reminder", 41, coalesced=[42, 43])

    failure = next(r for r in caplog.records if r.getMessage().startswith("Failed to handle"))
    assert failure.levelname == "ERROR"
    assert failure.getMessage() == (
        "Failed to handle the reminder deadline of reservation 41; trying again in 0.5s"
    )
    assert failure.exc_info is not None
    retry = stored("remind_reservation:41")
    assert (retry.func_ref, retry.args) == (timeline.JOB_FUNC, ("reminder", 41))
    assert retry.kwargs == {"coalesced": [42, 43], "attempt": 1}
    assert 0 < (retry.next_run_time - timezone.now()).total_seconds() <= 0.5


@pytest.mark.django_db
def test_a_job_that_starts_while_the_process_stops_leaves_its_deadline_due_in_the_store(
    job_store, reminder
):
    process.stopping.set()
    try:
        run_deadline("reminder", 41, coalesced=[42, 43], attempt=2)
    finally:
        process.stopping.clear()

    assert reminder.handled == []  # no work started
    kept = stored("remind_reservation:41")
    assert kept.kwargs == {"coalesced": [42, 43], "attempt": 2}
    assert kept.next_run_time <= timezone.now()  # due: the next runner runs it at once


@pytest.mark.parametrize(
    ("attempt", "delay"), [(0, 0.5), (1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (12, 10)]
)
def test_retries_wait_twice_as_long_each_time_up_to_ten_seconds(attempt, delay):
    assert retry_delay(attempt) == delay


@pytest.mark.django_db
def test_a_job_that_failed_again_waits_longer(job_store, reminder):
    reminder.failing = True

    run_deadline("reminder", 41, attempt=3)

    retry = stored("remind_reservation:41")
    assert retry.kwargs == {"attempt": 4}
    wait = (retry.next_run_time - timezone.now()).total_seconds()
    assert retry_delay(3) - 0.5 < wait <= retry_delay(3)


@pytest.mark.django_db
def test_reservations_whose_rows_were_busy_are_tried_again_shortly(job_store, reminder, caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    reminder.busy = {42, 43}

    run_deadline("reminder", 41, coalesced=[42, 43])

    assert (
        "The reminder deadline of 2 reservations found their rows busy; trying again in 0.5s"
        in caplog.messages
    )
    # One job carries the busy ones; the one that was handled has none.
    assert set(job_store.jobs()) == {"remind_reservation:42"}
    assert stored("remind_reservation:42").kwargs == {"coalesced": [43], "attempt": 1}


@pytest.mark.django_db
def test_a_job_of_a_kind_no_app_registers_is_logged_and_dropped(job_store, caplog):
    run_deadline("waitlist", 41)

    assert caplog.messages == ["A job names the deadline kind 'waitlist', which no app registers"]
    assert job_store.jobs() == {}


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_sweep_asks_every_kind_and_reports_what_each_handled(reminder):
    reminder.sweep_count = 2
    lapsed = ReservationFactory(expires_at=timezone.now() - timedelta(seconds=1))
    now = timezone.now()

    assert deadlines_sweep(now) == {EXPIRY: 1, "reminder": 2}

    assert reminder.swept == [(now, BY_SWEEP)]
    assert Reservation.objects.get(pk=lapsed.pk).status == Reservation.Status.CANCELLED


@pytest.mark.django_db
def test_the_seeds_sweep_names_what_other_kinds_handled(reminder, caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    reminder.sweep_count = 2

    assert cancel_expired_reservations() == 0

    assert "The sweep handled overdue deadlines: 2 reminder" in caplog.messages


@pytest.mark.django_db
def test_a_kind_whose_sweep_fails_is_logged_and_the_others_are_swept(reminder, caplog):
    reminder.failing = True
    lapsed = ReservationFactory(expires_at=timezone.now() - timedelta(seconds=1))

    assert deadlines_sweep() == {EXPIRY: 1, "reminder": 0}

    assert Reservation.objects.get(pk=lapsed.pk).status == Reservation.Status.CANCELLED
    assert "Sweep of the reminder deadlines failed; retrying at the next sweep" in caplog.messages


# ---------------------------------------------------------------------------
# Reading the store
# ---------------------------------------------------------------------------


def test_a_missing_job_store_is_reported_not_created(job_store, reminder):
    with pytest.raises(JobStoreMissing):
        stored_jobs(reminder.kind)
    with pytest.raises(JobStoreMissing):
        job_store_next_run_time()

    assert stored_jobs(reminder.kind, missing_ok=True) == {}
    assert not job_store.path.exists()


def test_stored_jobs_of_a_kind_and_the_next_run_time_of_any(job_store, reminder):
    now = timezone.now().replace(microsecond=0)
    deadline_schedule(reminder.kind, 1, now + timedelta(minutes=5))
    deadline_schedule(reminder.kind, 2, now + timedelta(minutes=9))
    deadline_schedule(HOLD_END, 1, now + timedelta(minutes=3))

    assert stored_jobs(reminder.kind) == {
        1: now + timedelta(minutes=5),
        2: now + timedelta(minutes=9),
    }
    assert job_store_next_run_time() == now + timedelta(minutes=3)


# ---------------------------------------------------------------------------
# Reconcile
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_reconcile_reports_drift_per_kind_and_the_fix_repairs_it(
    job_store, reminder, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        in_step, mistimed = reserve(), reserve()
    without_jobs = ReservationFactory()  # written directly: no signal, no jobs
    deadline_unschedule(reminder.kind, in_step.pk)
    deadline_schedule(HOLD_END, mistimed.pk, mistimed.expires_at + timedelta(minutes=7))
    deadline_schedule(reminder.kind, 987654, timezone.now() + timedelta(hours=1))

    report = deadlines_reconcile()

    assert {(d.deadline, d.kind, d.reservation_id, d.job_id) for d in report.drift} == {
        ("reminder", DriftKind.MISSING_JOB, in_step.pk, f"remind_reservation:{in_step.pk}"),
        ("expiry", DriftKind.WRONG_RUN_TIME, mistimed.pk, f"expire_reservation:{mistimed.pk}"),
        ("expiry", DriftKind.MISSING_JOB, without_jobs.pk, f"expire_reservation:{without_jobs.pk}"),
        (
            "reminder",
            DriftKind.MISSING_JOB,
            without_jobs.pk,
            f"remind_reservation:{without_jobs.pk}",
        ),
        ("reminder", DriftKind.ORPHAN_JOB, 987654, "remind_reservation:987654"),
    }
    assert (report.needed, report.jobs) == (
        {"expiry": 3, "reminder": 3},
        {"expiry": 2, "reminder": 2},
    )
    assert job_store.jobs() != {}

    code, table = reconcile_command("--fix")

    assert code == 0, table
    assert table.count("reminder ") >= 3
    assert job_store.jobs() == {
        **jobs_of(in_step),
        **jobs_of(mistimed),
        **jobs_of(without_jobs),
    }
    assert deadlines_reconcile().consistent


@pytest.mark.django_db
def test_overdue_deadlines_of_every_kind_are_handled_by_the_fix(job_store, reminder):
    # The hold ends in 30 s, so its reminder is 30 s overdue.
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=30))
    deadline_schedule(reminder.kind, reservation.pk, timezone.now() - timedelta(seconds=30))

    report = deadlines_reconcile(fix=True)

    overdue = next(d for d in report.drift if d.deadline == "reminder")
    assert (overdue.kind, overdue.repaired, overdue.action) == (DriftKind.OVERDUE, True, "handled")
    assert reminder.handled == [([reservation.pk], BY_RECONCILE)]
    # Its stale job is gone; the hold's end got its missing job.
    assert job_store.jobs() == {HOLD_END.job_id(reservation.pk): reservation.expires_at}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("busy", "failing", "action"),
    [
        (True, False, "busy; left to its job and the sweep"),
        (False, True, "busy; left to its job and the sweep (failed; see the log)"),
    ],
)
def test_an_overdue_deadline_the_fix_could_not_handle_keeps_its_job_and_is_reported(
    job_store, reminder, caplog, busy, failing, action
):
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=30))
    job_id = f"remind_reservation:{reservation.pk}"
    deadline_schedule(reminder.kind, reservation.pk, timezone.now() - timedelta(seconds=30))
    due = job_store.jobs()[job_id]
    reminder.busy = {reservation.pk} if busy else set()
    reminder.failing = failing

    report = deadlines_reconcile(fix=True)

    overdue = next(d for d in report.drift if d.deadline == "reminder")
    assert (overdue.kind, overdue.repaired, overdue.action) == (DriftKind.OVERDUE, False, action)
    assert not report.all_repaired
    assert job_store.jobs()[job_id] == due  # the runner tries it again
    failed = f"Reconcile could not handle the reminder deadline of reservation {reservation.pk}"
    assert (failed in caplog.messages) is failing


@pytest.mark.django_db
def test_deadlines_that_just_fell_due_are_their_jobs_not_drift(job_store, reminder):
    # Its reminder fell due 5 s ago: within the grace, the job's to run.
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=55))
    deadline_schedule(HOLD_END, reservation.pk, reservation.expires_at)

    assert deadlines_reconcile().drift == []


@pytest.mark.django_db
def test_the_start_up_reconcile_leaves_overdue_deadlines_to_the_sweep(job_store, reminder):
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=30))

    report = deadlines_reconcile(fix=True, include_overdue=False)

    assert [(d.deadline, d.kind) for d in report.drift] == [("expiry", DriftKind.MISSING_JOB)]
    assert reminder.handled == []
    assert set(job_store.jobs()) == {HOLD_END.job_id(reservation.pk)}


# ---------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_scheduler_status_counts_the_jobs_of_every_kind(
    job_store, reminder, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first, _ = reserve(), reserve()
    heartbeat_record(started=True)
    out = StringIO()

    call_command("scheduler_status", stdout=out)

    lines = dict(line.split(":", 1) for line in out.getvalue().splitlines())
    soonest = timezone.localtime(first.expires_at - REMINDER_BEFORE)
    assert lines["Deadline jobs"].strip() == (
        f"2 expiry, 2 reminder; next due {soonest:%Y-%m-%d %H:%M:%S %Z}"
    )
