"""Django database connections in the scheduler's own threads."""

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import close_old_connections, connection

logger = logging.getLogger("escape_rooms_backend.scheduler")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

IN_LIST_SIZE = 1000  # values in one IN (...) list: far below every database's limit


def chunks(items: Sequence[T], size: int = IN_LIST_SIZE) -> Iterator[Sequence[T]]:
    """Yield ``items`` in consecutive slices of at most ``size``, for one IN (...) list each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_ids() -> str:
    """
    SQL for ``IN`` over ids sent as one parameter (``ids_param``), however many.

    An array on PostgreSQL (``= ANY(%s)``), a JSON list on SQLite: one
    parameter instead of a placeholder per id, which the drivers' query
    conversion spends most of a thousand-row batch's Python time on.
    """
    if connection.vendor == "postgresql":
        return "= ANY(%s)"
    return "IN (SELECT value FROM json_each(%s))"


def ids_param(ids: Sequence[int]) -> Any:
    """The parameter ``in_ids`` takes: the ids as a list, or a JSON list on SQLite."""
    return list(ids) if connection.vendor == "postgresql" else json.dumps(list(ids))


def advisory_xact_lock(*names: str) -> None:
    """
    Serialise the transactions that name any of ``names`` until this one ends.

    For rules counted over rows that a transaction is about to add (holds
    per customer, requests an hour, a party's offers at one time), which no
    row lock can guard. On PostgreSQL, an advisory lock per name, all taken
    in one statement and in one order, so that two transactions never wait
    on each other in a circle; SQLite's transactions take its one write
    lock as they begin, which serialises them already.
    Call inside ``transaction.atomic``; empty names are ignored.
    """
    if connection.vendor != "postgresql":
        return
    if not (wanted := sorted({n for n in names if n})):
        return
    # One statement however many names (a bulk hand-over locks a thousand
    # parties), in the order of the locks' keys: two names with one hash
    # are one lock, taken once, at the same place in every transaction.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(key) FROM (SELECT DISTINCT hashtext(name) AS key "
            "FROM unnest(%s::text[]) AS name ORDER BY key) AS keys",
            [wanted],
        )


def job_connection(func: Callable[P, R]) -> Callable[P, R]:
    """
    Run ``func`` with a fresh, lock-bounded database connection, closing stale ones around it.

    Jobs run in the executor's threads (and heartbeats in the runner's), each
    with its own Django connection that no request cycle closes. Around the
    call, connections past ``CONN_MAX_AGE`` or broken are closed, as
    django-apscheduler's ``close_old_connections`` does. During it, each
    transaction waits at most ``SCHEDULER_LOCK_TIMEOUT`` seconds for a lock
    (PostgreSQL's ``lock_timeout``, SQLite's busy timeout), so that a row or
    database held by a long transaction elsewhere delays one job, which is
    tried again, instead of stalling the scheduler's threads, its sweep and
    its stop. A caller inside a transaction (a test, a shell's atomic block)
    owns its connection: it is left as it is.

    On PostgreSQL the timeout is ``SET LOCAL`` at the start of each
    transaction, never set on the session: behind a pooler in transaction
    mode, a session setting would stay on a server session that other
    clients get next. Statements in autocommit, outside any transaction,
    wait as long as the server's own ``lock_timeout`` says.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if connection.in_atomic_block:
            return func(*args, **kwargs)
        close_old_connections()
        try:
            with _bounded_lock_waits():
                return func(*args, **kwargs)
        finally:
            close_old_connections()

    return wrapper


@contextlib.contextmanager
def _bounded_lock_waits() -> Iterator[None]:
    milliseconds = int(settings.SCHEDULER_LOCK_TIMEOUT * 1000)
    if connection.vendor == "postgresql":
        with connection.execute_wrapper(functools.partial(_lock_timeout_first, milliseconds)):
            yield
    elif connection.vendor == "sqlite":
        previous = _run("PRAGMA busy_timeout")
        _run(f"PRAGMA busy_timeout = {milliseconds}")
        try:
            yield
        finally:
            # The thread may serve requests too (a gunicorn worker's main
            # thread records the first heartbeat): give it its waits back.
            if previous is not None:
                _run(f"PRAGMA busy_timeout = {previous}")
    else:
        yield


def _lock_timeout_first(
    milliseconds: int, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict
) -> Any:
    # Before the first statement of a transaction (Django's connection out of
    # autocommit, psycopg's idle), begin it with its lock timeout.
    from psycopg.pq import TransactionStatus

    wrapper = context["connection"]
    raw = wrapper.connection
    if (
        raw is not None
        and not wrapper.get_autocommit()
        and raw.info.transaction_status == TransactionStatus.IDLE
    ):
        raw.execute(f"SET LOCAL lock_timeout = {milliseconds}", prepare=False)
    return execute(sql, params, many, context)


def _run(statement: str) -> int | None:
    """Run one statement on this thread's connection; return its first value, if any."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            row = cursor.fetchone() if cursor.description else None
    except Exception:  # the job itself meets the same error and reports it
        logger.debug("Could not run %r on a job's connection", statement, exc_info=True)
        return None
    return None if row is None else int(row[0])
