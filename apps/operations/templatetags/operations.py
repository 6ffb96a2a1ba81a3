from datetime import timedelta

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

from apps.operations.selectors import (
    heartbeat_age,
    heartbeat_stale_after,
    latest_heartbeat,
    overdue_holds,
)

register = template.Library()


@register.simple_tag
def expiry_warnings() -> list[str]:
    """Warnings for the admin index: a silent scheduler, holds past their expiry."""
    now = timezone.now()
    warnings = []
    age = heartbeat_age(latest_heartbeat(), now)
    if age is None:
        warnings.append(
            "No expiry scheduler has reported in: unpaid holds are not being released. "
            "Start one (see docs/scheduler.md) and check manage.py scheduler_status."
        )
    elif age > heartbeat_stale_after():
        since = timesince(now - timedelta(seconds=age), now)
        warnings.append(
            f"The expiry scheduler's last heartbeat was {since} ago: it may have stopped. "
            "Check manage.py scheduler_status."
        )
    overdue = overdue_holds(now)
    if overdue.count:
        warnings.append(
            f"{overdue.count} pending reservation(s) are past their expiry, the oldest by "
            f"{overdue.oldest_age_seconds:.0f} s; they read as expired but still wait for a "
            "job or the sweep. manage.py reconcile_expiry_jobs --fix releases them now."
        )
    return warnings
