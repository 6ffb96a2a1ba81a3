"""
Every reservation's deadlines as jobs in the persistent job store.

For each registered kind (``escape_rooms_backend.deadlines``) a reservation
that needs the deadline has one ``DateTrigger`` job, ``<prefix><pk>``, at the
time the kind gives; any other has none:

- ``deadlines_keep_in_step`` receives the reservations' domain signal and,
  after commit, adds, moves and removes their jobs (``deadlines_sync``);
- ``run_deadline`` is the job: it calls the kind's ``handle`` and tries again
  shortly what failed or found its rows busy;
- ``deadlines_sweep`` handles every overdue deadline of every kind, whatever
  its job did; ``deadlines_reconcile`` compares what each kind needs with the
  store and repairs drift.

Nothing here is needed for correctness: each kind's state is data that every
read compares against the clock. The jobs make deadlines prompt.

Imports no app; importing this module loads no APScheduler (the store is
reached through ``lifecycle`` on first use), so that the apps can wire the
receiver at start for free.
"""

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import deadlines
from .db import job_connection
from .deadlines import DeadlineKind

if TYPE_CHECKING:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

logger = logging.getLogger("escape_rooms_backend.scheduler")

# Stored jobs name their function by import path: a public API.
JOB_FUNC = "escape_rooms_backend.timeline:run_deadline"
# What handled a deadline, passed to the kind's handle and sweep.
BY_JOB = "job"
BY_SWEEP = "sweep"
BY_RECONCILE = "reconcile"
# A deadline that failed or found its rows busy is tried again after 0.5 s,
# then twice as long each time, up to this many seconds.
JOB_RETRY_SECONDS = 10.0
JOB_NOT_SCHEDULED_LOG = (
    "Could not schedule the %s job of reservation %s: the sweep handles it once it falls due, "
    "and the next start's reconcile restores the job"
)
JOB_FAILED_LOG = "Failed to handle the %s deadline of reservation %s; trying again in %ss"
JOB_BUSY_LOG = "The %s deadline of %d reservations found their rows busy; trying again in %ss"


def _store() -> "SQLAlchemyJobStore":
    from .lifecycle import process

    return process.job_store()


# ---------------------------------------------------------------------------
# Keeping jobs in step with reservations
# ---------------------------------------------------------------------------


def deadlines_keep_in_step(sender: Any, reservations: Sequence[Any], **kwargs: Any) -> None:
    """
    Receiver of the reservations' domain signal: keep their jobs in step with their commit.

    Where the job store is a table of Django's own PostgreSQL database, the
    jobs are written in the reservations' transaction: they commit, or roll
    back, with it. Elsewhere (a SQLite store is a file of its own) they are
    written right after commit (``deadlines_sync``): a write before the commit
    would leave an orphan job behind a rolled-back transaction.
    """
    if not settings.SCHEDULER_EXPIRY_JOBS:
        return
    changed = list(reservations)
    if _in_transaction() and deadlines_write(*_needs(changed), in_transaction=True):
        return
    transaction.on_commit(lambda: deadlines_sync(changed))


def deadline_in_step(kind: DeadlineKind, key: int, at: datetime) -> None:
    """
    Add or move the ``kind`` job of ``key`` to ``at`` with the current transaction's commit.

    In the transaction where the job store shares Django's database, as
    ``deadlines_keep_in_step`` does; otherwise right after commit. For kinds
    keyed by something else than a reservation (a message).
    """
    wanted = [(kind, key, at)]
    if _in_transaction() and deadlines_write(wanted, [], in_transaction=True):
        return
    transaction.on_commit(lambda: deadlines_write(wanted, []))


def deadlines_sync(reservations: Sequence[Any]) -> None:
    """
    Give each reservation exactly the jobs its state needs, at the times they fall due.

    For every registered kind keyed by reservation, adds or moves the job of
    each reservation for which ``due_at`` gives a time, and removes it for
    the others that are not due yet, all in one transaction of the store.
    Call after the reservations' transaction committed. Never raises: a
    store failure is logged, and the sweep and the next reconcile make up
    for it. Writes nothing when ``SCHEDULER_EXPIRY_JOBS`` is off (the
    benchmarks' switch).
    """
    if not settings.SCHEDULER_EXPIRY_JOBS:
        return
    deadlines_write(*_needs(reservations))


Needed = tuple[DeadlineKind, int, datetime]


def _needs(reservations: Sequence[Any]) -> tuple[list[Needed], list[tuple[DeadlineKind, int]]]:
    """The jobs ``reservations`` need, ``(kind, pk, at)``, and those they must not have."""
    wanted: list[Needed] = []
    unneeded: list[tuple[DeadlineKind, int]] = []
    for kind in deadlines.kinds():
        if kind.due_at is None:
            continue  # keyed by something else: its app schedules its jobs
        for reservation in reservations:
            at = kind.due_at(reservation)
            if at is not None:
                wanted.append((kind, reservation.pk, at))
            elif kind.never_due is None or not kind.never_due(reservation):
                unneeded.append((kind, reservation.pk))
    return wanted, unneeded


def _in_transaction() -> bool:
    from django.db import connection

    return connection.in_atomic_block


def deadlines_write(
    wanted: Sequence[Needed],
    unneeded: Sequence[tuple[DeadlineKind, int]],
    *,
    in_transaction: bool = False,
) -> bool:
    """
    Add or move the jobs ``wanted`` and remove the ``unneeded`` ones not yet due, in one go.

    With ``in_transaction``, only where the job store is a table of Django's
    PostgreSQL database: the rows are written by the current transaction,
    inside a savepoint, and the runner is notified at its commit; returns
    ``False`` (having written nothing) where the store is elsewhere or the
    write failed, for the caller to write after commit instead. Otherwise the
    store's own transaction writes them now (one job at a time where the
    store's dialect has no upsert). Returns whether the store has the jobs;
    never raises: a failure is logged, and the sweep and the next reconcile
    make up for it.
    """
    from .jobstore import can_upsert, job_row, shares_database, write_rows
    from .lifecycle import NOTIFY_HORIZON_SECONDS, outside_pool, process

    if not wanted and not unneeded:
        return True
    if in_transaction:
        from django.db import connection

        # Decided before anything can start the scheduler, which would then
        # do so inside the caller's transaction, with its locks held.
        store_options = settings.SCHEDULER_CONFIG["apscheduler.jobstores.default"]
        configured = cast(dict[str, Any], store_options).get("url", "")
        if not shares_database(configured, connection.settings_dict):
            return False
    try:
        store = process.job_store()
        for executor in {kind.executor for kind, _, _ in wanted} - {deadlines.DEFAULT_EXECUTOR}:
            outside_pool(process.writable(), executor)  # a kind registered since it started
        rows = [
            job_row(_job_state(kind, key, at), store.pickle_protocol) for kind, key, at in wanted
        ]
    except Exception:
        logger.exception(JOB_NOT_SCHEDULED_LOG, _kinds(wanted), _keys(wanted))
        return False
    removed = [kind.job_id(key) for kind, key in unneeded]
    soon = [at for _, _, at in wanted]
    soon = [at for at in soon if (at - timezone.now()).total_seconds() <= NOTIFY_HORIZON_SECONDS]
    if in_transaction:
        from django.db import DatabaseError

        if store.jobs_t.schema or not shares_database(store.engine.url, connection.settings_dict):
            return False  # this process's store is another one than the settings name
        try:
            with transaction.atomic():
                _write_rows_here(store, rows, removed, notify=bool(soon))
        except DatabaseError:
            logger.warning(
                "Could not write %d jobs with their transaction; writing them after commit",
                len(rows) + len(removed),
                exc_info=True,
            )
            return False
        if soon:
            transaction.on_commit(lambda: _wake_this_runner(min(soon)))
        return True
    if not can_upsert(store):
        for kind, key, at in wanted:
            deadline_schedule(kind, key, at)
        return all(deadline_unschedule(kind, key) for kind, key in unneeded)
    try:
        write_rows(store, rows, removed, time.time())
    except Exception:
        logger.exception(JOB_NOT_SCHEDULED_LOG, _kinds(wanted), _keys(wanted))
        return False
    if soon:
        _wake_this_runner(min(soon))
        process.notify_runner()
    return True


def _kinds(wanted: Sequence[Needed]) -> str:
    return ", ".join(sorted({kind.name for kind, _, _ in wanted})) or "no"


def _keys(wanted: Sequence[Needed]) -> str:
    keys = sorted({key for _, key, _ in wanted})
    more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
    return ", ".join(map(str, keys[:10])) + more


# Per kind, the state of one job as deadline_schedule adds it: validated by
# APScheduler's Job once, then copied for each job (its checks cost more
# than the write).
_JOB_TEMPLATES: dict[tuple[str, str, str], dict[str, Any]] = {}


def _job_state(kind: DeadlineKind, key: int, at: datetime) -> dict[str, Any]:
    """``Job.__getstate__`` of the ``kind`` job of ``key`` at ``at``, as ``deadline_schedule``."""
    from apscheduler.job import Job
    from apscheduler.triggers.date import DateTrigger

    from .lifecycle import process

    key_of_kind = (kind.name, kind.job_prefix, kind.executor)
    template = _JOB_TEMPLATES.get(key_of_kind)
    if template is None:
        template = _JOB_TEMPLATES[key_of_kind] = Job(
            process.get(),
            id=kind.job_id(key),
            func=JOB_FUNC,
            trigger=DateTrigger(run_date=at),
            args=[kind.name, key],
            kwargs={},
            executor=kind.executor,
            misfire_grace_time=None,
            coalesce=True,
            max_instances=2,  # see deadline_schedule
            next_run_time=at,
        ).__getstate__()
    return {
        **template,
        "id": kind.job_id(key),
        "name": f"{kind.name} of reservation {key}",
        "args": (kind.name, key),
        "trigger": DateTrigger(run_date=at),
        "next_run_time": at,
    }


def _write_rows_here(
    store: "SQLAlchemyJobStore", rows: list[dict[str, Any]], removed: list[str], *, notify: bool
) -> None:
    """``jobstore.write_rows`` through Django's connection, in its transaction; NOTIFY at commit."""
    from django.db import connection

    from .db import chunks
    from .runner import NOTIFY_CHANNEL

    table = store.jobs_t
    name = connection.ops.quote_name(table.name)
    if table.schema:
        name = f"{connection.ops.quote_name(table.schema)}.{name}"
    with connection.cursor() as cursor:
        for chunk in chunks(rows):
            cursor.execute(
                f"INSERT INTO {name} (id, next_run_time, job_state) VALUES "  # noqa: S608
                + ", ".join(["(%s, %s, %s)"] * len(chunk))
                + " ON CONFLICT (id) DO UPDATE SET next_run_time = EXCLUDED.next_run_time,"
                " job_state = EXCLUDED.job_state",
                [row[column] for row in chunk for column in ("id", "next_run_time", "job_state")],
            )
        if removed:
            cursor.execute(
                f"DELETE FROM {name} WHERE id = ANY(%s) AND next_run_time > %s",  # noqa: S608
                [removed, time.time()],
            )
        if notify:  # delivered at commit, not before
            cursor.execute(f"NOTIFY {NOTIFY_CHANNEL}")


def _wake_this_runner(at: datetime) -> None:
    """Wake this process's scheduler, if it runs jobs, for a job it would otherwise see late."""
    from .lifecycle import process

    scheduler = process.scheduler
    if scheduler is not None:
        scheduler.wakeup_for(at)


def deadline_schedule(
    kind: DeadlineKind,
    reservation_id: int,
    at: datetime,
    *,
    coalesced: Sequence[int] = (),
    attempt: int = 0,
) -> bool:
    """
    Add or move the ``kind`` job of a reservation to ``at`` (aware).

    The job is a ``DateTrigger`` with ``misfire_grace_time=None`` and
    ``coalesce``, so that a job missed while no scheduler ran still runs,
    once, at the next start. ``coalesced`` and ``attempt`` are for the job's
    own retries. Writes to the persistent store before returning, from any
    process. Returns whether the store has the job. Never raises: a store
    failure is logged.
    """
    from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
    from apscheduler.triggers.date import DateTrigger

    from .lifecycle import NOTIFY_HORIZON_SECONDS, outside_pool, process

    kwargs: dict[str, Any] = {}
    if coalesced:
        kwargs["coalesced"] = list(coalesced)
    if attempt:
        kwargs["attempt"] = attempt
    for retry in (False, True):
        try:
            scheduler = process.writable()
            if kind.executor != deadlines.DEFAULT_EXECUTOR:
                outside_pool(scheduler, kind.executor)  # a kind registered since it started
            scheduler.add_job(
                JOB_FUNC,
                trigger=DateTrigger(run_date=at),
                args=[kind.name, reservation_id],
                kwargs=kwargs,
                id=kind.job_id(reservation_id),
                name=f"{kind.name} of reservation {reservation_id}",
                replace_existing=True,
                executor=kind.executor,
                misfire_grace_time=None,
                coalesce=True,
                # Two: a job that stores its own retry may see it fall due
                # before it has returned; with one, APScheduler would skip the
                # retry and delete it. Every kind's handle is idempotent.
                max_instances=2,
            )
        except (ConflictingIdError, JobLookupError):
            # replace_existing is an insert, then an update: the runner
            # deleting the old job in between (it just fell due) makes either
            # step fail. Once more finds the store settled.
            if retry:
                logger.exception(JOB_NOT_SCHEDULED_LOG, kind.name, reservation_id)
            continue
        except Exception:
            logger.exception(JOB_NOT_SCHEDULED_LOG, kind.name, reservation_id)
            return False
        # The runner looks at the store at least every NOTIFY_HORIZON_SECONDS:
        # wake it only for a job due before then, and spare the usual
        # 30-minute hold the round trip.
        if (at - timezone.now()).total_seconds() <= NOTIFY_HORIZON_SECONDS:
            process.notify_runner()
        return True
    return False


def deadline_unschedule(kind: DeadlineKind, reservation_id: int) -> bool:
    """
    Remove the ``kind`` job of a reservation; a missing job is no error.

    Returns whether the store is now without the job. Never raises: a store
    failure is logged, and the orphan job, when it runs, finds nothing to do.
    """
    from apscheduler.jobstores.base import JobLookupError

    from .lifecycle import process

    try:
        process.writable().remove_job(kind.job_id(reservation_id))
    except JobLookupError:
        pass
    except Exception:
        logger.exception("Could not remove the %s job of reservation %s", kind.name, reservation_id)
        return False
    return True


def deadlines_unschedule(kind: DeadlineKind, reservation_ids: Sequence[int]) -> bool:
    """
    Remove the ``kind`` jobs of many reservations that are not yet due, a statement per thousand.

    Due jobs are the runner's to delete (``jobstore.delete_not_due``); they
    find nothing to do. Returns whether the store is now without the jobs
    that were not due. Never raises: a store failure is logged.
    """
    from .jobstore import delete_not_due

    try:
        delete_not_due(_store(), [kind.job_id(pk) for pk in reservation_ids], time.time())
    except Exception:
        logger.exception(
            "Could not remove the %s jobs of %d reservations", kind.name, len(reservation_ids)
        )
        return False
    return True


# ---------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------


class _Urgent:
    """How many threads of this process are doing urgent deadline work, and a wait for none."""

    def __init__(self) -> None:
        self.count = 0
        self.none_left = threading.Condition()


_urgent = _Urgent()
# The longest that work yielding to urgent work waits at a time.
URGENT_WAIT_SECONDS = 5.0


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """
    Mark the work inside as urgent: this process's deferrable work waits for it.

    For work whose lateness customers see, such as freeing the slots of a
    thousand lapsed holds at once; work that can wait a moment (sending
    mail) calls ``wait_while_urgent`` between its steps, and so leaves the
    database and the interpreter to it. Nests, and may be entered by many
    threads at once.
    """
    with _urgent.none_left:
        _urgent.count += 1
    try:
        yield
    finally:
        with _urgent.none_left:
            _urgent.count -= 1
            if not _urgent.count:
                _urgent.none_left.notify_all()


def wait_while_urgent(timeout: float = URGENT_WAIT_SECONDS) -> None:
    """
    Wait, ``timeout`` seconds at most, while another thread of this process does urgent work.

    Call it outside any transaction, and never from inside urgent work
    (it would wait for itself).
    """
    if not _urgent.count:
        return
    with _urgent.none_left:
        _urgent.none_left.wait_for(lambda: not _urgent.count, timeout=timeout)


def process_stopping() -> bool:
    """
    Whether this process's scheduler is stopping: a long handle should return soon.

    What it leaves undone stays due for the next runner.
    """
    from .lifecycle import process

    return process.stopping.is_set()


def retry_delay(attempt: int) -> float:
    """Seconds before retry number ``attempt + 1`` of a deadline: 0.5, 1, 2, ... up to 10."""
    return min(JOB_RETRY_SECONDS, 0.5 * 2**attempt)


@job_connection
def run_deadline(
    kind: str, reservation_id: int, coalesced: Sequence[int] = (), attempt: int = 0
) -> None:
    """
    Job ``<prefix><pk>``: handle the ``kind`` deadline of a reservation that fell due.

    Takes primitives only, so the stored job always unpickles. ``coalesced``
    lists the reservations whose due jobs the store folded into this run (in
    memory, or stored with a retry). Never raises: when the kind's handle
    fails (the database unreachable, say) the traceback is logged and the job,
    with every reservation folded into it, is tried again after
    ``retry_delay(attempt)``; so are the reservations whose rows were busy.
    The sweep remains the safety net. A job that starts while the process
    stops leaves its deadline in the store, due, for the next runner.
    """
    from .lifecycle import process

    try:
        deadline = deadlines.kind_named(kind)
    except LookupError:
        logger.error("A job names the deadline kind %r, which no app registers", kind)
        return
    if process.stopping.is_set():
        # Handed over as the process stops: leave it in the store, due now,
        # for the next runner (a standby takes over at once), rather than
        # start on work that would hold the stop up.
        deadline_schedule(
            deadline, reservation_id, timezone.now(), coalesced=coalesced, attempt=attempt
        )
        return
    reservation_ids = [reservation_id, *coalesced]
    delay = retry_delay(attempt)
    try:
        busy = list(deadline.handle(reservation_ids, BY_JOB))
    except Exception:
        logger.exception(JOB_FAILED_LOG, deadline.name, reservation_id, delay)
        busy = reservation_ids
    else:
        if busy:
            logger.info(JOB_BUSY_LOG, deadline.name, len(busy), delay)
    if busy:
        retry_at = timezone.now() + timedelta(seconds=delay)
        deadline_schedule(deadline, busy[0], retry_at, coalesced=busy[1:], attempt=attempt + 1)


@job_connection
def deadlines_sweep(now: datetime | None = None) -> dict[str, int]:
    """
    Handle every deadline, of every kind, that fell due by ``now`` (default: the clock).

    Returns how many each kind handled, by name. Never raises: a kind whose
    sweep fails is logged and counted 0, and the other kinds are swept.
    """
    handled = {}
    for kind in deadlines.kinds():
        try:
            handled[kind.name] = kind.sweep(now, BY_SWEEP)
        except Exception:
            logger.exception(
                "Sweep of the %s deadlines failed; retrying at the next sweep", kind.name
            )
            handled[kind.name] = 0
    return handled


# ---------------------------------------------------------------------------
# Reading the store
# ---------------------------------------------------------------------------


def _store_url() -> str:
    config: dict[str, Any] = settings.SCHEDULER_CONFIG
    return str(config.get("apscheduler.jobstores.default", {}).get("url", ""))


def stored_jobs(kind: DeadlineKind, *, missing_ok: bool = False) -> dict[int, datetime | None]:
    """
    Read every ``kind`` job in the store: reservation id -> run time (aware UTC).

    Reads ids and run times only (no unpickling, unlike ``get_jobs()``). A
    SQLite store whose file does not exist is not created: it reads as empty
    with ``missing_ok``, else ``JobStoreMissing`` is raised. Raises what
    SQLAlchemy raises when the store is unreachable.
    """
    from .jobstore import JobStoreMissing, require_file, run_times

    try:
        require_file(_store_url())
    except JobStoreMissing:
        if missing_ok:
            return {}
        raise
    jobs = {}
    for job_id, run_time in run_times(_store(), kind.job_prefix).items():
        pk = kind.reservation_id(job_id)
        if pk is not None:
            jobs[pk] = run_time
    return jobs


def jobs_per_kind() -> dict[str, int]:
    """
    Every registered kind's name -> its jobs in the store, in one query (no unpickling).

    Raises ``JobStoreMissing`` rather than create a missing SQLite store, and
    what SQLAlchemy raises when the store is unreachable.
    """
    from .jobstore import job_counts, require_file

    require_file(_store_url())
    return job_counts(_store(), {kind.name: kind.job_prefix for kind in deadlines.kinds()})


def job_store_next_run_time() -> datetime | None:
    """
    The earliest run time of any job in the store, once the store is checked.

    Raises ``JobStoreMissing`` rather than create a missing SQLite store,
    ``JobStoreDamaged`` when SQLite's quick check finds a SQLite store's file
    damaged (it reads every page: milliseconds for thousands of jobs), and
    what SQLAlchemy raises when the store is unreachable.
    """
    from .jobstore import check, require_file

    require_file(_store_url())
    store = _store()
    check(store)
    return store.get_next_run_time()


# ---------------------------------------------------------------------------
# Reconcile
# ---------------------------------------------------------------------------


class DriftKind(enum.StrEnum):
    MISSING_JOB = "missing_job"  # needs the deadline, not yet due, no job
    ORPHAN_JOB = "orphan_job"  # a job whose reservation does not need it (or does not exist)
    WRONG_RUN_TIME = "wrong_run_time"  # a job whose run time is not the deadline's
    OVERDUE = "overdue"  # due more than OVERDUE_GRACE ago, not handled


@dataclass
class Drift:
    deadline: str  # the deadline kind's name
    kind: DriftKind
    reservation_id: int
    due_at: datetime | None = None
    run_time: datetime | None = None
    action: str = ""
    repaired: bool | None = None  # None: not attempted (report only)
    job_id: str = ""


@dataclass
class ReconcileReport:
    checked_at: datetime
    needed: dict[str, int]  # kind -> reservations needing that deadline
    jobs: dict[str, int]  # kind -> jobs of that kind in the store
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
# A deadline that fell due less than this long ago is its job's, not drift.
OVERDUE_GRACE = timedelta(seconds=10)


def deadlines_reconcile(
    *, fix: bool = False, include_overdue: bool = True, now: datetime | None = None
) -> ReconcileReport:
    """
    Compare what every kind needs with the jobs in the store; with ``fix``, repair.

    Drift, per kind: a reservation that needs the deadline with no job; a
    job that no reservation needs; a job whose run time is not the
    deadline's; a deadline more than ``OVERDUE_GRACE`` (10 s) past due (one
    that fell due just now is its job's). Repairs, in that order of safety:
    handle the overdue (cause ``reconcile``), remove the orphans, schedule
    the missing and move the mistimed. Every repair is idempotent, so
    running it beside a live scheduler is safe: a job that fires meanwhile
    finds its work done. ``include_overdue=False`` leaves overdue deadlines
    alone (the start-up reconcile, where the sweep handles them). Raises what
    SQLAlchemy raises when the job store is unreachable.
    """
    now = now or timezone.now()
    overdue_before = now - OVERDUE_GRACE
    drift: list[Drift] = []
    needed_counts: dict[str, int] = {}
    job_counts: dict[str, int] = {}
    for kind in deadlines.kinds():
        jobs = stored_jobs(kind, missing_ok=True)
        # Primary key -> due time, not model instances: the runner reconciles
        # at every start, and 100,000 pending holds as instances cost 70 MiB.
        needed = dict(kind.scheduled())
        needed_counts[kind.name] = len(needed)
        job_counts[kind.name] = len(jobs)
        for pk, due_at in sorted(needed.items()):
            run_time = jobs.get(pk)
            item = None
            if due_at <= now:
                if include_overdue and due_at <= overdue_before:
                    item = Drift(kind.name, DriftKind.OVERDUE, pk, due_at, run_time)
            elif pk not in jobs:
                item = Drift(kind.name, DriftKind.MISSING_JOB, pk, due_at)
            elif run_time is None or abs(run_time - due_at) > RUN_TIME_TOLERANCE:
                item = Drift(kind.name, DriftKind.WRONG_RUN_TIME, pk, due_at, run_time)
            if item is not None:
                drift.append(item)
        for pk, run_time in sorted(jobs.items()):
            if pk not in needed:
                drift.append(Drift(kind.name, DriftKind.ORPHAN_JOB, pk, run_time=run_time))
    for item in drift:
        item.job_id = deadlines.kind_named(item.deadline).job_id(item.reservation_id)
    if fix:
        for item in drift:
            _repair(item)
    return ReconcileReport(now, needed_counts, job_counts, drift, fix)


def _repair(item: Drift) -> None:
    kind = deadlines.kind_named(item.deadline)
    if item.kind is DriftKind.OVERDUE:
        failed = False
        try:
            busy = item.reservation_id in kind.handle([item.reservation_id], BY_RECONCILE)
        except Exception:
            logger.exception(
                "Reconcile could not handle the %s deadline of reservation %s",
                kind.name,
                item.reservation_id,
            )
            busy = failed = True
        item.action = "handled" if not busy else "busy; left to its job and the sweep"
        # A deadline still due keeps its job, which the runner tries again.
        item.repaired = not busy and (
            item.run_time is None or deadline_unschedule(kind, item.reservation_id)
        )
        if busy and not failed:
            return  # not repaired, yet nothing failed: the log has nothing to add
    elif item.kind is DriftKind.ORPHAN_JOB:
        item.repaired = deadline_unschedule(kind, item.reservation_id)
        item.action = "removed the job"
    else:
        assert item.due_at is not None  # noqa: S101 (set for missing and mistimed jobs)
        item.repaired = deadline_schedule(kind, item.reservation_id, item.due_at)
        item.action = "scheduled the job at its due time"
    if not item.repaired:
        item.action += " (failed; see the log)"
