import atexit
import logging
import os
import sys
from types import FrameType

from django.apps import AppConfig
from django.conf import settings
from django.db import connections

logger = logging.getLogger("escape_rooms_backend.scheduler")


class ReservationsConfig(AppConfig):
    name = "apps.reservations"
    label = "reservations"
    verbose_name = "Reservations"

    def ready(self) -> None:
        from escape_rooms_backend.timeline import deadlines_keep_in_step

        from . import deadlines
        from .models import Reservation
        from .signals import reservations_changed

        deadlines.register()
        reservations_changed.connect(
            deadlines_keep_in_step, sender=Reservation, dispatch_uid="reservation_deadlines"
        )


def start_background_scheduler() -> bool:
    """
    Start the scheduler in this web process unless ``SCHEDULER_WORKER_MODE`` is set.

    Called by ``config.wsgi`` and ``config.asgi``, that is when a web server
    loads the application; never from ``ready()``, so ``migrate``, ``test``,
    ``shell`` and every other management command start no scheduler, and
    under ``runserver`` only the reloader's child (the process that serves)
    starts one. Returns whether it started one.

    Loaded in gunicorn's master (``--preload``), which then forks the
    workers, it makes no thread and keeps no connection there: a worker
    would share them with the master and its siblings. Each worker does this
    itself, just after the fork.
    """
    if _preloaded_by_gunicorn():
        connections.close_all()  # the master's own, closed before any fork
        os.register_at_fork(after_in_child=_start_after_fork)
        logger.info("Loaded by gunicorn's master (--preload): each worker starts its scheduler")
        return False
    return _start()


def _start_after_fork() -> None:
    try:
        _start()
    except Exception:  # a fork hook's exception would only be printed
        logger.exception("Could not start the scheduler in this worker")


def _preloaded_by_gunicorn() -> bool:
    """
    Whether gunicorn's arbiter (the master, which forks the workers) is loading the app.

    A worker's stack holds the arbiter's frames too (it was forked from
    them), but the arbiter's ``pid`` there is the master's, not the worker's.
    """
    arbiter = sys.modules.get("gunicorn.arbiter")
    if arbiter is None:
        return False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        found = frame.f_locals.get("self")
        if isinstance(found, arbiter.Arbiter):
            return getattr(found, "pid", None) in (None, os.getpid())
        frame = frame.f_back
    return False


def _start() -> bool:
    if settings.SCHEDULER_WORKER_MODE:
        logger.info("SCHEDULER_WORKER_MODE is on: jobs run in `manage.py start_scheduler`")
        _open_job_store()
        return False
    from escape_rooms_backend.scheduler import start_scheduler, stop_scheduler

    scheduler = start_scheduler(blocking=False)
    # A clean exit (Ctrl+C under runserver, a gunicorn worker retiring)
    # waits for running jobs and records the stop in the heartbeat.
    atexit.register(stop_scheduler, scheduler)
    return True


def _open_job_store() -> None:
    # This process still writes jobs: open the store (a paused scheduler) now,
    # so that the first customer's request does not wait for it. A store that
    # is down is no reason to refuse requests: the first write tries again.
    from escape_rooms_backend.lifecycle import process

    try:
        process.writable()
    except Exception:
        logger.warning(
            "Could not open the job store yet; the first job write tries again", exc_info=True
        )
