"""The scheduler's heartbeat."""

import os
import socket
from datetime import datetime
from typing import Any

from django.db.models import F
from django.utils import timezone

from .models import SchedulerHeartbeat


def heartbeat_record(
    *,
    started: bool = False,
    stopped: bool = False,
    role: str | None = None,
    took_over: bool = False,
    sweep_cancelled: int | None = None,
    sweep_seconds: float | None = None,
    job_lateness: dict[str, list[float]] | None = None,
    now: datetime | None = None,
) -> SchedulerHeartbeat:
    """
    Record that this process's scheduler is alive (one row per host and pid).

    ``started`` marks a (re)start, ``stopped`` a clean stop, ``role`` whether
    it runs the jobs (``runner``) or waits to (``standby``), ``took_over``
    that it has just taken the runner lock (counted in ``takeovers``), and
    ``sweep_cancelled`` the result of the sweep that just ran, which took
    ``sweep_seconds`` (counted in ``sweeps`` and ``sweep_seconds``).
    ``job_lateness`` replaces the process's own cumulative counts of its
    deadline jobs' lateness (``JobLateness.snapshot()``).
    """
    now = now or timezone.now()
    fields: dict = {"beat_at": now}
    if role is not None:
        fields["role"] = role
    if started:
        fields |= {"started_at": now, "stopped_at": None}
    if stopped:
        fields["stopped_at"] = now
    if sweep_cancelled is not None:
        fields |= {"last_sweep_at": now, "last_sweep_cancelled": sweep_cancelled}
    if sweep_seconds is not None:
        fields["last_sweep_seconds"] = sweep_seconds
    if job_lateness is not None:
        fields["job_lateness"] = job_lateness
    heartbeat, _ = SchedulerHeartbeat.objects.update_or_create(
        hostname=socket.gethostname(), pid=os.getpid(), defaults=fields
    )
    # Counters grow in the database, in one statement: never read, add, write.
    counts: dict = {}
    if sweep_seconds is not None:
        counts |= {"sweeps": F("sweeps") + 1, "sweep_seconds": F("sweep_seconds") + sweep_seconds}
    if took_over:
        counts["takeovers"] = F("takeovers") + 1
    if counts:
        SchedulerHeartbeat.objects.filter(pk=heartbeat.pk).update(**counts)
        heartbeat.refresh_from_db()
    return heartbeat


def heartbeat_receive(sender: Any, **fields: Any) -> None:
    """Receiver of ``scheduler_heartbeat``: record it (``heartbeat_record``)."""
    heartbeat_record(**{key: value for key, value in fields.items() if key != "signal"})
