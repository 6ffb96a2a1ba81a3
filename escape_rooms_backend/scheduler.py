"""
Expiry of unpaid reservations with APScheduler 3: the public face of the scheduler.

- Every deadline on a reservation (the hold's end first, kind ``expiry``) is
  a ``DateTrigger`` job in a persistent SQLAlchemy job store, kept in step
  with the reservation after commit (``escape_rooms_backend.timeline``).
- One process runs the jobs: the background scheduler of the web server, or
  ``manage.py start_scheduler`` when ``SCHEDULER_WORKER_MODE`` is true
  (``escape_rooms_backend.lifecycle``, ``escape_rooms_backend.runner``).
- The sweep, ``cancel_expired_reservations``, runs every
  ``SCHEDULER_SWEEP_SECONDS`` and once at start: it handles every deadline
  whose job was lost (APScheduler deletes a date job's row before it runs).

Nothing here is needed for correctness: a lapsed hold reads as expired and
can be rebooked before any job runs. The jobs make expiry prompt.

The job functions below are named by import path in stored jobs: they are
public APIs and stay importable here.
"""

import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from django.conf import settings

from . import housekeeping, timeline
from .db import job_connection
from .deadlines import EXPIRY
from .lifecycle import process, record_heartbeat

logger = logging.getLogger(__name__)

SWEEP_SUMMARY_LOG = "Successfully cancelled %d expired reservations"
SWEEP_NONE_LOG = "No expired reservations found"


def get_scheduler() -> BackgroundScheduler:
    """
    Return this process's scheduler, built from ``settings.SCHEDULER_CONFIG``.

    The same instance every call until ``stop_scheduler`` discards it. Building
    it starts nothing.
    """
    return process.get()


def start_scheduler(
    blocking: bool = False, config: dict[str, Any] | None = None
) -> BackgroundScheduler:
    """
    Offer to run jobs in this process and return the scheduler.

    ``config`` replaces ``settings.SCHEDULER_CONFIG`` (the seed's
    ``apscheduler.*`` format) if this process's scheduler has not started yet.
    The scheduler starts paused and competes for the job store's runner lock:
    as the runner it resumes, adds the sweep (every ``SCHEDULER_SWEEP_SECONDS``,
    first run now) and a one-off reconcile; as a standby it stays paused,
    still writing jobs, and takes over when the runner dies. With
    ``blocking=True`` (the dedicated worker) it returns only after SIGINT or
    SIGTERM, once the scheduler has shut down; call it from the main thread
    then. Raises what APScheduler raises when the job store cannot be opened,
    after logging it.
    """
    return process.start(blocking=blocking, config=config)


def stop_scheduler(scheduler: BackgroundScheduler | None = None) -> None:
    """
    Shut ``scheduler`` (default: this process's) down, waiting for running jobs.

    Idempotent. Afterwards ``get_scheduler`` builds a fresh scheduler from the
    settings. Jobs due but not yet run stay in the store for the next start.
    """
    process.stop(scheduler)


def cancel_expired_reservations(now: datetime | None = None) -> int:
    """
    Sweep: handle every deadline that fell due by ``now``; return the holds it cancelled.

    The safety net behind the jobs, run every ``SCHEDULER_SWEEP_SECONDS``:
    expires every pending reservation whose hold lapsed, and handles the
    overdue deadlines of every other kind. Never raises; a kind whose sweep
    fails is logged and the others are swept. Without ``now``, each batch is
    expired at the moment it is released, so the lateness recorded is the
    real one.
    """
    handled = timeline.deadlines_sweep(now)
    cancelled = handled.get(EXPIRY, 0)
    if cancelled:
        logger.info(SWEEP_SUMMARY_LOG, cancelled)
    else:  # the expiry jobs got there first
        logger.debug(SWEEP_NONE_LOG)
    others = {kind: count for kind, count in handled.items() if kind != EXPIRY and count}
    if others:
        logger.info(
            "The sweep handled overdue deadlines: %s",
            ", ".join(f"{count} {kind}" for kind, count in sorted(others.items())),
        )
    return cancelled


def sweep() -> int:
    """
    Job ``cancel_expired_reservations``: run the sweep, then record a heartbeat.

    First a damaged SQLite job store is replaced (``job_store_check``). The
    heartbeat tells ``scheduler_status``, ``/healthz`` and ``/metrics`` that a
    runner is alive, what its last sweep did and how long it took. Then, at
    the first pass and once every ``HOUSEKEEPING_SECONDS``, the daily chores
    (``housekeeping``: expired sessions). Returns the number cancelled; never
    raises.
    """
    if process.stopping.is_set():
        return 0  # the next runner sweeps at its start
    started = time.monotonic()
    try:
        process.job_store_check()
    except Exception:  # the sweep runs whatever state the store is in
        logger.exception("Could not check the job store; sweeping anyway")
    cancelled = cancel_expired_reservations()
    record_heartbeat(
        sweep_cancelled=cancelled,
        sweep_seconds=time.monotonic() - started,
        job_lateness=process.lateness.snapshot(),
    )
    housekeeping.run_if_due()
    return cancelled


def expire_reservation(reservation_id: int, coalesced: Sequence[int] = ()) -> None:
    """
    Job ``expire_reservation:<pk>`` as stored by earlier releases: the hold's end.

    The same as ``timeline.run_deadline("expiry", reservation_id, coalesced)``,
    which new jobs name instead. Never raises.
    """
    timeline.run_deadline(EXPIRY, reservation_id, coalesced)


@job_connection
def reconcile_at_start() -> None:
    """
    Job ``reconcile_expiry_jobs``, once at start: give every deadline its job.

    Repairs what a lost or deleted job store leaves behind (deadlines with no
    job, orphan and mistimed jobs) so that they are prompt again, rather than
    waiting for the sweep. Overdue deadlines are left to the sweep, which runs
    at start too. Does nothing when ``SCHEDULER_EXPIRY_JOBS`` is off (the
    benchmarks' poll-only design, whose holds have no jobs by design). Never
    raises.
    """
    if not settings.SCHEDULER_EXPIRY_JOBS:
        return
    try:
        report = timeline.deadlines_reconcile(fix=True, include_overdue=False)
    except Exception:
        logger.exception("Could not reconcile the job store at start; run reconcile_expiry_jobs")
        return
    if report.drift:
        counts = Counter(f"{item.kind.value} ({item.deadline})" for item in report.drift)
        logger.warning(
            "Repaired drift between reservations and the job store at start: %s",
            ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items())),
        )
