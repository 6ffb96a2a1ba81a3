"""
Django's SQLite backend with its writers queued on a file lock.

SQLite has one write lock per database. A writer that finds it taken
waits in SQLite's busy handler, which sleeps 1, 2, 5, ... then 100 ms
between looks: under a steady stream of short write transactions from
several processes (gunicorn's workers, the runner) a writer can look at
the wrong moments for a second, while the lock is free most of the time.

Here every transaction that begins with ``BEGIN IMMEDIATE`` (Django's
``atomic``, with ``transaction_mode = "IMMEDIATE"``), and every INSERT,
UPDATE or DELETE run on its own, first takes an exclusive ``flock`` on
``<database>.writers``, released at the commit or rollback (or once the
statement has run). A writer waiting for it looks again every half
millisecond (``WRITERS_POLL_SECONDS``), so it is never long behind the
lock. The file lock only orders the writers that take it: SQLite's own
lock still decides, so a writer that does not take it (another program)
is as safe as before. The time spent waiting for the file lock counts
against the connection's busy timeout: SQLite's lock gets what is left,
so that no writer waits longer in all than it would without.
"""

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from django.db.backends.sqlite3 import base

# Between looks at a file lock held by another connection of this process
# or another: far below a write transaction's length.
WRITERS_POLL_SECONDS = 0.0005


# The private hooks overridden below are not in the type stubs.
_SQLiteWrapper: Any = base.DatabaseWrapper


class DatabaseWrapper(_SQLiteWrapper):
    """SQLite, with write transactions queued on ``<database>.writers`` (``flock``)."""

    _writers_fd: int | None = None
    _writers_held = False

    def _writers_path(self) -> str | None:
        name = str(self.settings_dict["NAME"])
        if self.is_in_memory_db() or not name:
            return None
        return f"{name}.writers"

    def _writers_acquire(self) -> float:
        """Take the file lock; return the busy timeout left for SQLite (ms), or -1 for all of it."""
        if self._writers_held or getattr(self, "transaction_mode", None) != "IMMEDIATE":
            return -1
        fd = self._writers_fd
        if fd is None:
            path = self._writers_path()
            if path is None:
                return -1
            fd = self._writers_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._writers_wait(fd)
        self._writers_held = True
        return -1

    def _writers_wait(self, fd: int) -> float:
        """Wait for the file lock for at most the connection's busy timeout; what is left of it."""
        timeout = self.connection.execute("PRAGMA busy_timeout").fetchone()[0]
        started = time.monotonic()
        give_up = started + timeout / 1000
        while time.monotonic() < give_up:
            time.sleep(WRITERS_POLL_SECONDS)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            self._writers_held = True
            break
        # The wait counts against the busy timeout: SQLite's lock gets the rest.
        return max(0.0, timeout - (time.monotonic() - started) * 1000)

    def _writers_release(self) -> None:
        if self._writers_held and self._writers_fd is not None:
            self._writers_held = False
            fcntl.flock(self._writers_fd, fcntl.LOCK_UN)

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = self.connection.cursor(factory=_Cursor)
        cursor.writers = self
        return cursor

    @contextlib.contextmanager
    def _writing(self, query: str) -> Iterator[None]:
        """Around a statement: the file lock for a write outside a transaction."""
        if self._writers_held or self.connection.in_transaction or not _WRITES.match(query):
            yield
            return
        try:
            with self._busy_timeout(self._writers_acquire()):
                yield
        finally:
            self._writers_release()

    @contextlib.contextmanager
    def _busy_timeout(self, left: float) -> Iterator[None]:
        """SQLite's busy timeout at ``left`` ms for the block (``-1``: as it is)."""
        if left < 0:
            yield
            return
        timeout = self.connection.execute("PRAGMA busy_timeout").fetchone()[0]
        self.connection.execute(f"PRAGMA busy_timeout = {int(left)}")
        try:
            yield
        finally:
            self.connection.execute(f"PRAGMA busy_timeout = {timeout}")

    def _start_transaction_under_autocommit(self) -> None:
        left = self._writers_acquire()
        try:
            with self._busy_timeout(left):
                super()._start_transaction_under_autocommit()
        except BaseException:
            self._writers_release()
            raise

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            self._writers_release()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._writers_release()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._writers_release()
            if self._writers_fd is not None:
                os.close(self._writers_fd)
                self._writers_fd = None

    def _set_autocommit(self, autocommit: bool) -> Any:
        result = super()._set_autocommit(autocommit)
        if autocommit:
            self._writers_release()  # whatever ended the transaction
        return result


# A statement that writes, run on its own (autocommit): it queues too, rather
# than wait in SQLite's busy handler behind a queue of transactions.
_WRITES = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


class _Cursor(base.SQLiteCursorWrapper):
    writers: DatabaseWrapper

    def execute(self, query: str, params: Any = None) -> Any:
        with self.writers._writing(query):
            return super().execute(query, params)

    def executemany(self, query: str, param_list: Any) -> Any:
        with self.writers._writing(query):
            return super().executemany(query, param_list)
