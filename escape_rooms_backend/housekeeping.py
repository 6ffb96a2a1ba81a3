"""
The runner's daily chores: rows that only ever grow unless someone deletes them.

The sweep runs them at its first pass and then once every
``HOUSEKEEPING_SECONDS`` (a day by default). Apps add their own with
``register``; expired sessions are the first. Nothing here touches a
reservation, a deadline or a message.
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from importlib import import_module

from django.apps import apps
from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from .db import job_connection

logger = logging.getLogger("escape_rooms_backend.scheduler")

# Rows deleted per statement: a purge of millions never holds a lock for long.
PURGE_BATCH = 5000

Chore = Callable[[datetime], int]
_chores: dict[str, Chore] = {}
_lock = threading.Lock()
_last_run: float | None = None  # time.monotonic() of this process's last run


def register(name: str, chore: Chore) -> None:
    """Add ``chore(now) -> rows removed``; ``name`` is a phrase for the log ("expired sessions")."""
    _chores[name] = chore


def unregister(name: str) -> None:
    _chores.pop(name, None)


def run_if_due() -> dict[str, int] | None:
    """
    Run every chore if none ran in this process for ``HOUSEKEEPING_SECONDS``.

    Returns what each removed, or ``None`` when it was not due. Never raises:
    a chore that fails is logged, the others run, and all are tried again
    at the next pass of the sweep.
    """
    global _last_run
    with _lock:
        due = _last_run is None or time.monotonic() - _last_run >= settings.HOUSEKEEPING_SECONDS
        if not due:
            return None
        _last_run = time.monotonic()
    return run()


@job_connection
def run(now: datetime | None = None) -> dict[str, int]:
    """Run every chore now; return the rows each removed (failed chores are left out)."""
    global _last_run
    now = now or timezone.now()
    removed: dict[str, int] = {}
    for name, chore in list(_chores.items()):
        try:
            removed[name] = chore(now)
        except Exception:
            logger.exception("Housekeeping failed: %s", name)
            with _lock:
                _last_run = None  # try again at the next pass
            continue
        if removed[name]:
            logger.info("Housekeeping removed %d %s", removed[name], name)
    return removed


def delete_in_batches(queryset: QuerySet, batch: int = PURGE_BATCH) -> int:
    """Delete ``queryset``'s rows a batch at a time, each in its own statement; return how many."""
    removed = 0
    while pks := list(queryset.values_list("pk", flat=True)[:batch]):
        removed += queryset.model._base_manager.filter(pk__in=pks).delete()[0]
    return removed


def sessions_purge(now: datetime) -> int:
    """
    Delete the sessions that expired before ``now``; return how many.

    Django creates a session row for each visitor that needs one and never
    deletes it (``clearsessions`` does). For a session engine without rows
    of its own (cookies, a cache) this asks the engine and returns 0.
    """
    if not apps.is_installed("django.contrib.sessions"):
        return 0
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if not hasattr(store, "get_model_class"):
        store.clear_expired()
        return 0
    return delete_in_batches(store.get_model_class().objects.filter(expire_date__lt=now))


register("expired sessions", sessions_purge)
