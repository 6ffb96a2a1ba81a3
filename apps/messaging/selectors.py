"""Reads of the outbox that several interfaces share."""

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Min, Q

from .models import Message


@dataclass(frozen=True)
class Backlog:
    pending: int  # queued, not sent yet
    failing: int  # of those, the ones whose last attempt failed
    failed: int  # given up; staff may retry them
    oldest_pending_at: datetime | None  # when the oldest pending one was queued

    def oldest_age_seconds(self, now: datetime) -> float | None:
        if self.oldest_pending_at is None:
            return None
        return max(0.0, (now - self.oldest_pending_at).total_seconds())


def outbox_backlog() -> Backlog:
    """The outbox in one query: pending, failing and failed messages, and the oldest pending."""
    pending = Q(status=Message.Status.PENDING)
    # Only the open ones (partial indexes of their own): sent ones pile up for ever.
    open_ = Message.objects.filter(status__in=[Message.Status.PENDING, Message.Status.FAILED])
    row = open_.aggregate(
        pending=Count("pk", filter=pending),
        failing=Count("pk", filter=pending & Q(attempts__gt=0) & ~Q(last_error="")),
        failed=Count("pk", filter=Q(status=Message.Status.FAILED)),
        oldest=Min("created_at", filter=pending),
    )
    return Backlog(row["pending"], row["failing"], row["failed"], row["oldest"])


@dataclass(frozen=True)
class Due:
    count: int  # pending messages whose next attempt is due
    oldest_due_at: datetime | None  # the earliest of their next attempts

    def oldest_age_seconds(self, now: datetime) -> float:
        """Seconds the longest-waiting due message has waited past its attempt; 0 when none."""
        if self.oldest_due_at is None:
            return 0.0
        return max(0.0, (now - self.oldest_due_at).total_seconds())


def outbox_due(now: datetime) -> Due:
    """Pending messages due for an attempt at ``now`` (one query on the runner's own index)."""
    row = Message.objects.filter(status=Message.Status.PENDING, next_attempt_at__lte=now).aggregate(
        count=Count("pk"), oldest=Min("next_attempt_at")
    )
    return Due(row["count"], row["oldest"])
