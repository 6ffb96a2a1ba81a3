"""
The deadlines this app puts on the timeline: the reminder, and the outbox's delivery.

- ``reminder`` falls due ``HOLD_REMINDER_SECONDS`` before a pending
  reservation's hold ends, and queues the reminder. It moves with the hold
  and goes when the reservation is paid, cancelled or expired, like the
  hold's end. A hold that ends within the lead of being placed, or soon
  after (see ``reminder_due_at``), has none.
- ``delivery`` is keyed by message, not by reservation: the outbox's next
  attempt (``services.outbox_next``). Its job delivers every due message.

Registered in ``MessagingConfig.ready()``.
"""

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.reservations.models import Reservation
from escape_rooms_backend import deadlines, timeline
from escape_rooms_backend.db import chunks

from . import services
from .models import Message

# A reminder job may run this much before its time (the store keeps float
# seconds): it still counts as due.
EARLY = timedelta(milliseconds=500)


def _lead() -> timedelta:
    return timedelta(seconds=settings.HOLD_REMINDER_SECONDS)


def reminder_due_at(reservation: Reservation) -> datetime | None:
    """
    ``HOLD_REMINDER_SECONDS`` before a pending hold ends, or ``None``.

    None too when the reminder would come less than half the lead after the
    hold was placed: a hold shorter than the lead gets no reminder, and none
    comes on the heels of the message that placed it.
    """
    if reservation.status != Reservation.Status.PENDING:
        return None
    lead = _lead()
    if lead <= timedelta(0):
        return None
    at = reservation.expires_at - lead
    if at < reservation.created_at + lead / 2:
        return None
    return at


def reminder_handle(reservation_ids: Sequence[int], by: str) -> list[int]:
    """Queue the reminders of these reservations that are due; move those whose hold moved."""
    now = timezone.now()
    due: list[Reservation] = []
    moved: list[Reservation] = []
    for chunk in chunks(list(reservation_ids)):
        pending = Reservation.objects.filter(
            pk__in=chunk, status=Reservation.Status.PENDING, expires_at__gt=now
        )
        for reservation in pending:
            at = reminder_due_at(reservation)
            if at is None:
                continue
            (due if at <= now + EARLY else moved).append(reservation)
    if due:
        with transaction.atomic():
            services.messages_enqueue([services.reminder_for(r) for r in due])
    if moved:
        timeline.deadlines_sync(moved)
    return []


def reminder_sweep(now: datetime | None, by: str) -> int:
    """Queue each reminder due by ``now`` and not queued yet, of a running hold; return how many."""
    now = now or timezone.now()
    window = Reservation.objects.filter(
        status=Reservation.Status.PENDING, expires_at__gt=now, expires_at__lte=now + _lead()
    )
    due = [r for r in window if (at := reminder_due_at(r)) is not None and at <= now]
    with transaction.atomic():
        return services.messages_enqueue([services.reminder_for(r) for r in due], now=now)


def reminder_scheduled() -> Iterable[tuple[int, datetime]]:
    """``(pk, due)`` of every pending hold still running whose reminder is not queued yet."""
    now = timezone.now()
    queued = set(
        Message.objects.filter(
            kind=Message.Kind.REMINDER, reservation__status=Reservation.Status.PENDING
        ).values_list("key", flat=True)
    )
    running = Reservation.objects.filter(status=Reservation.Status.PENDING, expires_at__gt=now)
    for reservation in running.only("pk", "status", "created_at", "expires_at").iterator(
        chunk_size=5000
    ):
        at = reminder_due_at(reservation)
        if at is not None and services.reminder_for(reservation).key not in queued:
            yield reservation.pk, at


def delivery_handle(message_ids: Sequence[int], by: str) -> list[int]:
    """Deliver every due message (the delivery job is named after one of them)."""
    services.messages_deliver()
    return []


def delivery_sweep(now: datetime | None, by: str) -> int:
    """
    Put the delivery job at the outbox's next deadline; return how many messages are due.

    The sweep never sends itself: a slow mail server would hold it, and with
    it the safety net of every other kind, for as long as it is slow. The
    job runs in the outside executor.
    """
    if not settings.SCHEDULER_EXPIRY_JOBS:
        # The benchmarks' switch: no job would ever run it.
        return services.messages_deliver(now=now).handled
    due = services.messages_due(now or timezone.now()).count()
    services.delivery_schedule_next()
    return due


def delivery_scheduled() -> Iterable[tuple[int, datetime]]:
    """The outbox's one deadline: its next attempt, if anything is pending."""
    upcoming = services.outbox_next()
    return [] if upcoming is None else [upcoming]


REMINDER = deadlines.DeadlineKind(
    name=services.REMINDER,
    job_prefix="remind_reservation:",
    due_at=reminder_due_at,
    handle=reminder_handle,
    sweep=reminder_sweep,
    scheduled=reminder_scheduled,
)

DELIVERY = deadlines.DeadlineKind(
    name=services.DELIVERY,
    job_prefix="deliver_message:",
    due_at=None,
    handle=delivery_handle,
    sweep=delivery_sweep,
    scheduled=delivery_scheduled,
    fold=True,
    # A slow or unreachable mail server keeps these threads busy, not the
    # ones that end holds.
    executor=deadlines.OUTSIDE_EXECUTOR,
)


def register() -> None:
    """Register this app's deadline kinds."""
    deadlines.register(REMINDER)
    deadlines.register(DELIVERY)
