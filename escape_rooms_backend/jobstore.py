"""
The persistent job store: APScheduler's SQLAlchemy store, folding bursts.

Builds the store from the seed's ``apscheduler.jobstores.*`` options and
reads it directly (ids and run times, no unpickling) for the reconcile and
the status. Imports no app.
"""

import contextlib
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.util import datetime_to_utc_timestamp
from sqlalchemy import event, func, or_, select
from sqlalchemy.engine import make_url

from . import deadlines
from .db import chunks

logger = logging.getLogger("escape_rooms_backend.scheduler")

JOB_STORE_BUSY_TIMEOUT = 2  # seconds a SQLite job store write waits for a lock


class FoldingJobStore(SQLAlchemyJobStore):
    """
    APScheduler's SQLAlchemy job store, folding due jobs of a folding kind into one run.

    A kind whose ``handle`` does the work of every due deadline of the kind
    (``DeadlineKind.fold``, such as the hold's end) needs only one of its due
    jobs run. This store hands the scheduler the earliest of them and deletes
    the others' rows in one statement per thousand, passing their
    reservation ids to the one it hands over (``coalesced``, in memory only).
    10,000 holds ending in the same second then cost one job run and ten
    DELETEs, instead of 10,000 rounds of unpickle, submit, run and delete.
    Deleting a due job's row before its work is done is what APScheduler
    does with every date job (at most once); the sweep covers a crash in
    between. Other jobs are returned unchanged.

    A SQLite store commits with ``synchronous=NORMAL`` in WAL mode, as the
    main database does: with the default, every job write waits for an
    fsync on the reserve path. A power cut may then lose the last job
    writes, never a reservation's state; the reconcile at start restores
    the jobs and the sweep covers the meantime.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_synchronous_normal)

    def get_due_jobs(self, now: datetime) -> list[Job]:
        table = self.jobs_t
        due = table.c.next_run_time <= datetime_to_utc_timestamp(now)
        folding = [kind for kind in deadlines.kinds() if kind.fold]
        if not folding:
            return super().get_due_jobs(now)
        jobs: list[Job] = []
        for kind in folding:
            jobs += self._fold(kind, due, table.c.id.startswith(kind.job_prefix))
        folded = or_(*(table.c.id.startswith(kind.job_prefix) for kind in folding))
        jobs += self._get_jobs(due, ~folded)
        return sorted(jobs, key=lambda job: job.next_run_time)

    def _fold(self, kind: deadlines.DeadlineKind, due: Any, of_kind: Any) -> list[Job]:
        table = self.jobs_t
        with self.engine.begin() as db:
            due_ids = list(
                db.execute(
                    select(table.c.id).where(due, of_kind).order_by(table.c.next_run_time)
                ).scalars()
            )
        # The job handed over must itself be due: another process may have
        # moved or removed it since the ids were read (a hold extended or paid
        # at its last moment). Only then are the others folded into it.
        first: list[Job] = []
        while len(due_ids) >= 2 and not first:
            first = self._get_jobs(due, table.c.id == due_ids.pop(0))
        if not first:
            return self._get_jobs(due, of_kind)
        with self.engine.begin() as db:
            for chunk in chunks(due_ids):
                # Only rows still due: one moved meanwhile keeps its job.
                db.execute(table.delete().where(due, table.c.id.in_(chunk)))
        coalesced = [pk for pk in map(kind.reservation_id, due_ids) if pk is not None]
        for job in first:
            job._modify(kwargs={**job.kwargs, "coalesced": coalesced})
        return first


def _sqlite_synchronous_normal(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite job store URL, or ``None`` (another database, or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def store_options(options: dict[str, Any]) -> dict[str, Any]:
    """
    Return the options of a ``sqlalchemy`` job store as this project builds it.

    The store is a ``FoldingJobStore`` whose pooled connections are checked
    before use (a database restart leaves dead ones). A SQLite store gets its
    folder, the WAL journal and a short busy timeout. Other stores' options
    come back unchanged.
    """
    options = dict(options)
    url = options.get("url")
    if options.get("type") != "sqlalchemy" or not url:
        return options
    del options["type"]
    options["class"] = FoldingJobStore
    engine_options = dict(options.get("engine_options") or {})
    engine_options.setdefault("pool_pre_ping", True)
    options["engine_options"] = engine_options
    path = sqlite_path(str(url))
    if path is None:
        return options
    path.parent.mkdir(parents=True, exist_ok=True)
    # WAL persists in the file: set it once. Switching needs the file to
    # itself, so a busy store (another process starting) keeps its mode.
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                logger.warning("Could not switch the job store %s to WAL yet", path)
    # Short: a job write happens after a customer's commit, inside the
    # request; a store locked for longer is an error, logged, and the sweep
    # or the next reconcile makes up for the missing job.
    engine_options.setdefault("connect_args", {}).setdefault("timeout", JOB_STORE_BUSY_TIMEOUT)
    return options


class JobStoreMissing(RuntimeError):
    """The SQLite job store's file does not exist (read paths never create it)."""


def require_file(url: str) -> None:
    """Raise ``JobStoreMissing`` when ``url`` is a SQLite store whose file does not exist."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise JobStoreMissing(f"no job store at {path}")


def run_times(store: SQLAlchemyJobStore, prefix: str) -> dict[str, datetime | None]:
    """Job id -> run time (aware UTC; ``None``: paused) of every job whose id has ``prefix``."""
    table = store.jobs_t
    query = select(table.c.id, table.c.next_run_time).where(table.c.id.startswith(prefix))
    with store.engine.begin() as db:
        rows = db.execute(query).all()
    return {job_id: None if ts is None else datetime.fromtimestamp(ts, UTC) for job_id, ts in rows}


def job_counts(store: SQLAlchemyJobStore, prefixes: dict[str, str]) -> dict[str, int]:
    """Name -> how many jobs have that name's id prefix, counted in one query."""
    table = store.jobs_t
    if not prefixes:
        return {}
    columns = [
        func.count().filter(table.c.id.startswith(prefix, autoescape=True)).label(f"c{index}")
        for index, prefix in enumerate(prefixes.values())
    ]
    with store.engine.begin() as db:
        row = db.execute(select(*columns)).one()
    return {name: int(count or 0) for name, count in zip(prefixes, row, strict=True)}


def delete_not_due(store: SQLAlchemyJobStore, job_ids: list[str], now: float) -> None:
    """
    Delete the jobs ``job_ids`` not due at ``now`` (a UTC timestamp), a statement per thousand.

    Jobs already due are left to the runner, which may have handed them to
    its executor and is about to delete them itself (a delete here would make
    that fail); they find nothing to do. Missing jobs are no error.
    """
    table = store.jobs_t
    not_due = table.c.next_run_time > now
    with store.engine.begin() as db:
        for chunk in chunks(job_ids):
            db.execute(table.delete().where(not_due, table.c.id.in_(chunk)))
