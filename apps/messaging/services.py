"""
Customer messages: queued with the change that causes them, delivered after commit.

The outbox: ``messages_enqueue`` writes ``Message`` rows in the caller's
transaction, so that a message exists exactly when its change committed, and
after commit wakes the runner with a delivery job due now.
``messages_deliver`` (that job, and the sweep) claims due messages one at a
time with a conditional UPDATE, renders and sends each outside any
transaction, and marks it sent; a message the mail server refused, or could
not take because it was down, is tried again later with a doubling backoff.
A crash between the server's acceptance and the mark leaves the message
claimed: once the claim lapses it is sent again with the same ``Message-ID``.

The outbox has one deadline at a time, its earliest pending message's next
attempt: the delivery job delivers every due message, whichever message it
is named after.
"""

import contextlib
import logging
import math
import smtplib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import make_msgid, parseaddr
from typing import Any

from django.conf import settings
from django.core.mail import get_connection
from django.db import OperationalError, connection, transaction
from django.db.models import F, Q
from django.db.models.constants import OnConflict
from django.db.models.functions import Greatest
from django.utils import timezone

from apps.payments.models import Payment
from apps.reservations import offers
from apps.reservations.models import Reservation, WaitingEntry
from apps.reservations.selectors import reservation_moves
from apps.rooms.models import TimeSlot
from escape_rooms_backend import deadlines, timeline
from escape_rooms_backend.db import advisory_xact_lock, ids_param, in_ids

from . import compose
from .models import Message

logger = logging.getLogger(__name__)

Kind = Message.Kind
Status = Message.Status

# The deadline kinds this app registers (``apps.messaging.deadlines``).
DELIVERY = "delivery"
REMINDER = "reminder"

MARK_ATTEMPTS = 5  # tries to record a send's outcome, 0.5 s apart, doubling
DELIVERY_BATCH = 100  # messages claimed, and sent over one connection, at a time
SENT_LOG = "Sent %s message %s to %s"
RETRY_LOG = "Could not send %s message %s (attempt %d): %s; trying again at %s"
GAVE_UP_LOG = "Gave up on %s message %s after %d attempts: %s"
SERVER_DOWN_LOG = "The mail server is unreachable: %s; every due message waits until %s"

FIND_BOOKING_LIMITED = (
    "We have had too many requests for booking links for this address or from your "
    "connection. Try again in {wait}."
)
# The answer to every accepted request, whether the address has bookings or not.
FIND_BOOKING_SENT = (
    "If this address has bookings with us, we have sent it their links. It may take a minute."
)


@dataclass(frozen=True)
class Outgoing:
    """A message to queue: ``key`` names it, so that queueing it twice queues it once."""

    key: str
    kind: str
    reservation_id: int | None = None
    to_email: str = ""
    waiting_entry_id: int | None = None
    context: dict[str, Any] = field(default_factory=dict)
    client_address: str | None = None


@dataclass
class Delivered:
    """What ``messages_deliver`` did: messages sent, put off, given up on and not needed."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def handled(self) -> int:
        return self.sent + self.retrying + self.failed + self.skipped


# ---------------------------------------------------------------------------
# Queueing
# ---------------------------------------------------------------------------


def message_for_state(reservation: Reservation) -> Outgoing | None:
    """
    The message a reservation's current state calls for, or ``None``.

    Reads ``pk``, ``status`` and ``cancellation_reason`` only (a bulk change
    sends instances with little else loaded; ``is_offer`` when pending).
    Pending: the hold was placed, or a waiting party was offered the slot;
    paid: confirmed (on time or late); cancelled: lapsed, or cancelled by the
    customer, staff or a closure (``cancelled``, which says which). Each is
    keyed by the reservation, so a reservation changed again (a hold kept
    longer) queues nothing new.
    """
    if reservation.status == Reservation.Status.PENDING:
        kind = Kind.OFFER if reservation.is_offer else Kind.HOLD_PLACED
    elif reservation.status == Reservation.Status.PAID:
        kind = Kind.CONFIRMED
    elif reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED:
        kind = Kind.HOLD_LAPSED
    elif reservation.status == Reservation.Status.CANCELLED:
        kind = Kind.CANCELLED
    else:
        return None
    return Outgoing(key=f"{kind}:{reservation.pk}", kind=kind, reservation_id=reservation.pk)


def reminder_for(reservation: Reservation) -> Outgoing:
    """The reminder before the hold's current end: one per reservation and hold end."""
    ends = reservation.expires_at
    return Outgoing(
        key=f"{Kind.REMINDER}:{reservation.pk}:{ends.timestamp():.0f}",
        kind=Kind.REMINDER,
        reservation_id=reservation.pk,
        context={"expires_at": ends.isoformat()},
    )


def refund_due_for(payment: Payment) -> Outgoing | None:
    """The message a refused payment calls for: one per payment with a reservation to write to."""
    if payment.outcome != Payment.Outcome.REFUND_DUE or payment.reservation_id is None:
        return None
    return Outgoing(
        key=f"{Kind.REFUND_DUE}:{payment.pk}",
        kind=Kind.REFUND_DUE,
        reservation_id=payment.reservation_id,
        context={
            "amount": str(payment.amount),
            "currency": payment.currency,
            "reason": payment.reason,
        },
    )


def moved_message_for(reservation: Reservation, from_slot: TimeSlot) -> Outgoing:
    """
    The message a move to another time slot calls for: one per move.

    Its context names the time it left (``from``, ISO 8601) and the slot it
    moved to (``to_slot``): a message about a move that a later one
    superseded is not sent.
    """
    moves = reservation_moves(reservation.pk)
    return Outgoing(
        key=f"{Kind.MOVED}:{reservation.pk}:{moves}",
        kind=Kind.MOVED,
        reservation_id=reservation.pk,
        context={"from": from_slot.starts_at.isoformat(), "to_slot": reservation.time_slot_id},
    )


# What each notice of ``waiting_list_changed`` tells the parties.
WAITING_NOTICES = {
    offers.JOINED: Kind.WAITING,
    offers.SLOT_BOOKED: Kind.SLOT_BOOKED,
    offers.SLOT_FREE: Kind.SLOT_FREE,
    offers.SLOT_CLOSED: Kind.SLOT_CLOSED,
}


def waiting_messages_for(
    entries: Sequence[WaitingEntry],
    notice: str,
    booking: Reservation | None = None,
    reason: str = "",
) -> list[Outgoing]:
    """
    The messages a waiting-list notice calls for: one per party.

    Keyed by the place on the list (and, for ``slot_booked``, by the booking),
    so that a notice seen twice queues nothing new. ``reason``: a closure's,
    for ``slot_closed``. Raises ``KeyError`` for an unknown notice.
    """
    kind = WAITING_NOTICES[notice]
    suffix = f":{booking.pk}" if booking is not None else ""
    return [
        Outgoing(
            key=f"{kind}:{entry.pk}{suffix}",
            kind=kind,
            to_email=entry.customer_email,
            waiting_entry_id=entry.pk,
            context={"reason": reason} if reason else {},
        )
        for entry in entries
    ]


def messages_enqueue(outgoing: Sequence[Outgoing], *, now: datetime | None = None) -> int:
    """
    Queue messages in the current transaction; one whose key is queued already is skipped.

    Returns how many it queued. After the transaction commits (at once
    outside one), a delivery job due now wakes the runner. Call inside the
    transaction of the change that causes the messages, so that both commit
    or neither does.
    """
    unique = {item.key: item for item in outgoing}
    if not unique:
        return 0
    now = now or timezone.now()
    # One multi-row statement, not model instances: a burst of expiries
    # queues a thousand messages inside each of its transactions.
    ops = connection.ops
    at = ops.adapt_datetimefield_value(now)
    domain = _message_id_domain()
    context = Message._meta.get_field("context")
    address = Message._meta.get_field("client_address")
    rows = [
        (
            item.key,
            item.kind,
            item.reservation_id,
            item.to_email,
            context.get_db_prep_save(item.context, connection),
            make_msgid(domain=domain),
            Status.PENDING.value,
            at,
            at,
            0,
            "",
            "",
            address.get_db_prep_save(item.client_address, connection),
            item.waiting_entry_id,
        )
        for item in unique.values()
    ]
    with connection.cursor() as cursor:
        cursor.executemany(_insert(f"VALUES ({', '.join(['%s'] * len(rows[0]))})"), rows)
        queued = max(cursor.rowcount, 0)
    if queued:
        _wake_after_commit(next(iter(unique)))
    return queued


def _insert(rows_sql: str) -> str:
    """The INSERT of outbox rows from ``rows_sql`` (``VALUES ...`` or ``SELECT ...``)."""
    # A key queued already (a change seen twice, or a concurrent
    # transaction's) is that message's: ignored, not an error.
    ops = connection.ops
    return (
        f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} {_TABLE} ({_COLUMNS}) "
        f"{rows_sql} {ops.on_conflict_suffix_sql([], OnConflict.IGNORE, [], [])}"
    )


def _wake_after_commit(key: str) -> None:
    """With the commit, a delivery job due now, named after the message queued as ``key``."""
    if not settings.SCHEDULER_EXPIRY_JOBS:
        return  # the benchmarks' switch: no jobs (the sweep delivers itself)
    pk = Message.objects.filter(key=key).values_list("pk", flat=True).first()
    if pk is not None:
        _wake_with_commit(pk)


def _wake_with_commit(message_id: int) -> None:
    """With the commit, a delivery job due now, named after message ``message_id``."""
    if settings.SCHEDULER_EXPIRY_JOBS:  # the benchmarks' switch: off, the sweep delivers
        timeline.deadline_in_step(deadlines.kind_named(DELIVERY), message_id, timezone.now())


_TABLE = Message._meta.db_table
_COLUMNS = ", ".join(
    Message._meta.get_field(name).column  # type: ignore[union-attr,misc]  # concrete fields
    for name in (
        "key",
        "kind",
        "reservation",
        "to_email",
        "context",
        "message_id",
        "status",
        "created_at",
        "next_attempt_at",
        "attempts",
        "subject",
        "last_error",
        "client_address",
        "waiting_entry",
    )
)


def messages_enqueue_for_states(
    reservations: Sequence[Reservation], *, now: datetime | None = None
) -> int:
    """
    Queue the message each reservation's state calls for (``message_for_state``).

    The bulk form of ``messages_enqueue``, for the receiver of
    ``reservations_changed``: one ``INSERT ... SELECT`` per kind, the rows
    built by the database, so that a burst's expiry
    transactions stay short. Keys queued already are skipped. Returns how
    many it queued; after commit a delivery job wakes the runner.
    """
    by_kind: dict[str, list[int]] = {}
    for reservation in reservations:
        if (item := message_for_state(reservation)) is not None:
            by_kind.setdefault(item.kind, []).append(reservation.pk)
    if not by_kind:
        return 0
    ops = connection.ops
    at = ops.adapt_datetimefield_value(now or timezone.now())
    # Message-IDs unique per key: <hold_lapsed.42.(this call)@domain>.
    token = f"{uuid.uuid4().hex[:16]}@{_message_id_domain()}>"
    postgresql = connection.vendor == "postgresql"
    empty_json = "CAST(%s AS jsonb)" if postgresql else "%s"
    reservation_id = "CAST(r.id AS TEXT)"
    queued: list[int] = []
    with connection.cursor() as cursor:
        for kind, pks in by_kind.items():
            cursor.execute(
                _insert(
                    f"SELECT %s || {reservation_id}, %s, r.id, '', {empty_json}, "  # noqa: S608 (the model's names; values bound)
                    f"%s || {reservation_id} || %s, %s, %s, %s, 0, '', '', NULL, NULL "
                    f"FROM {Reservation._meta.db_table} r WHERE r.id {in_ids()}"
                )
                + " RETURNING id",
                [
                    f"{kind}:",
                    kind,
                    "{}",
                    f"<{kind}.",
                    f".{token}",
                    Status.PENDING.value,
                    at,
                    at,
                    ids_param(pks),
                ],
            )
            queued += [row[0] for row in cursor.fetchall()]
    if queued:
        _wake_with_commit(min(queued))
    return len(queued)


def _message_id_domain() -> str:
    address = parseaddr(settings.DEFAULT_FROM_EMAIL)[1]
    return address.rpartition("@")[2] or "localhost"


def delivery_schedule(message_id: int, at: datetime) -> None:
    """Put the outbox's delivery job, named after message ``message_id``, at ``at``."""
    if not settings.SCHEDULER_EXPIRY_JOBS:
        return  # the benchmarks' switch: no jobs (the sweep delivers itself)
    timeline.deadline_schedule(deadlines.kind_named(DELIVERY), message_id, at)


# ---------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------


def retry_delay(attempts: int) -> timedelta:
    """The wait after ``attempts`` failed attempts: ``MESSAGE_RETRY_SECONDS`` doubling, capped."""
    seconds = settings.MESSAGE_RETRY_SECONDS * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, settings.MESSAGE_RETRY_MAX_SECONDS))


def _unclaimed(now: datetime) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lte=now)


def messages_due(now: datetime) -> Any:
    """Pending messages due by ``now`` and not in flight, earliest first."""
    return (
        Message.objects.filter(status=Status.PENDING, next_attempt_at__lte=now)
        .filter(_unclaimed(now))
        .order_by("next_attempt_at", "pk")
    )


def messages_deliver(*, now: datetime | None = None) -> Delivered:
    """
    Send every message due by ``now`` (default: the clock), earliest first.

    Claims each message just before sending it (one conditional UPDATE:
    another delivery running beside this one never sends it too, and a claim
    covers one send, never a whole batch that a slow server could make
    outlast it), sends up to ``DELIVERY_BATCH`` over one connection, and
    holds no database lock or transaction while the mail server answers. A
    message no longer needed (a reminder for a hold that was paid) is marked
    skipped, not sent. When the server cannot be reached the pass stops
    after one attempt, and every due message waits for the same next one;
    when the process stops, the pass stops between two messages. Afterwards
    the delivery job is put at the outbox's next deadline. Never raises for
    a mail server's failure.
    """
    result = Delivered()
    retry_at: datetime | None = None
    while retry_at is None and not timeline.process_stopping():
        at = now or timezone.now()
        due = list(messages_due(at).values_list("pk", flat=True)[:DELIVERY_BATCH])
        if due:
            retry_at = _deliver(due, result, now)
        if len(due) < DELIVERY_BATCH:
            break
    if retry_at is not None:
        # Down for one is down for all: the rest wait as long, untried.
        waiting = messages_due(retry_at).filter(next_attempt_at__lt=retry_at)
        waiting.update(next_attempt_at=retry_at)
    delivery_schedule_next()
    return result


def _claim(pk: int, now: datetime) -> Message | None:
    """Claim a due message for one send; ``None`` when it is not (any more) this pass's."""
    claim = now + timedelta(seconds=settings.MESSAGE_CLAIM_SECONDS)
    claimed = (
        Message.objects.filter(pk=pk, status=Status.PENDING, next_attempt_at__lte=now)
        .filter(_unclaimed(now))
        .update(claimed_until=claim, attempts=F("attempts") + 1)
    )
    if not claimed:
        return None
    return Message.objects.select_related(
        "reservation__time_slot__room", "waiting_entry__time_slot__room"
    ).get(pk=pk)


def _deliver(pks: list[int], result: Delivered, now: datetime | None) -> datetime | None:
    """Send due messages over one connection; return the next attempt if the server is down."""
    connection = get_connection(timeout=settings.EMAIL_TIMEOUT)
    try:
        for pk in pks:
            # Holds being freed go first: a mail can wait that long.
            timeline.wait_while_urgent()
            if timeline.process_stopping():
                return None  # the rest stay due, unclaimed, for the next runner
            message = _claim(pk, now or timezone.now())
            if message is None:
                continue
            try:
                email = compose.message_email(message, now)
            except Exception as exc:
                logger.exception("Could not compose %s message %s", message.kind, message.pk)
                _failed(message, exc, result, now)
                continue
            if email is None:
                _mark(message, status=Status.SKIPPED)
                result.skipped += 1
                continue
            email.connection = connection
            try:
                # Opened here, once: a backend that send() had to open itself
                # would close it after each message. Down here is down for all.
                connection.open()
                email.send()
            except smtplib.SMTPRecipientsRefused as exc:
                permanent = all(code >= 500 for code, _ in exc.recipients.values())
                _failed(message, exc, result, now, give_up=permanent)
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                # 5xx: the server will not take it, however often it is asked.
                _failed(message, exc, result, now, give_up=exc.smtp_code >= 500)
            except OSError as exc:
                # Refused, timed out, disconnected: the server, not this message.
                _failed(message, exc, result, now, quiet=True)
                retry_at = (now or timezone.now()) + retry_delay(message.attempts)
                logger.warning(SERVER_DOWN_LOG, exc, retry_at.isoformat())
                return retry_at
            except Exception as exc:
                # A message Django will not send (a header it refuses, say):
                # this message's problem, counted like a refusal.
                logger.exception("Could not send %s message %s", message.kind, message.pk)
                _failed(message, exc, result, now, quiet=True)
            else:
                _mark(
                    message,
                    status=Status.SENT,
                    sent_at=now or timezone.now(),
                    subject=email.subject[:200],
                    to_email=email.to[0],
                    last_error="",
                )
                result.sent += 1
                logger.info(SENT_LOG, message.kind, message.pk, email.to[0])
    finally:
        with contextlib.suppress(Exception):  # a connection that failed to close is gone
            connection.close()
    return None


def _mark(message: Message, **changes: Any) -> None:
    """
    Record the outcome of a send; a busy database is waited out a few times.

    Were it given up, the message would stay claimed and, once the claim
    lapsed, be sent again (with its ``Message-ID``): the server took it.
    """
    for attempt in range(MARK_ATTEMPTS):
        try:
            Message.objects.filter(pk=message.pk, status=Status.PENDING).update(
                claimed_until=None, **changes
            )
            return
        except OperationalError:
            if attempt == MARK_ATTEMPTS - 1:
                raise
            logger.warning("Database busy marking message %s; trying again", message.pk)
            time.sleep(0.5 * 2**attempt)


def _failed(
    message: Message,
    exc: Exception,
    result: Delivered,
    now: datetime | None,
    *,
    give_up: bool = False,
    quiet: bool = False,
) -> None:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    if give_up or message.attempts >= settings.MESSAGE_MAX_ATTEMPTS:
        _mark(message, status=Status.FAILED, last_error=error)
        result.failed += 1
        logger.error(GAVE_UP_LOG, message.kind, message.pk, message.attempts, error)
        return
    retry_at = (now or timezone.now()) + retry_delay(message.attempts)
    _mark(message, next_attempt_at=retry_at, last_error=error)
    result.retrying += 1
    if not quiet:  # the server being down is logged once for them all
        logger.warning(
            RETRY_LOG, message.kind, message.pk, message.attempts, error, retry_at.isoformat()
        )


def outbox_next() -> tuple[int, datetime] | None:
    """``(pk, due)`` of the pending message to try next: the outbox's one deadline, or ``None``."""
    pending = Message.objects.filter(status=Status.PENDING)
    # A message in flight is due again only once its claim lapses: the
    # earliest not in flight, or the earliest claim to lapse, whichever first.
    candidates = [
        pending.filter(claimed_until__isnull=True)
        .order_by("next_attempt_at", "pk")
        .values_list("pk", "next_attempt_at")
        .first(),
        pending.filter(claimed_until__isnull=False)
        .annotate(due=Greatest("next_attempt_at", "claimed_until"))
        .order_by("due", "pk")
        .values_list("pk", "due")
        .first(),
    ]
    found = [c for c in candidates if c is not None]
    return min(found, key=lambda c: c[1]) if found else None


def delivery_schedule_next() -> None:
    """
    Put the delivery job at the outbox's next deadline, and remove the others not yet due.

    With nothing pending, no delivery job is left: one scheduled by a pass
    that found a message in flight would otherwise wait for its claim to
    lapse, to find nothing.
    """
    if not settings.SCHEDULER_EXPIRY_JOBS:
        return
    upcoming = outbox_next()
    kind = deadlines.kind_named(DELIVERY)
    try:
        stale = [
            pk
            for pk in timeline.stored_jobs(kind, missing_ok=True)
            if upcoming is None or pk != upcoming[0]
        ]
    except Exception:
        logger.exception("Could not read the delivery jobs; a stale one finds nothing to do")
        stale = []
    if stale:
        timeline.deadlines_unschedule(kind, stale)
    if upcoming is not None:
        pk, at = upcoming
        delivery_schedule(pk, at)


def message_retry(*, message: Message, now: datetime | None = None) -> bool:
    """
    Staff's *retry*: send a failed or pending message again as soon as possible.

    Returns False when it was sent or skipped already (nothing to retry), or
    is being sent right now. A failed message gets a fresh round of
    ``MESSAGE_MAX_ATTEMPTS`` attempts.
    """
    now = now or timezone.now()
    # Not one in flight: its delivery decides, and a second would send it twice.
    retryable = Q(status=Status.FAILED) | (Q(status=Status.PENDING) & _unclaimed(now))
    updated = Message.objects.filter(retryable, pk=message.pk).update(
        status=Status.PENDING, next_attempt_at=now, attempts=0, claimed_until=None
    )
    if updated:
        transaction.on_commit(lambda: delivery_schedule(message.pk, now))
    return bool(updated)


# ---------------------------------------------------------------------------
# Find my booking
# ---------------------------------------------------------------------------


class TooManyRequests(Exception):
    """Refused by the rate limit; ``retry_after`` in seconds."""

    def __init__(self, *, retry_after: int) -> None:
        # Whole minutes, rounded up: never sooner than the limit allows.
        minutes = max(1, math.ceil(retry_after / 60))
        wait = "1 minute" if minutes == 1 else f"{minutes} minutes"
        message = FIND_BOOKING_LIMITED.format(wait=wait)
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


FIND_BOOKING_WINDOW = timedelta(hours=1)


def bookings_link_request(
    *, email: str, client_address: str | None, now: datetime | None = None
) -> None:
    """
    Queue a message to ``email`` with the links to its current bookings.

    The same for every address, known or not: whether the address has
    bookings is decided when the message is sent (none: it is skipped), so
    that the answer tells nobody whether it has. At most
    ``FIND_BOOKING_PER_HOUR`` requests per email address and per client
    address an hour; raises ``TooManyRequests``
    beyond that.
    """
    now = now or timezone.now()
    email = email.strip()
    recent = Message.objects.filter(kind=Kind.BOOKINGS, created_at__gt=now - FIND_BOOKING_WINDOW)
    with transaction.atomic():
        advisory_xact_lock(
            f"find-booking:{email.lower()}",
            f"find-booking:{client_address}" if client_address else "",
        )
        for asked in (
            recent.filter(to_email__iexact=email),
            recent.filter(client_address=client_address) if client_address else None,
        ):
            if asked is None:
                continue
            times = list(asked.order_by("created_at").values_list("created_at", flat=True))
            if len(times) >= settings.FIND_BOOKING_PER_HOUR:
                frees = times[len(times) - settings.FIND_BOOKING_PER_HOUR] + FIND_BOOKING_WINDOW
                raise TooManyRequests(retry_after=max(1, math.ceil((frees - now).total_seconds())))
        messages_enqueue(
            [
                Outgoing(
                    key=f"{Kind.BOOKINGS}:{uuid.uuid4()}",
                    kind=Kind.BOOKINGS,
                    to_email=email,
                    client_address=client_address,
                )
            ],
            now=now,
        )
