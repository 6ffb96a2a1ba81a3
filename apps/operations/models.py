from django.db import models
from django.utils import timezone


class SchedulerHeartbeat(models.Model):
    """
    The last sign of life of one scheduler process (host and pid).

    Written when the scheduler starts, after every sweep and when it stops
    cleanly; read by ``scheduler_status``, ``/healthz``, ``/metrics`` and the
    admin banner. ``sweeps``, ``sweep_seconds``, ``takeovers`` and the counts
    of ``job_lateness`` only grow:
    summed over every row they are the venue's counters, whichever process
    ran the sweeps or took the runner lock.
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
    last_sweep_seconds = models.FloatField(
        null=True, blank=True, help_text="How long the last sweep took, seconds."
    )
    sweeps = models.PositiveIntegerField(default=0, help_text="Sweeps this process ran.")
    sweep_seconds = models.FloatField(default=0.0, help_text="Their total duration, seconds.")
    takeovers = models.PositiveIntegerField(
        default=0, help_text="Times this process took the runner lock."
    )
    job_lateness = models.JSONField(
        default=dict,
        blank=True,
        help_text="Per deadline kind, how late its jobs ran here: bucket counts, count, sum.",
    )

    class Meta:
        ordering = ["-beat_at"]
        constraints = [
            models.UniqueConstraint(fields=["hostname", "pid"], name="heartbeat_unique_process")
        ]

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid}"
