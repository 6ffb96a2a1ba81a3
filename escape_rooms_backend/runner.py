"""
One runner per job store, with standbys that take over.

APScheduler 3 lets only one scheduler run a store's jobs. Every process that
could run them (each gunicorn worker's background scheduler, each
``start_scheduler``) starts its scheduler paused and competes for a lock:

- a PostgreSQL session advisory lock, held on a connection of its own, when
  the job store is on PostgreSQL;
- an exclusive OS file lock (``flock``) beside a SQLite job store otherwise.

The holder resumes its scheduler and runs the jobs; the others stay paused
(they still add and remove jobs) and try again every third of
``SCHEDULER_FAILOVER_SECONDS``. The kernel or PostgreSQL releases the lock of
a process that dies, even by ``kill -9``, so a standby takes over within
``SCHEDULER_FAILOVER_SECONDS``. A runner that finds its lock gone (its
connection broke) pauses at once.

On PostgreSQL the runner also LISTENs on ``escape_rooms_jobs``; every
process NOTIFYs it after writing a job, so a job added anywhere fires on
time. On SQLite the poller looks every ``SCHEDULER_POLL_SECONDS`` instead.

The advisory lock and LISTEN belong to a server session: behind a pooler in
transaction mode they connect to ``SCHEDULER_DIRECT_URL`` (the server
itself), while the job store and its NOTIFY, plain transactions, go through
the pooler.
"""

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import make_url

from .jobstore import sqlite_path

logger = logging.getLogger("escape_rooms_backend.scheduler")

NOTIFY_CHANNEL = "escape_rooms_jobs"
POOLER_LOG = (
    "The runner lock's connection reached a connection pooler, not PostgreSQL (%s): "
    "point DATABASE_DIRECT_URL (or SCHEDULER_DIRECT_URL) at PostgreSQL itself; "
    "until then no process runs the jobs or the sweep (lapsed holds read as expired, "
    "but nothing releases them)"
)


class RunnerLock(Protocol):
    def try_acquire(self) -> bool: ...
    def held(self) -> bool: ...
    def release(self) -> None: ...


class FileLock:
    """An ``flock`` beside the SQLite job store; the kernel frees it when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return self.held()  # the file we locked may have been replaced meanwhile

    def held(self) -> bool:
        # The lock lives on the file we opened. If that file was deleted (or
        # replaced), another process can lock a new one: we no longer hold it.
        if self._file is None:
            return False
        try:
            same = os.fstat(self._file.fileno()).st_ino == os.stat(self.path).st_ino
        except OSError:
            same = False
        if not same:
            self.release()
        return same

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _psycopg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection of its own."""

    def __init__(self, url: str) -> None:
        self.conninfo = _psycopg_conninfo(url)
        # Keyed by the database, not by how its URL is spelled (localhost or
        # 127.0.0.1, with or without options): advisory locks are per server.
        digest = hashlib.blake2b(
            f"escape-rooms runner {make_url(url).database}".encode(), digest_size=8
        ).digest()
        self.key = int.from_bytes(digest, "big", signed=True)
        self._conn: Any = None

    def try_acquire(self) -> bool:
        import psycopg

        if self._conn is not None:
            return self.held()
        try:
            conn = psycopg.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=5,
                # Both ends notice a vanished peer in seconds, not the default
                # two hours: the client pauses, the server frees the lock.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
                options="-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2"
                " -c tcp_keepalives_count=3",
            )
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except psycopg.Error as exc:
            if "unsupported startup parameter" in str(exc):
                # A pooler answered, not PostgreSQL: no retry can help.
                logger.error(POOLER_LOG, exc)
            else:
                logger.warning("Could not reach PostgreSQL for the runner lock", exc_info=True)
            return False
        if row and row[0]:
            self._conn = conn
            return True
        conn.close()
        return False

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except Exception:
            self._close()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            self._close()

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = None


class AlwaysLock:
    """For a job store no other process can open (in memory): this process runs it."""

    def try_acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass


def lock_for(jobstore_url: str, direct_url: str = "") -> RunnerLock:
    """
    Return the runner lock of a job store: advisory on PostgreSQL, a file beside a SQLite file.

    On PostgreSQL the lock's session connects to ``direct_url`` when given
    (the server itself, when ``jobstore_url`` goes through a pooler in
    transaction mode, which gives no session of one's own), to the store's
    own URL otherwise.
    """
    if make_url(jobstore_url).get_backend_name() == "postgresql":
        return AdvisoryLock(direct_url or jobstore_url)
    path = sqlite_path(jobstore_url)
    if path is not None:
        return FileLock(Path(f"{path}.runner.lock"))
    return AlwaysLock()


class Runner:
    """
    Competes for the runner lock for one scheduler; calls back when the role changes.

    ``on_runner`` runs when this process becomes the runner (resume, add the
    sweep), ``on_standby`` when it loses the lock (pause).
    """

    def __init__(
        self,
        lock: RunnerLock,
        *,
        interval: float,
        on_runner: Callable[[], None],
        on_standby: Callable[[], None],
        on_tick: Callable[[bool], None] = lambda is_runner: None,
    ) -> None:
        self.lock = lock
        self.interval = interval
        self.on_runner = on_runner
        self.on_standby = on_standby
        self.on_tick = on_tick
        self.is_runner = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """One look: take the lock if free, or notice that it was lost."""
        if self.is_runner:
            if not self.lock.held():
                self.is_runner = False
                logger.error("Lost the runner lock: this process stops running jobs")
                self.on_standby()
        elif self.lock.try_acquire():
            try:
                self.on_runner()
            except Exception:
                # Holding the lock without running jobs would stop expiry for
                # everyone: give it back, and try again at the next check.
                logger.exception("Could not start running jobs; giving the runner lock back")
                self.lock.release()
                self.on_standby()
            else:
                self.is_runner = True
        self.on_tick(self.is_runner)

    def start(self) -> None:
        self.check()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.check()
                except Exception:
                    logger.exception("Runner lock check failed; trying again")

        self._thread = threading.Thread(target=loop, name="escape-rooms-runner", daemon=True)
        self._thread.start()

    def stop_checking(self) -> None:
        """Stop competing; the lock stays held until ``lock.release()``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Listener:
    """LISTEN for job writes of other processes on PostgreSQL and wake the scheduler."""

    def __init__(self, jobstore_url: str, wakeup: Callable[[], None]) -> None:
        self.conninfo = _psycopg_conninfo(jobstore_url)
        self.wakeup = wakeup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="escape-rooms-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.wakeup()  # whatever was written while not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wakeup()
            except Exception:
                logger.warning("LISTEN connection lost; reconnecting", exc_info=True)
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
