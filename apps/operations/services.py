"""The scheduler's heartbeat."""

import os
import socket
from datetime import datetime
from typing import Any

from django.utils import timezone

from .models import SchedulerHeartbeat


def heartbeat_record(
    *,
    started: bool = False,
    stopped: bool = False,
    role: str | None = None,
    sweep_cancelled: int | None = None,
    now: datetime | None = None,
) -> SchedulerHeartbeat:
    """
    Record that this process's scheduler is alive (one row per host and pid).

    ``started`` marks a (re)start, ``stopped`` a clean stop, ``role`` whether
    it runs the jobs (``runner``) or waits to (``standby``), and
    ``sweep_cancelled`` the result of the sweep that just ran.
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
    heartbeat, _ = SchedulerHeartbeat.objects.update_or_create(
        hostname=socket.gethostname(), pid=os.getpid(), defaults=fields
    )
    return heartbeat


def heartbeat_receive(sender: Any, **fields: Any) -> None:
    """Receiver of ``scheduler_heartbeat``: record it (``heartbeat_record``)."""
    heartbeat_record(**{key: value for key, value in fields.items() if key != "signal"})
