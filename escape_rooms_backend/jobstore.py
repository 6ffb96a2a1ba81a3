"""
The persistent job store: APScheduler's SQLAlchemy store, folding bursts.

Builds the store from the seed's ``apscheduler.jobstores.*`` options and
reads it directly (ids and run times, no unpickling) for the reconcile and
the status. Imports no app.
"""

import contextlib
import functools
import json
import logging
import os
import pickle
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.util import datetime_to_utc_timestamp
from sqlalchemy import ARRAY, String, any_, bindparam, column, event, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, DisconnectionError

from . import deadlines
from .db import chunks

logger = logging.getLogger("escape_rooms_backend.scheduler")

# Due jobs a pass reads at once, with their states; a pass with more folds.
FEW_DUE = 20
# Reads of a kind's earliest due job before the fold gives up and hands its
# due jobs over one by one (each read found it moved by another process).
FOLD_ATTEMPTS = 3
JOB_STORE_BUSY_TIMEOUT = 2  # seconds a SQLite job store write waits for a lock
# What SQLite says of a file it cannot read as a database, or of a store file
# made anew without its table (deleted under a running process, say).
DAMAGE_MESSAGES = (
    "database disk image is malformed",
    "file is not a database",
    "no such table: apscheduler_jobs",
)
# The dialects whose INSERT ... ON CONFLICT DO UPDATE ``write_rows`` uses.
_UPSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
DAMAGED_LOG = (
    "The job store %s is damaged (%s): moved it aside to %s and started an empty one;"
    " every deadline's job is rebuilt from the database"
)


class FoldingJobStore(SQLAlchemyJobStore):
    """
    APScheduler's SQLAlchemy job store, folding due jobs of a folding kind into one run.

    A kind whose ``handle`` does the work of every due deadline of the kind
    (``DeadlineKind.fold``, such as the hold's end) needs only one of its due
    jobs run. This store hands the scheduler the earliest of them and deletes
    the others' rows in one ``DELETE ... RETURNING``, passing their
    reservation ids to the one it hands over (``coalesced``, in memory only).
    10,000 holds ending in the same second then cost one job run and one
    DELETE, instead of 10,000 rounds of unpickle, submit, run and delete.
    Deleting a due job's row before its work is done is what APScheduler
    does with every date job (at most once); the sweep covers a crash in
    between. Other jobs are returned unchanged. A pass that finds no more
    than ``FEW_DUE`` due jobs, none two of a folding kind (the usual pass),
    reads them with one query.

    A SQLite store commits with ``synchronous=NORMAL`` in WAL mode, as the
    main database does: with the default, every job write waits for an
    fsync on the reserve path. A power cut may then lose the last job
    writes, never a reservation's state; the reconcile at start restores
    the jobs and the sweep covers the meantime.

    A SQLite store is a cache of the reservations' deadlines. When the
    runner finds its file damaged (``replace_damaged``), the file is moved
    aside and an empty one takes its place; ``on_replaced`` then has every
    job rebuilt. Every process's pooled connections notice that the file was
    replaced and reconnect, so that no job is written into the one set aside.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set while this process runs the store's jobs: only the runner
        # replaces a damaged file, and then has the jobs rebuilt.
        self.runs_here = False
        self.on_replaced: Callable[[], None] | None = None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_synchronous_normal)
            path = sqlite_path(self.engine.url.render_as_string(hide_password=False))
            if path is not None:
                event.listen(self.engine, "connect", _remember_file(path))
                event.listen(self.engine, "checkout", _same_file(path))

    def start(self, scheduler: Any, alias: str) -> None:
        try:
            super().start(scheduler, alias)  # creates the table if need be
        except DatabaseError as exc:
            if not is_damage(exc):
                raise
            # Started all the same: the runner replaces the file, and job
            # writes fail (logged, the sweep covers them) until it has.
            logger.error("The job store %s is damaged (%s)", self.path, exc.orig or exc)

    def get_due_jobs(self, now: datetime) -> list[Job]:
        try:
            return self._get_due_jobs(now)
        except DatabaseError as exc:
            self._replace_if_damaged(exc)
            return []

    def get_next_run_time(self) -> datetime | None:
        try:
            return super().get_next_run_time()
        except DatabaseError as exc:
            self._replace_if_damaged(exc)
            return None

    def _replace_if_damaged(self, exc: DatabaseError) -> None:
        """Replace the file if ``exc`` says it is damaged and this is the runner; else raise it."""
        if not (self.runs_here and is_damage(exc) and self.path is not None):
            raise exc
        self.replace_damaged(str(exc.orig or exc))

    @property
    def path(self) -> Path | None:
        """The file of a SQLite store, else ``None``."""
        return sqlite_path(self.engine.url.render_as_string(hide_password=False))

    def replace_damaged(self, detail: str) -> Path:
        """
        Move the damaged SQLite file (with its ``-wal`` and ``-shm``) aside; start an empty store.

        The files keep their names with ``.damaged-<UTC time>`` added, for
        inspection, and the log names both. Returns the new name of the
        main file. Raises ``OSError`` when the files cannot be moved.
        """
        path = self.path
        if path is None:
            raise ValueError("only a SQLite job store's file can be replaced")
        self.engine.dispose()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").rename(f"{aside}{suffix}")
        use_wal(path)
        self.jobs_t.create(self.engine, checkfirst=True)
        logger.error(DAMAGED_LOG, path, detail, aside)
        if self.on_replaced is not None:
            self.on_replaced()
        return aside

    def _get_due_jobs(self, now: datetime) -> list[Job]:
        table = self.jobs_t
        due = table.c.next_run_time <= datetime_to_utc_timestamp(now)
        folding = [kind for kind in deadlines.kinds() if kind.fold]
        if not folding:
            return super().get_due_jobs(now)
        # The usual pass finds a few due jobs, or none: one query reads them
        # with their states. Only a pass with more, or with two of a folding
        # kind, folds (a query per kind, then one DELETE per kind).
        with self.engine.begin() as db:
            rows = db.execute(
                select(table.c.id, table.c.job_state)
                .where(due)
                .order_by(table.c.next_run_time)
                .limit(FEW_DUE + 1)
            ).all()
        kinds = [
            next((k for k in folding if row.id.startswith(k.job_prefix)), None) for row in rows
        ]
        of_folding = [kind.name for kind in kinds if kind is not None]
        if len(rows) <= FEW_DUE and len(of_folding) == len(set(of_folding)):
            return self._restore(rows)
        jobs: list[Job] = []
        for kind in folding:
            jobs += self._fold(kind, due, table.c.id.startswith(kind.job_prefix))
        folded = or_(*(table.c.id.startswith(kind.job_prefix) for kind in folding))
        jobs += self._get_jobs(due, ~folded)
        return sorted(jobs, key=lambda job: job.next_run_time)

    def _restore(self, rows: Sequence[Any]) -> list[Job]:
        """
        The jobs of ``(id, job_state)`` rows, in their order.

        A row that does not unpickle is logged and deleted, as APScheduler does.
        """
        jobs: list[Job] = []
        failed: list[str] = []
        for row in rows:
            try:
                jobs.append(self._reconstitute_job(row.job_state))
            except BaseException:
                logger.exception('Unable to restore job "%s" -- removing it', row.id)
                failed.append(row.id)
        if failed:
            with self.engine.begin() as db:
                db.execute(self.jobs_t.delete().where(self.jobs_t.c.id.in_(failed)))
        return jobs

    def _fold(self, kind: deadlines.DeadlineKind, due: Any, of_kind: Any) -> list[Job]:
        table = self.jobs_t
        earliest = select(table.c.id).where(due, of_kind).order_by(table.c.next_run_time)
        # The job handed over must itself be due: another process may have
        # moved or removed it since its id was read (a hold extended or paid
        # at its last moment). Only then are the others folded into it.
        first: list[Job] = []
        for _ in range(FOLD_ATTEMPTS):
            with self.engine.begin() as db:
                due_ids = list(db.execute(earliest.limit(2)).scalars())
            if len(due_ids) < 2:
                break
            first = self._get_jobs(due, table.c.id == due_ids[0])
            if first:
                break
        if not first:
            return self._get_jobs(due, of_kind)
        # One statement, however many: only rows still due (one moved
        # meanwhile keeps its job), their ids returned for the run.
        with self.engine.begin() as db:
            folded = db.execute(
                table.delete().where(due, of_kind, table.c.id != first[0].id).returning(table.c.id)
            ).scalars()
            coalesced = sorted(pk for pk in map(kind.reservation_id, folded) if pk is not None)
        for job in first:
            job._modify(kwargs={**job.kwargs, "coalesced": coalesced})
        return first


def _sqlite_synchronous_normal(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _remember_file(path: Path) -> Callable[[Any, Any], None]:
    def remember(dbapi_connection: Any, connection_record: Any) -> None:
        with contextlib.suppress(OSError):
            connection_record.info["inode"] = os.stat(path).st_ino

    return remember


def _same_file(path: Path) -> Callable[[Any, Any, Any], None]:
    """A pool checkout check: a connection to a file since replaced is discarded, not used."""

    def check(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
        try:
            inode = os.stat(path).st_ino
        except OSError:
            return  # deleted, not replaced: a new connection would only make an empty file
        if connection_record.info.get("inode", inode) != inode:
            raise DisconnectionError(f"the job store {path} was replaced")

    return check


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying that the file is not (any more) a readable database."""
    return isinstance(exc, DatabaseError) and any(
        message in str(exc.orig or exc).lower() for message in DAMAGE_MESSAGES
    )


class JobStoreDamaged(RuntimeError):
    """SQLite finds the job store's file damaged; ``detail`` says what it found."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"the job store {path} is damaged: {detail}")
        self.path = path
        self.detail = detail


def check(store: SQLAlchemyJobStore) -> None:
    """
    Raise ``JobStoreDamaged`` when a SQLite store's file fails SQLite's quick check.

    Reads every page of the file (milliseconds for thousands of jobs); a
    store on another database, or a file not yet made, passes. Raises what
    SQLAlchemy raises when the store cannot be opened for another reason.
    """
    path = sqlite_path(store.engine.url.render_as_string(hide_password=False))
    if path is None or not path.exists():
        return
    try:
        with store.engine.connect() as db:
            found = [row[0] for row in db.exec_driver_sql("PRAGMA quick_check(3)")]
    except DatabaseError as exc:
        if is_damage(exc):
            raise JobStoreDamaged(path, str(exc.orig or exc)) from exc
        raise
    if found != ["ok"]:
        raise JobStoreDamaged(path, "; ".join(found))
    with store.engine.connect() as db:
        table = db.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (store.jobs_t.name,)
        ).first()
    if table is None:
        raise JobStoreDamaged(path, f"no table {store.jobs_t.name} (the file was made anew)")


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
    use_wal(path)
    # Short: a job write happens after a customer's commit, inside the
    # request; a store locked for longer is an error, logged, and the sweep
    # or the next reconcile makes up for the missing job.
    engine_options.setdefault("connect_args", {}).setdefault("timeout", JOB_STORE_BUSY_TIMEOUT)
    return options


def use_wal(path: Path) -> None:
    """Make the SQLite file at ``path`` (created if missing) use the WAL journal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # WAL persists in the file: set it once. Switching needs the file to
    # itself, so a busy store (another process starting) keeps its mode.
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        try:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0].lower()
        except sqlite3.DatabaseError as exc:
            if not any(message in str(exc).lower() for message in DAMAGE_MESSAGES):
                raise
            return  # damaged: the runner replaces the file (FoldingJobStore.replace_damaged)
        if mode != "wal":
            try:
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                logger.warning("Could not switch the job store %s to WAL yet", path)


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
    Delete the jobs ``job_ids`` not due at ``now`` (a UTC timestamp), in one statement.

    Jobs already due are left to the runner, which may have handed them to
    its executor and is about to delete them itself (a delete here would make
    that fail); they find nothing to do. Missing jobs are no error. The ids
    go as one parameter (an array on PostgreSQL, a JSON list on SQLite),
    however many: a bulk expiry removes a thousand holds' jobs at a time.
    """
    table = store.jobs_t
    not_due = table.c.next_run_time > now
    dialect = store.engine.dialect.name
    with store.engine.begin() as db:
        if dialect == "postgresql":
            ids = bindparam("ids", job_ids, type_=ARRAY(table.c.id.type))
            db.execute(table.delete().where(not_due, table.c.id == any_(ids)))
        elif dialect == "sqlite":
            listed = select(column("value", String)).select_from(
                func.json_each(json.dumps(job_ids))
            )
            db.execute(table.delete().where(not_due, table.c.id.in_(listed)))
        else:
            for chunk in chunks(job_ids):
                db.execute(table.delete().where(not_due, table.c.id.in_(chunk)))


def job_row(state: dict[str, Any], protocol: int) -> dict[str, Any]:
    """
    A job's row in the store: ``id``, ``next_run_time`` (a UTC timestamp) and ``job_state``.

    ``state`` is what ``Job.__getstate__`` returns.
    """
    return {
        "id": state["id"],
        "next_run_time": datetime_to_utc_timestamp(state["next_run_time"]),
        "job_state": pickle.dumps(state, protocol),
    }


def can_upsert(store: SQLAlchemyJobStore) -> bool:
    """Whether ``write_rows`` can write to this store (SQLite and PostgreSQL can)."""
    return store.engine.dialect.name in _UPSERTS


def write_rows(
    store: SQLAlchemyJobStore, rows: list[dict[str, Any]], removed: list[str], now: float
) -> None:
    """
    Add or replace the jobs ``rows`` (``job_row``), delete the jobs ``removed``: one transaction.

    What APScheduler's ``add_job(replace_existing=True)`` and ``remove_job``
    do one job and one transaction at a time. A replaced job cannot go
    missing in between, as it can between APScheduler's insert and update.
    Of ``removed``, jobs already due at ``now`` (a UTC timestamp) are left to
    the runner (``delete_not_due``). Raises what SQLAlchemy raises;
    ``can_upsert`` says whether the dialect is supported.
    """
    table = store.jobs_t
    with store.engine.begin() as db:
        if rows:
            db.execute(_upsert(store), rows)
        for ids in chunks(removed):
            db.execute(table.delete().where(table.c.next_run_time > now, table.c.id.in_(ids)))


def _upsert(store: SQLAlchemyJobStore) -> Any:
    """The store's ``INSERT ... ON CONFLICT (id) DO UPDATE``, built once (then cached compiled)."""
    statement = store.__dict__.get("upsert")
    if statement is None:
        table = store.jobs_t
        insert = _UPSERTS[store.engine.dialect.name](table)
        statement = store.__dict__["upsert"] = insert.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={
                "next_run_time": insert.excluded.next_run_time,
                "job_state": insert.excluded.job_state,
            },
        )
    return statement


def shares_database(url: Any, settings_dict: dict[str, Any]) -> bool:
    """
    Whether a job store at ``url`` is a table of the database Django's ``settings_dict`` names.

    PostgreSQL only, and only as the same user, on the same host, port and
    database, with no startup ``options`` (a ``search_path`` would put the
    store's table where Django's unqualified name does not reach). Two
    spellings of one server (``localhost``, ``127.0.0.1``) read as two
    databases, which is the safe side.
    """
    if "postgresql" not in settings_dict["ENGINE"]:
        return False
    return _store_key(str(url)) == (
        settings_dict["HOST"] or "localhost",
        int(settings_dict["PORT"] or 5432),
        settings_dict["NAME"],
        settings_dict["USER"] or "",
    )


@functools.lru_cache(maxsize=8)
def _store_key(url: str) -> tuple[str, int, str | None, str] | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "options" in parsed.query:
        return None
    return (
        parsed.host or "localhost",
        int(parsed.port or 5432),
        parsed.database,
        parsed.username or "",
    )
