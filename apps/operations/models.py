from django.db import models
from django.utils import timezone


class SchedulerHeartbeat(models.Model):
    """
    The last sign of life of one scheduler process (host and pid).

    Written when the scheduler starts, after every sweep and when it stops
    cleanly; read by ``scheduler_status``, ``/healthz`` and the admin banner.
    """

    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    role = models.CharField(
        max_length=10, default="runner", help_text="runner (runs the jobs) or standby"
    )
    started_at = models.DateTimeField(default=timezone.now)
    beat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    last_sweep_at = models.DateTimeField(null=True, blank=True)
    last_sweep_cancelled = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-beat_at"]
        constraints = [
            models.UniqueConstraint(fields=["hostname", "pid"], name="heartbeat_unique_process")
        ]

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid}"
