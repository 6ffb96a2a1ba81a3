"""
Expiry of unpaid reservations with APScheduler 3.

What runs where (docs/scheduler.md tells the whole story):

- Every pending reservation has a ``DateTrigger`` job, id
  ``expire_reservation:<pk>``, at its ``expires_at``, in a persistent
  SQLAlchemy job store. The ``post_save`` receiver in
  ``apps.reservations.signals`` adds, moves and removes it after commit.
- One process runs the jobs: the background scheduler of the web server, or
  ``manage.py start_scheduler`` when ``SCHEDULER_WORKER_MODE`` is true. Every
  other process that writes jobs starts the same scheduler *paused*: APScheduler
  writes to the store only from a started scheduler, and a paused one never
  runs a job.
- The sweep, ``cancel_expired_reservations``, runs every
  ``SCHEDULER_SWEEP_SECONDS`` and once at start: it expires holds whose job
  was lost (APScheduler deletes a date job's row before it runs, so a crash
  there loses it).
- A running scheduler sleeps until its next known job, so it would not see a
  job another process wrote. A poller thread wakes it every
  ``SCHEDULER_POLL_SECONDS`` to look again (about 1.4 ms of CPU a look).

Nothing here is needed for correctness: a lapsed hold reads as expired and
can be rebooked before any job runs. The jobs make expiry prompt.
"""

import contextlib
import copy
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED
from apscheduler.triggers.date import DateTrigger
from apscheduler.util import datetime_to_utc_timestamp
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from sqlalchemy import event, select
from sqlalchemy.engine import make_url

from .runner import NOTIFY_CHANNEL, Listener, Runner, lock_for

if TYPE_CHECKING:
    from apps.reservations.models import Reservation
    from apps.reservations.services import ExpiredHold

logger = logging.getLogger(__name__)

SWEEP_JOB_ID = "cancel_expired_reservations"
EXPIRY_JOB_PREFIX = "expire_reservation:"
# Stored jobs name their function by import path: these are public APIs. A job
# whose function cannot be imported any more is deleted by APScheduler.
EXPIRY_JOB_FUNC = "escape_rooms_backend.scheduler:expire_reservation"
SWEEP_JOB_FUNC = "escape_rooms_backend.scheduler:sweep"
RECONCILE_JOB_ID = "reconcile_expiry_jobs"
RECONCILE_JOB_FUNC = "escape_rooms_backend.scheduler:reconcile_at_start"

CANCELLED_LOG = "Cancelled expired reservation %s for %s - %s on %s at %s"
JOB_STORE_BUSY_TIMEOUT = 2  # seconds a SQLite job store write waits for a lock
JOB_NOT_SCHEDULED_LOG = (
    "Could not schedule the expiry job of reservation %s: the sweep expires it once its "
    "hold lapses, and the next start's reconcile restores the job"
)
SWEEP_SUMMARY_LOG = "Successfully cancelled %d expired reservations"
JOB_FAILED_LOG = "Failed to expire reservation %s; trying again in %ss"
JOB_RETRY_SECONDS = 10
# A job due later than this is not announced with NOTIFY: the runner looks at
# the store at least this often (SCHEDULER_POLL_SECONDS is capped at it).
NOTIFY_HORIZON_SECONDS = 60.0
SWEEP_NONE_LOG = "No expired reservations found"


def expiry_job_id(reservation_id: int) -> str:
    """Return the id of a reservation's expiry job: ``expire_reservation:<pk>``."""
    return f"{EXPIRY_JOB_PREFIX}{reservation_id}"


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


def _close_old_connections() -> None:
    # Jobs run in the executor's threads, each with its own Django connection
    # that no request cycle closes (django-apscheduler does the same). A caller
    # inside a transaction (a test, a shell's atomic block) owns its connection:
    # closing it there would break that transaction.
    if not connection.in_atomic_block:
        close_old_connections()


def _log_cancelled(
    reservation_id: int, customer_name: str, room_name: str, starts_at: datetime
) -> None:
    local = timezone.localtime(starts_at)
    logger.info(
        CANCELLED_LOG,
        reservation_id,
        customer_name,
        room_name,
        local.date().isoformat(),
        local.time().isoformat(),
    )


def _release_due(cause: str, now: datetime | None = None) -> list["ExpiredHold"]:
    """
    Expire every hold lapsed by ``now`` in batches (``reservations_expire_due``).

    Logs the seed's line for each once every batch is committed, so that the
    log lines of a burst do not hold back the release of its later slots. If
    a batch fails, the due reservations are expired one at a time instead, so
    that one bad row cannot hold back the rest; each failure is logged.
    Raises only when even listing the due reservations fails.
    """
    from apps.reservations import services

    limit = services.EXPIRE_BATCH_SIZE
    released: list[services.ExpiredHold] = []
    # Share the work with other bulk expiries running now (skip the rows they
    # hold), then make one last pass that waits for rows held by a payment.
    # SQLite's one write lock leaves nothing to skip: one waiting pass there.
    skip_locked = connection.features.has_select_for_update_skip_locked
    try:
        while True:
            try:
                batch = services.reservations_expire_due(
                    now=now, cause=cause, limit=limit, skip_locked=skip_locked
                )
            except Exception:
                logger.exception("Bulk expiry failed; expiring the lapsed holds one at a time")
                released += _release_one_by_one(cause, now)
                break
            released += batch
            if len(batch) == limit:
                continue
            if not skip_locked:
                break
            skip_locked = False
    finally:
        for hold in released:
            _log_cancelled(hold.reservation_id, hold.customer_name, hold.room_name, hold.starts_at)
    return released


def _release_one_by_one(cause: str, now: datetime | None) -> list["ExpiredHold"]:
    from apps.reservations import services
    from apps.reservations.models import Reservation

    released = []
    due = list(
        Reservation.objects.due_for_expiry(now or timezone.now())
        .order_by("expires_at")
        .values_list("pk", flat=True)
    )
    for reservation_id in due:
        try:
            result = services.reservation_expire(
                reservation_id=reservation_id, now=now, cause=cause
            )
        except Exception:
            logger.exception("Failed to cancel expired reservation %s", reservation_id)
            continue
        if (reservation := result.reservation) is not None and result.expired:
            released.append(
                services.ExpiredHold(
                    reservation.pk,
                    reservation.customer_name,
                    reservation.time_slot.room.name,
                    reservation.time_slot.starts_at,
                    reservation.expires_at,
                )
            )
    return released


def expire_reservation(reservation_id: int, coalesced: Sequence[int] = ()) -> None:
    """
    Job: expire a reservation when its hold ends (``expire_reservation:<pk>``).

    Takes the primary key only, so the stored job always unpickles. Releases
    every hold that is due, not only its own (issue 7): in a burst of holds
    ending together the first job frees every slot, and ``ExpiryJobStore``
    folds the burst's other due jobs into this run. ``coalesced`` lists their
    reservations; the store passes it in memory (stored only with a retry).
    A reservation of these whose hold moved later without its job gets a job
    at its new ``expires_at``; paid, cancelled and deleted ones need nothing.
    Never raises: a failure (the database unreachable, say) is logged with its
    traceback and the job, with every reservation folded into it, is tried
    again ``JOB_RETRY_SECONDS`` later; the sweep remains the safety net.
    """
    from apps.reservations.models import Reservation, ReservationEvent

    _close_old_connections()
    try:
        released = {hold.reservation_id for hold in _release_due(ReservationEvent.Cause.EXPIRY_JOB)}
        watched = [pk for pk in (reservation_id, *coalesced) if pk not in released]
        for start in range(0, len(watched), 1000):
            still_held = Reservation.objects.filter(
                pk__in=watched[start : start + 1000], status=Reservation.Status.PENDING
            )
            for reservation in still_held:
                schedule_reservation_expiry(reservation)
        if reservation_id not in released:
            logger.debug("Reservation %s needed no expiry by its job", reservation_id)
    except Exception:
        logger.exception(JOB_FAILED_LOG, reservation_id, JOB_RETRY_SECONDS)
        _retry_later(reservation_id, coalesced)
    finally:
        _close_old_connections()


def _retry_later(reservation_id: int, coalesced: Sequence[int]) -> None:
    # The folded jobs' rows are gone: without this, their holds would wait for
    # the sweep (SCHEDULER_SWEEP_SECONDS) after one failed run.
    try:
        retry_at = timezone.now() + timedelta(seconds=JOB_RETRY_SECONDS)
        _add_expiry_job(reservation_id, retry_at, coalesced=coalesced)
    except Exception:
        logger.exception("Could not schedule the retry of reservation %s's job", reservation_id)


def cancel_expired_reservations(now: datetime | None = None) -> int:
    """
    Sweep: expire every pending reservation whose hold lapsed by ``now``.

    The safety net behind the per-reservation jobs (the seed's function, now
    run every ``SCHEDULER_SWEEP_SECONDS``). Returns how many it cancelled.
    Expires in batches of ``EXPIRE_BATCH_SIZE`` (one transaction each); a
    batch that fails is retried one reservation at a time, and one that fails
    then is logged and skipped. A database error while listing them is logged
    and the sweep returns 0. Never raises. Without ``now``, each batch is
    expired at the moment it is released, so the lateness recorded is the real
    one.
    """
    from apps.reservations.models import ReservationEvent

    _close_old_connections()
    try:
        released = _release_due(ReservationEvent.Cause.SWEEP, now)
    except Exception:
        logger.exception("Sweep could not list expired reservations; retrying at the next sweep")
        return 0
    finally:
        _close_old_connections()
    if released:
        logger.info(SWEEP_SUMMARY_LOG, len(released))
    else:  # the expiry jobs got there first
        logger.debug(SWEEP_NONE_LOG)
    return len(released)


def sweep() -> int:
    """
    Job ``cancel_expired_reservations``: run the sweep, then record a heartbeat.

    The heartbeat (``apps.operations``) tells ``scheduler_status`` and
    ``/healthz`` that a runner is alive and what its last sweep did. Returns
    the number cancelled; never raises.
    """
    cancelled = cancel_expired_reservations()
    _record_heartbeat(sweep_cancelled=cancelled)
    return cancelled


def reconcile_at_start() -> None:
    """
    Job ``reconcile_expiry_jobs``, once at start: give every pending hold its job.

    Repairs what a lost or deleted job store leaves behind (pending
    reservations with no job, orphan and mistimed jobs) so that their expiry
    is prompt again, rather than waiting for the sweep. Overdue holds are left
    to the sweep, which runs at start too. Never raises.
    """
    from apps.operations.services import expiry_jobs_reconcile

    _close_old_connections()
    try:
        report = expiry_jobs_reconcile(fix=True, include_overdue=False)
        if report.drift:
            counts = Counter(item.kind.value for item in report.drift)
            logger.warning(
                "Repaired drift between reservations and the job store at start: %s",
                ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items())),
            )
    except Exception:
        logger.exception("Could not reconcile the job store at start; run reconcile_expiry_jobs")
    finally:
        _close_old_connections()


def _record_heartbeat(**fields: Any) -> None:
    from apps.operations.services import heartbeat_record

    _close_old_connections()
    try:
        heartbeat_record(**fields)
    except Exception:
        logger.exception("Could not record the scheduler heartbeat")
    finally:
        _close_old_connections()


# ---------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------


class _Scheduler(BackgroundScheduler):
    """APScheduler's BackgroundScheduler with three failure modes of 3.11 closed."""

    def _process_jobs(self) -> float | None:
        # 1. After shutdown() stopped the executors, 3.11 makes one more pass:
        #    a due date job then fails to submit and a due interval job (the
        #    sweep) is pushed back one period without running. A stopped
        #    scheduler has no business touching the store.
        if self.state == STATE_STOPPED:
            return None
        # 2. An exception escaping a pass ends the scheduler's thread for good,
        #    silently: the process lives on and nothing runs again, the sweep
        #    included. It happens when another process removes a due job between
        #    this pass reading it and deleting it (JobLookupError), or when the
        #    store is locked or down. Log it and try again.
        try:
            return super()._process_jobs()
        except JobLookupError as exc:
            logger.info("A due job was removed by another process while it ran: %s", exc)
            return 0
        except Exception:
            logger.exception("Scheduler pass failed; retrying in %ss", self.jobstore_retry_interval)
            return self.jobstore_retry_interval

    def shutdown(self, wait: bool = True) -> None:
        # 3. shutdown(wait=True) joins the executor's threads while holding the
        #    job store lock; a running job that writes to the store (an expiry
        #    removes its job after commit) then waits for that lock forever.
        #    Stop submitting, let running jobs finish outside the lock, then
        #    shut down.
        if wait and self.state == STATE_RUNNING:
            self.pause()
            with self._executors_lock:
                executors = list(self._executors.values())
            for executor in executors:
                executor.shutdown(wait=True)
        super().shutdown(wait=False)


class ExpiryJobStore(SQLAlchemyJobStore):
    """
    APScheduler's SQLAlchemy job store, folding due expiry jobs into one run.

    Every expiry job releases every hold that is due (``expire_reservation``),
    so when several are due at one pass, running one is enough. This store
    hands the scheduler the earliest of them and deletes the others' rows in
    one statement per thousand, passing their reservation ids to the one it
    hands over (``coalesced``, in memory only). 10,000 holds ending in the same
    second then cost one job run and ten DELETEs, instead of 10,000 rounds of
    unpickle, submit, run and delete (about 700 a second on 2 cores;
    measured on this machine kind). Deleting a due job's row before its work is done
    is what APScheduler does with every date job (at most once); the sweep
    covers a crash in between. Other jobs (the sweep, the reconcile) are
    returned unchanged.

    A SQLite store commits with ``synchronous=NORMAL`` (it is in WAL mode, see
    ``_prepare_jobstore``), as the main database does: with the default, every
    job write waited for an fsync, which cost the reserve path about 4 ms a
    request on this machine kind (issue 7's benchmark). A power cut may then
    lose the last job writes, never a reservation's state; the reconcile at
    start restores the jobs and the sweep covers the meantime.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_synchronous_normal)

    def get_due_jobs(self, now: datetime) -> list[Job]:
        table = self.jobs_t
        due = table.c.next_run_time <= datetime_to_utc_timestamp(now)
        expiry = table.c.id.startswith(EXPIRY_JOB_PREFIX)
        with self.engine.begin() as db:
            due_ids = list(
                db.execute(
                    select(table.c.id).where(due, expiry).order_by(table.c.next_run_time)
                ).scalars()
            )
        # The job handed over must itself be due: another process may have
        # moved or removed it since the ids were read (a hold extended or paid
        # at its last moment). Only then are the others folded into it.
        first: list[Job] = []
        while len(due_ids) >= 2 and not first:
            first = self._get_jobs(due, table.c.id == due_ids.pop(0))
        if not first:
            return super().get_due_jobs(now)
        others = due_ids
        with self.engine.begin() as db:
            for start in range(0, len(others), 1000):
                # Only rows still due: one moved meanwhile keeps its job.
                db.execute(table.delete().where(due, table.c.id.in_(others[start : start + 1000])))
        for job in first:
            job._modify(kwargs={"coalesced": _reservation_ids(others)})
        jobs = first + self._get_jobs(due, ~expiry)
        return sorted(jobs, key=lambda job: job.next_run_time)


def _sqlite_synchronous_normal(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _reservation_ids(job_ids: list[str]) -> list[int]:
    suffixes = (job_id.removeprefix(EXPIRY_JOB_PREFIX) for job_id in job_ids)
    return [int(suffix) for suffix in suffixes if suffix.isdigit()]


_lock = threading.RLock()
_scheduler: _Scheduler | None = None
_poller: tuple[threading.Thread, threading.Event] | None = None


def _prepare_jobstore(options: dict[str, Any]) -> dict[str, Any]:
    """
    Check a pooled connection before use (a database restart leaves dead ones);
    give a SQLite job store its folder, WAL journal and a short busy timeout.
    """
    options = dict(options)
    url = options.get("url")
    if options.get("type") != "sqlalchemy" or not url:
        return options
    del options["type"]
    options["class"] = ExpiryJobStore
    engine_options = dict(options.get("engine_options") or {})
    engine_options.setdefault("pool_pre_ping", True)
    options["engine_options"] = engine_options
    if not str(url).startswith("sqlite"):
        return options
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        import sqlite3

        # WAL persists in the file: set it once. Switching needs the file to
        # itself, so a busy store (another process starting) keeps its mode.
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                except sqlite3.OperationalError:
                    logger.warning("Could not switch the job store %s to WAL yet", database)
    # Short: a job write happens after a customer's commit, inside the
    # request; a store locked for longer is an error, logged, and the sweep
    # or the next reconcile makes up for the missing job.
    engine_options.setdefault("connect_args", {}).setdefault("timeout", JOB_STORE_BUSY_TIMEOUT)
    return options


def _build_scheduler(config: dict[str, Any]) -> _Scheduler:
    # APScheduler pops keys from the dicts it is given: build from a deep copy
    # so that settings.SCHEDULER_CONFIG serves the next scheduler too.
    config = copy.deepcopy(config)
    config = {
        key: _prepare_jobstore(value) if key.startswith("apscheduler.jobstores.") else value
        for key, value in config.items()
    }
    return _Scheduler(gconfig=config)


def get_scheduler() -> BackgroundScheduler:
    """
    Return this process's scheduler, built from ``settings.SCHEDULER_CONFIG``.

    The same instance every call until ``stop_scheduler`` discards it. Building
    it starts nothing.
    """
    global _scheduler
    with _lock:
        if _scheduler is None:
            _scheduler = _build_scheduler(settings.SCHEDULER_CONFIG)
        return _scheduler


def _writable_scheduler() -> BackgroundScheduler:
    # A never-started scheduler keeps add_job in memory and cannot remove a
    # stored job; a paused one writes to the store and runs nothing.
    scheduler = get_scheduler()
    with _lock:
        if scheduler.state == STATE_STOPPED:
            scheduler.start(paused=True)
    return scheduler


def schedule_reservation_expiry(reservation: "Reservation") -> bool:
    """
    Add or move the expiry job of ``reservation`` to its ``expires_at``.

    Writes ``expire_reservation:<pk>`` (a ``DateTrigger``, ``misfire_grace_time=None``
    and ``coalesce=True``, so a job missed while no scheduler ran still runs at
    the next start) to the persistent store before returning, from any
    process. Call after the reservation's transaction committed. Returns
    whether the store has the job. Never raises: a store failure is logged, and
    the sweep expires the hold instead. Writes nothing when the benchmarks
    turned ``SCHEDULER_EXPIRY_JOBS`` off.
    """
    if not settings.SCHEDULER_EXPIRY_JOBS:
        return False
    for attempt in (1, 2):
        try:
            _add_expiry_job(reservation.pk, reservation.expires_at)
            # The runner looks at the store at least every NOTIFY_HORIZON_SECONDS:
            # wake it only for a job due before then (a short hold, a hold moved
            # to now), and spare the usual 30-minute hold the round trip.
            due_in = (reservation.expires_at - timezone.now()).total_seconds()
            if due_in <= NOTIFY_HORIZON_SECONDS:
                _notify_runner()
            return True
        except (ConflictingIdError, JobLookupError):
            # replace_existing is an insert, then an update: the runner
            # deleting the old job in between (it just fell due) makes either
            # step fail. Once more finds the store settled.
            if attempt == 2:
                logger.exception(JOB_NOT_SCHEDULED_LOG, reservation.pk)
        except Exception:
            logger.exception(JOB_NOT_SCHEDULED_LOG, reservation.pk)
            break
    return False


def _add_expiry_job(reservation_id: int, run_date: datetime, coalesced: Sequence[int] = ()) -> None:
    # The one shape of an expiry job: misfire_grace_time=None and coalesce, so a
    # job missed while no scheduler ran still runs, once, at the next start.
    _writable_scheduler().add_job(
        EXPIRY_JOB_FUNC,
        trigger=DateTrigger(run_date=run_date),
        args=[reservation_id],
        kwargs={"coalesced": list(coalesced)} if coalesced else {},
        id=expiry_job_id(reservation_id),
        name=f"Expire reservation {reservation_id}",
        replace_existing=True,
        misfire_grace_time=None,
        coalesce=True,
        max_instances=1,
    )


def unschedule_reservation_expiry(reservation_id: int) -> bool:
    """
    Remove the expiry job of a reservation; a missing job is no error.

    Returns whether the store is now without the job. Never raises: a store
    failure is logged, and the orphan job, when it runs, finds the reservation
    no longer pending and does nothing.
    """
    try:
        _writable_scheduler().remove_job(expiry_job_id(reservation_id))
    except JobLookupError:
        pass
    except Exception:
        logger.exception("Could not remove the expiry job of reservation %s", reservation_id)
        return False
    return True


def unschedule_reservation_expiries(reservation_ids: Sequence[int]) -> bool:
    """
    Remove the expiry jobs of many reservations, one DELETE per thousand.

    For the bulk services, which send no ``post_save``. Jobs already due are
    left to the runner, which may have handed them to its executor and is
    about to delete them itself (a delete here would make that fail); they
    find nothing to expire, and ``ExpiryJobStore`` folds them into one run.
    Missing jobs are no error. Returns whether the store is now without the
    jobs that were not due. Never raises: a store failure is logged, and an
    orphan job finds its reservation no longer pending and does nothing.
    """
    job_ids = [expiry_job_id(pk) for pk in reservation_ids]
    try:
        store = _job_store()
        table = store.jobs_t
        not_due = table.c.next_run_time > time.time()
        with store.engine.begin() as db:
            for start in range(0, len(job_ids), 1000):
                db.execute(
                    table.delete().where(not_due, table.c.id.in_(job_ids[start : start + 1000]))
                )
    except Exception:
        logger.exception("Could not remove the expiry jobs of %d reservations", len(job_ids))
        return False
    return True


def _notify_runner() -> None:
    """On PostgreSQL, wake the runner (LISTENing in any process) after a job write."""
    try:
        store = _job_store()
        if store.engine.dialect.name == "postgresql":
            with store.engine.begin() as db:
                db.exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}")
    except Exception:
        logger.warning("Could not notify the runner of a new job; it polls", exc_info=True)


def _job_store() -> SQLAlchemyJobStore:
    # The default SQLAlchemyJobStore of this process's (started) scheduler.
    # BaseScheduler has no public accessor; _lookup_jobstore is stable in 3.x.
    return _writable_scheduler()._lookup_jobstore("default")


class JobStoreMissing(RuntimeError):
    """The SQLite job store's file does not exist (read paths never create it)."""


def _require_sqlite_store_file() -> None:
    config: dict[str, Any] = settings.SCHEDULER_CONFIG
    url = config.get("apscheduler.jobstores.default", {}).get("url", "")
    if not str(url).startswith("sqlite"):
        return
    database = make_url(url).database
    if database and database != ":memory:" and not Path(database).exists():
        raise JobStoreMissing(f"no job store at {database}")


def stored_expiry_jobs(*, missing_ok: bool = False) -> dict[int, datetime | None]:
    """
    Read every expiry job in the store: reservation id -> run time (aware UTC).

    Reads ids and run times only (no unpickling, unlike ``get_jobs()``), for
    reconcile and status. A SQLite store whose file does not exist is not
    created: it reads as empty with ``missing_ok``, else ``JobStoreMissing``
    is raised. Raises what SQLAlchemy raises when the store is unreachable.
    """
    try:
        _require_sqlite_store_file()
    except JobStoreMissing:
        if missing_ok:
            return {}
        raise
    store = _job_store()
    table = store.jobs_t
    query = select(table.c.id, table.c.next_run_time).where(
        table.c.id.startswith(EXPIRY_JOB_PREFIX)
    )
    with store.engine.begin() as db:
        rows = db.execute(query).all()
    jobs = {}
    for job_id, ts in rows:
        suffix = job_id.removeprefix(EXPIRY_JOB_PREFIX)
        if suffix.isdigit():
            jobs[int(suffix)] = None if ts is None else datetime.fromtimestamp(ts, UTC)
    return jobs


def job_store_next_run_time() -> datetime | None:
    """
    The earliest run time of any job in the store (one indexed query).

    Raises ``JobStoreMissing`` rather than create a missing SQLite store, and
    what SQLAlchemy raises when the store is unreachable.
    """
    _require_sqlite_store_file()
    return _job_store().get_next_run_time()


def _start_poller(scheduler: BackgroundScheduler, interval: float) -> None:
    global _poller
    if _poller is not None:
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval):
            scheduler.wakeup()

    thread = threading.Thread(target=poll, name="escape-rooms-scheduler-poll", daemon=True)
    thread.start()
    _poller = (thread, stop)


def _stop_poller() -> None:
    global _poller
    if _poller is not None:
        thread, stop = _poller
        stop.set()
        thread.join()
        _poller = None


def start_scheduler(
    blocking: bool = False, config: dict[str, Any] | None = None
) -> BackgroundScheduler:
    """
    Offer to run jobs in this process and return the scheduler.

    ``config`` replaces ``settings.SCHEDULER_CONFIG`` (the seed's
    ``apscheduler.*`` format) if this process's scheduler has not started yet.
    The scheduler starts paused and competes for the job store's runner lock
    (``escape_rooms_backend.runner``): as the runner it resumes, adds the
    sweep (every ``SCHEDULER_SWEEP_SECONDS``, first run now) and a one-off
    reconcile; as a standby it stays paused, still writing jobs, and takes
    over when the runner dies. With ``blocking=True`` (the dedicated worker)
    it returns only after SIGINT or SIGTERM, once the scheduler has shut down;
    call it from the main thread then. Raises what APScheduler raises when the
    job store cannot be opened, after logging it.
    """
    # Caught before the scheduler starts, and kept until it has shut down, so
    # that no signal kills the worker half-way through either.
    stop = _StopSignals() if blocking else None
    global _scheduler, _runner, _listener
    with _lock:
        if config is not None and (_scheduler is None or _scheduler.state == STATE_STOPPED):
            _scheduler = _build_scheduler(config)
        scheduler = get_scheduler()
        try:
            if scheduler.state == STATE_STOPPED:
                _start_paused(scheduler)
            url = _jobstore_url(scheduler)
            if _runner is None:
                _runner = Runner(
                    lock_for(url),
                    interval=settings.SCHEDULER_FAILOVER_SECONDS / 3,
                    on_runner=lambda: _become_runner(scheduler),
                    on_standby=lambda: _become_standby(scheduler),
                    on_tick=_tick_heartbeat,
                )
                _runner.start()
            if _listener is None and make_url(url).get_backend_name() == "postgresql":
                _listener = Listener(url, scheduler.wakeup)
                _listener.start()
        except Exception:
            logger.exception("Scheduler failed to start")
            if stop is not None:
                stop.restore()
            raise
        _start_poller(scheduler, min(settings.SCHEDULER_POLL_SECONDS, NOTIFY_HORIZON_SECONDS))
        role = "runner" if _runner.is_runner else "standby"
    if role == "standby":
        _record_heartbeat(started=True, role=role)
    logger.info(
        "Scheduler started as the %s: sweep every %ss, looking for new jobs every %ss",
        role,
        settings.SCHEDULER_SWEEP_SECONDS,
        settings.SCHEDULER_POLL_SECONDS,
    )
    if stop is not None:
        try:
            stop.wait()
            stop_scheduler(scheduler)
        finally:
            stop.restore()
    return scheduler


def _start_paused(scheduler: BackgroundScheduler, attempts: int = 5) -> None:
    # Several workers starting at once all create the store's table; on SQLite
    # one may find the file locked past the short busy timeout. Try again.
    for attempt in range(1, attempts + 1):
        try:
            scheduler.start(paused=True)
            return
        except Exception:
            if attempt == attempts or scheduler.state != STATE_STOPPED:
                raise
            logger.warning("Job store busy at start; trying again (%s/%s)", attempt, attempts)
            time.sleep(attempt * 0.5)


_runner: Runner | None = None
_listener: Listener | None = None


def _jobstore_url(scheduler: BackgroundScheduler) -> str:
    store = scheduler._lookup_jobstore("default")  # see _job_store()
    return store.engine.url.render_as_string(hide_password=False)


def _become_runner(scheduler: BackgroundScheduler) -> None:
    """This process took the runner lock: run the jobs, sweep now, reconcile once."""
    now = timezone.now()
    scheduler.add_job(
        SWEEP_JOB_FUNC,
        trigger="interval",
        seconds=settings.SCHEDULER_SWEEP_SECONDS,
        id=SWEEP_JOB_ID,
        name="Sweep expired reservations",
        replace_existing=True,
        next_run_time=now,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
    scheduler.add_job(
        RECONCILE_JOB_FUNC,
        trigger=DateTrigger(run_date=now),
        id=RECONCILE_JOB_ID,
        name="Reconcile expiry jobs at start",
        replace_existing=True,
        misfire_grace_time=None,
    )
    scheduler.resume()
    _record_heartbeat(started=True, role="runner")
    logger.info("This process is the runner: it runs the expiry jobs")


_last_tick_beat = 0.0


def _tick_heartbeat(is_runner: bool) -> None:
    # Beat from the lock checks too, not only from the sweep: at most every
    # minute, and at least every half sweep interval, so that a dead runner
    # and a live standby both show within minutes.
    global _last_tick_beat
    every = min(60.0, settings.SCHEDULER_SWEEP_SECONDS / 2)
    if time.monotonic() - _last_tick_beat >= every:
        _last_tick_beat = time.monotonic()
        _record_heartbeat(role="runner" if is_runner else "standby")


def _become_standby(scheduler: BackgroundScheduler) -> None:
    scheduler.pause()
    _record_heartbeat(role="standby")


class _StopSignals:
    """SIGINT and SIGTERM set an event instead of killing the process; restore() undoes it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.event.is_set():
            logger.info("Received %s again; still stopping", name)
        else:
            logger.info("Received %s, stopping the scheduler", name)
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(1.0):
            pass

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def stop_scheduler(scheduler: BackgroundScheduler | None = None) -> None:
    """
    Shut ``scheduler`` (default: this process's) down, waiting for running jobs.

    Idempotent. Afterwards ``get_scheduler`` builds a fresh scheduler from the
    settings. Jobs due but not yet run stay in the store for the next start.
    """
    global _scheduler, _runner, _listener
    runner = None
    with _lock:
        scheduler = scheduler or _scheduler
        if scheduler is None:
            return
        if scheduler is _scheduler:
            _stop_poller()
            _scheduler = None
            runner, _runner = _runner, None
            if _listener is not None:
                _listener.stop()
                _listener = None
    if runner is not None:
        runner.stop_checking()
    # Outside the lock: a running job may itself write a job (and take the lock)
    # while shutdown() waits for it to finish.
    was_running = scheduler.state == STATE_RUNNING
    try:
        scheduler.shutdown(wait=True)
    except SchedulerNotRunningError:
        return  # already stopped, or another thread stopped it first
    finally:
        if runner is not None:
            runner.lock.release()  # after the running jobs finished: a standby takes over
    if was_running or runner is not None:
        _record_heartbeat(stopped=True)
        logger.info("Scheduler stopped")
