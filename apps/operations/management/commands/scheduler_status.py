from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.operations.models import SchedulerHeartbeat
from apps.operations.selectors import (
    OUTBOX_BACKLOG,
    heartbeat_stale_after,
    outbox_state,
    running_schedulers,
    scheduler_status_get,
)


def _when(value: datetime | None) -> str:
    return "never" if value is None else timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


class Command(BaseCommand):
    help = (
        "Show whether an expiry scheduler is running and where, its last heartbeat and sweep, "
        "the deadline jobs in the store per kind, overdue holds, the expiry lateness of the "
        "last hour and the customer messages waiting to be sent. "
        "Exits 1 when no scheduler is running or the job store cannot be read; a backlog of "
        "messages is a warning only."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        status = scheduler_status_get()
        beat = status.heartbeat or SchedulerHeartbeat.objects.order_by("-beat_at").first()
        if beat is None:
            scheduler = "not running (no scheduler has ever reported)"
        elif status.heartbeat is None:
            scheduler = (
                f"not running (last: {beat.hostname} pid {beat.pid}, "
                f"stopped {_when(beat.stopped_at)})"
            )
        else:
            state = "running" if status.running else "NOT RESPONDING"
            scheduler = (
                f"{state} on {beat.hostname} pid {beat.pid}, started {_when(beat.started_at)}, "
                f"last heartbeat {_ago(status.heartbeat_age_seconds)} ago "
                f"(stale after {_ago(heartbeat_stale_after())})"
            )
        if status.job_store_error:
            jobs = f"job store failing: {status.job_store_error}"
        else:
            per_kind = status.jobs_per_kind or {}
            jobs = ", ".join(f"{count} {kind}" for kind, count in per_kind.items()) or "0"
            jobs += f"; next due {_when(status.next_run_time)}"
        overdue = f"{status.overdue.count}"
        if status.overdue.count:
            overdue += f", oldest {_ago(status.overdue.oldest_age_seconds)} past expires_at"
        swept = (
            SchedulerHeartbeat.objects.exclude(last_sweep_at=None)
            .order_by("-last_sweep_at")
            .first()
        )
        if swept is None or swept.last_sweep_at is None:
            sweep = "none recorded"
        else:
            sweep = f"{_when(swept.last_sweep_at)}, cancelled {swept.last_sweep_cancelled}"
            if swept != beat:
                sweep += f" (by {swept.hostname} pid {swept.pid})"
        late = status.lateness
        lateness = "no expiries"
        if late.count:
            lateness = f"p50 {_ms(late.p50)}, p95 {_ms(late.p95)}, max {_ms(late.max)}"
            lateness += f" over {late.count} expiries"
        backlog = status.messages
        messages = f"{backlog.pending} pending ({backlog.failing} failing), {backlog.failed} failed"
        if backlog.pending:
            messages += (
                f"; oldest pending queued {_ago(backlog.oldest_age_seconds(status.now))} ago"
            )
        for label, value in [
            ("Scheduler", scheduler),
            ("Deadline jobs", jobs),
            ("Overdue holds", overdue),
            ("Last sweep", sweep),
            ("Lateness (1 h)", lateness),
            ("Messages", messages),
        ]:
            self.stdout.write(f"{label + ':':<16}{value}")
        standbys = running_schedulers(status.now, role="standby")
        if standbys:
            self.stdout.write(
                f"{'Standbys:':<16}" + ", ".join(f"{b.hostname} pid {b.pid}" for b in standbys)
            )
        runners = running_schedulers(status.now)
        if len(runners) > 1:
            where = ", ".join(f"{b.hostname} pid {b.pid}" for b in runners)
            self.stdout.write(
                self.style.WARNING(
                    f"Warning: {len(runners)} schedulers run jobs ({where}); run exactly one "
                    "per job store (docs/scheduler.md)."
                )
            )
        if outbox_state(backlog, status.now) == OUTBOX_BACKLOG:
            self.stdout.write(
                self.style.WARNING(
                    "Warning: messages wait to be sent; is the mail server reachable? The "
                    "admin's Messages show each one's last error (docs/messages.md)."
                )
            )
        if backlog.failed:
            self.stdout.write(
                self.style.WARNING(
                    f"Warning: {backlog.failed} message(s) given up on; staff can send them again "
                    "with the admin's retry action."
                )
            )
        if status.job_store_error:
            raise CommandError("The job store cannot be read.")
        if not status.running:
            raise CommandError("No scheduler is running: holds are not released promptly.")
