import enum
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import ExpireOutcome, reservation_expire
from escape_rooms_backend.scheduler import (
    expiry_job_id,
    schedule_reservation_expiry,
    stored_expiry_jobs,
    unschedule_reservation_expiry,
)

from .models import SchedulerHeartbeat


def heartbeat_record(
    *,
    started: bool = False,
    stopped: bool = False,
    role: str | None = None,
    sweep_cancelled: int | None = None,
    now: datetime | None = None,
) -> SchedulerHeartbeat:
    """
    Record that this process's scheduler is alive (one row per host and pid).

    ``started`` marks a (re)start, ``stopped`` a clean stop, ``role`` whether
    it runs the jobs (``runner``) or waits to (``standby``), and
    ``sweep_cancelled`` the result of the sweep that just ran.
    """
    now = now or timezone.now()
    fields: dict = {"beat_at": now}
    if role is not None:
        fields["role"] = role
    if started:
        fields |= {"started_at": now, "stopped_at": None}
    if stopped:
        fields["stopped_at"] = now
    if sweep_cancelled is not None:
        fields |= {"last_sweep_at": now, "last_sweep_cancelled": sweep_cancelled}
    heartbeat, _ = SchedulerHeartbeat.objects.update_or_create(
        hostname=socket.gethostname(), pid=os.getpid(), defaults=fields
    )
    return heartbeat


class DriftKind(enum.StrEnum):
    MISSING_JOB = "missing_job"  # pending, within its hold, no job
    ORPHAN_JOB = "orphan_job"  # a job whose reservation is not pending or does not exist
    WRONG_RUN_TIME = "wrong_run_time"  # a job whose run time is not the reservation's expires_at
    OVERDUE = "overdue"  # pending, past expires_at


@dataclass
class Drift:
    kind: DriftKind
    reservation_id: int
    expires_at: datetime | None = None
    run_time: datetime | None = None
    action: str = ""
    repaired: bool | None = None  # None: not attempted (report only)

    @property
    def job_id(self) -> str:
        return expiry_job_id(self.reservation_id)


@dataclass
class ReconcileReport:
    checked_at: datetime
    pending: int
    jobs: int
    drift: list[Drift]
    fixed: bool

    @property
    def consistent(self) -> bool:
        return not self.drift

    @property
    def all_repaired(self) -> bool:
        return all(d.repaired for d in self.drift)


# The job store keeps run times as float seconds; allow for the rounding.
RUN_TIME_TOLERANCE = timedelta(milliseconds=1)
# A hold that lapsed less than this long ago is its job's to expire, not drift.
OVERDUE_GRACE = timedelta(seconds=10)


def expiry_jobs_reconcile(
    *, fix: bool = False, include_overdue: bool = True, now: datetime | None = None
) -> ReconcileReport:
    """
    Compare pending reservations with the expiry jobs in the store; with ``fix``, repair.

    Drift: a pending reservation with no job; a job whose reservation is not
    pending or no longer exists; a job whose run time is not ``expires_at``; a
    pending reservation more than ``OVERDUE_GRACE`` (10 s) past
    ``expires_at`` (one that lapsed just now is its job's to expire). Repairs, in that order of
    safety: expire the overdue (cause ``reconcile``), remove the orphans,
    schedule the missing and move the mistimed. Every repair goes through the
    services or the scheduler module, each idempotent, so running it beside a
    live scheduler is safe: a job that fires meanwhile finds its work done.
    ``include_overdue=False`` leaves overdue holds alone (the scheduler's
    start-up reconcile, where the sweep expires them). Raises what SQLAlchemy
    raises when the job store is unreachable.
    """
    now = now or timezone.now()
    jobs = stored_expiry_jobs(missing_ok=True)
    overdue_before = now - OVERDUE_GRACE
    # Primary key -> expires_at, not model instances: the runner reconciles at
    # every start, and 100,000 pending holds as instances cost about 70 MiB.
    pending: dict[int, datetime] = dict(
        Reservation.objects.filter(status=Reservation.Status.PENDING)
        .values_list("pk", "expires_at")
        .iterator(chunk_size=5000)
    )
    drift: list[Drift] = []
    for pk, expires_at in sorted(pending.items()):
        run_time = jobs.get(pk)
        if expires_at <= now:
            # Just lapsed: its job is firing or queued; not drift (yet).
            if include_overdue and expires_at <= overdue_before:
                drift.append(Drift(DriftKind.OVERDUE, pk, expires_at, run_time))
            continue
        if pk not in jobs:
            drift.append(Drift(DriftKind.MISSING_JOB, pk, expires_at))
        elif run_time is None or abs(run_time - expires_at) > RUN_TIME_TOLERANCE:
            drift.append(Drift(DriftKind.WRONG_RUN_TIME, pk, expires_at, run_time))
    for pk, run_time in sorted(jobs.items()):
        if pk not in pending:
            drift.append(Drift(DriftKind.ORPHAN_JOB, pk, run_time=run_time))

    if fix:
        for item in drift:
            _repair(item, pending, now=now)
    return ReconcileReport(now, len(pending), len(jobs), drift, fix)


def _repair(item: Drift, pending: dict[int, datetime], *, now: datetime) -> None:
    if item.kind is DriftKind.OVERDUE:
        # At the moment of release, so that the lateness recorded is real.
        result = reservation_expire(
            reservation_id=item.reservation_id, cause=ReservationEvent.Cause.RECONCILE
        )
        # Expired here, or meanwhile by its job or the sweep: either way done.
        item.repaired = result.outcome is not ExpireOutcome.NOT_DUE
        item.action = "expired" if result.expired else f"nothing to do ({result.outcome.value})"
        if item.run_time is not None:
            item.repaired = unschedule_reservation_expiry(item.reservation_id) and item.repaired
    elif item.kind is DriftKind.ORPHAN_JOB:
        item.repaired = unschedule_reservation_expiry(item.reservation_id)
        item.action = "removed the job"
    else:
        # The job needs only the primary key and the hold's end.
        hold = Reservation(pk=item.reservation_id, expires_at=pending[item.reservation_id])
        item.repaired = schedule_reservation_expiry(hold)
        item.action = "scheduled the job at expires_at"
    if not item.repaired:
        item.action += " (failed; see the log)"
