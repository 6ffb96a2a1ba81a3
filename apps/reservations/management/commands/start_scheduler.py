from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from escape_rooms_backend.scheduler import start_scheduler


class Command(BaseCommand):
    help = (
        "Run the expiry scheduler as a dedicated worker until SIGINT (Ctrl+C) or SIGTERM. "
        "Run exactly one per job store, with SCHEDULER_WORKER_MODE=true for the web processes."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.SCHEDULER_WORKER_MODE:
            self.stderr.write(
                self.style.WARNING(
                    "SCHEDULER_WORKER_MODE is false: web servers on this job store compete to run "
                    "the jobs too (the runner lock admits one); set it to keep them out."
                )
            )
        self.stdout.write("Scheduler worker running; press Ctrl+C to stop.")
        self.stdout.flush()
        start_scheduler(blocking=True)
        self.stdout.write("Scheduler worker stopped.")
