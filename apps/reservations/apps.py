import atexit
import logging

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_delete, post_save

logger = logging.getLogger("escape_rooms_backend.scheduler")


class ReservationsConfig(AppConfig):
    name = "apps.reservations"
    label = "reservations"
    verbose_name = "Reservations"

    def ready(self) -> None:
        from . import signals
        from .models import Reservation

        post_save.connect(
            signals.reservation_saved,
            sender=Reservation,
            dispatch_uid="reservation_expiry_job_saved",
        )
        post_delete.connect(
            signals.reservation_deleted,
            sender=Reservation,
            dispatch_uid="reservation_expiry_job_deleted",
        )
        signals.reservations_expired.connect(
            signals.reservations_bulk_expired,
            sender=Reservation,
            dispatch_uid="reservation_expiry_jobs_bulk_expired",
        )

    def start_background_scheduler(self) -> bool:
        """
        Start the scheduler in this web process unless ``SCHEDULER_WORKER_MODE`` is set.

        Called by ``config.wsgi`` and ``config.asgi``, that is when a web server
        loads the application; never from ``ready()``, so ``migrate``, ``test``,
        ``shell`` and every other management command start no scheduler, and
        under ``runserver`` only the reloader's child (the process that serves)
        starts one. Returns whether it started one.
        """
        if settings.SCHEDULER_WORKER_MODE:
            logger.info("SCHEDULER_WORKER_MODE is on: jobs run in `manage.py start_scheduler`")
            return False
        from escape_rooms_backend.scheduler import start_scheduler, stop_scheduler

        scheduler = start_scheduler(blocking=False)
        # A clean exit (Ctrl+C under runserver, a gunicorn worker retiring)
        # waits for running jobs and records the stop in the heartbeat.
        atexit.register(stop_scheduler, scheduler)
        return True
