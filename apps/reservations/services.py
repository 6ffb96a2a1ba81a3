"""
Business operations on reservations: reserve, pay, cancel, expire.

Every interface (API, pages, admin, scheduler jobs, scripts) calls these and
nothing else to change a reservation. Each status change is one conditional
UPDATE (compare-and-set on ``status`` and the hold) that changes the time slot
in the same transaction, so that pay and expire racing on one reservation end
with exactly one winner. After every change the services send
``reservations_changed`` (``apps.reservations.signals``) with the changed
reservations; its receiver keeps their deadlines' jobs in step after commit.

All times are timezone-aware datetimes; ``now`` defaults to ``timezone.now()``
and is injected by tests.
"""

import enum
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Value
from django.db.models.functions import Upper
from django.utils import timezone

from apps.rooms.models import Closure, Room, TimeSlot
from escape_rooms_backend import timeline
from escape_rooms_backend.db import advisory_xact_lock, ids_param, in_ids

from . import errors, offers
from .models import Reservation, ReservationEvent, WaitingEntry
from .signals import reservations_changed

logger = logging.getLogger(__name__)

Status = Reservation.Status
Reason = Reservation.CancellationReason
Cause = ReservationEvent.Cause
# The audit trail's words for a waiting-list offer taken or lapsed.
OFFER_TAKEN = "Waiting-list offer taken. "
OFFER_LAPSED = "Waiting-list offer lapsed"


class ExpireOutcome(enum.Enum):
    """What ``reservation_expire`` did; only ``EXPIRED`` changed anything."""

    EXPIRED = "expired"
    NOT_DUE = "not_due"
    ALREADY_PAID = "already_paid"
    ALREADY_CANCELLED = "already_cancelled"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class ExpireResult:
    outcome: ExpireOutcome
    reservation: Reservation | None

    @property
    def expired(self) -> bool:
        return self.outcome is ExpireOutcome.EXPIRED


def _transition(
    reservation: Reservation,
    *,
    expect: dict[str, Any],
    at: datetime,
    cause: str,
    actor: AbstractBaseUser | None = None,
    detail: str = "",
    **changes: Any,
) -> bool:
    """
    Apply ``changes`` to ``reservation`` only if its row still matches ``expect``.

    Returns whether the row changed. On success it records a
    ``ReservationEvent`` (from ``expect["status"]``), updates the instance in
    memory and sends ``reservations_changed``. Call inside
    ``transaction.atomic`` so that the event and the slot change commit with it.
    """
    updated = Reservation.objects.filter(pk=reservation.pk, **expect).update(**changes)
    if not updated:
        return False
    for field, value in changes.items():
        setattr(reservation, field, value)
    _record(
        reservation,
        from_status=expect["status"],
        at=at,
        cause=cause,
        actor=actor,
        detail=detail,
        lateness_seconds=(
            (at - reservation.expires_at).total_seconds()
            if changes.get("cancellation_reason") == Reason.EXPIRED
            else None
        ),
    )
    reservations_changed.send(sender=Reservation, reservations=[reservation])
    return True


def _record(
    reservation: Reservation,
    *,
    from_status: str,
    at: datetime,
    cause: str,
    actor: AbstractBaseUser | None = None,
    detail: str = "",
    lateness_seconds: float | None = None,
) -> None:
    ReservationEvent.objects.create(
        reservation=reservation,
        from_status=from_status,
        to_status=reservation.status,
        at=at,
        cause=cause,
        staff_user=actor if isinstance(actor, User) and actor.is_authenticated else None,
        detail=detail,
        lateness_seconds=lateness_seconds,
    )


def reservation_lock(reservation_id: int) -> None:
    """
    Lock a reservation's slot row, then its own row, for the rest of the transaction.

    Every change of a reservation takes its locks in this order, slot first, so
    that two changes of one slot (a payment, the expiry job, a new customer
    reclaiming a lapsed hold) queue behind each other instead of deadlocking
    on PostgreSQL. On SQLite the IMMEDIATE transaction already holds the
    database's one write lock.
    """
    slot_id = Reservation.objects.filter(pk=reservation_id).values("time_slot_id")
    TimeSlot.objects.select_for_update().filter(pk__in=slot_id).exists()
    Reservation.objects.select_for_update().filter(pk=reservation_id).exists()


def slot_lock(time_slot_id: int) -> TimeSlot:
    """
    Lock a time slot's row for the rest of the transaction; the slot, with its room loaded.

    Only the slot's row: ``FOR UPDATE`` over the join would lock the room's
    row too, and on PostgreSQL a transaction that changes another slot of
    the room twice (a lapsed hold's release, then its offer) checks that
    slot's room at commit (``FOR KEY SHARE``): it would wait for this one
    while this one waits for the hold it has locked, a deadlock. Raises
    ``SlotNotFound``.
    """
    try:
        return (
            TimeSlot.objects.select_for_update(of=("self",))
            .select_related("room")
            .get(pk=time_slot_id)
        )
    except TimeSlot.DoesNotExist:
        raise errors.SlotNotFound() from None


def _now_after_lock(reservation: Reservation, now: datetime | None) -> datetime:
    """
    Lock the reservation (``reservation_lock``), then read the clock (unless ``now`` was given).

    A decision against ``expires_at`` must use the time at which it takes
    effect: a payment that waited for a lock past the end of its hold must
    not be judged by the time it arrived.
    """
    reservation_lock(reservation.pk)
    return now or timezone.now()


def _release_slot(reservation: Reservation, *, now: datetime) -> None:
    """Free the slot ``reservation`` just let go, and hand it to its waiting list (``offers``)."""
    TimeSlot.objects.filter(pk=reservation.time_slot_id, status=TimeSlot.Status.RESERVED).update(
        status=TimeSlot.Status.ACTIVE
    )
    offers.slots_released(
        [reservation.time_slot_id],
        offers_ended=[reservation.pk] if reservation.is_offer else [],
        now=now,
        expired=reservation.cancellation_reason == Reason.EXPIRED,
    )


def slot_lapsed_holds_expire(*, time_slot_id: int, now: datetime, cause: str) -> int:
    """
    Expire the holds on a slot that lapsed by ``now``; return how many.

    For whoever is about to claim the slot (a new reservation, a waiting
    party) with the slot locked: a lapsed hold never blocks it, and the slot
    first goes to its waiting list.
    """
    expired = 0
    for stale in Reservation.objects.due_for_expiry(now).filter(time_slot_id=time_slot_id):
        expired += _expire(stale, now=now, cause=cause)
    return expired


def slot_closure_check(slot: TimeSlot) -> None:
    """
    Refuse a slot that a closure of its room, or of the whole venue, overlaps: ``SlotClosed``.

    Call with the slot locked (``slot_lock``), after the lock, with the slot
    as the lock read it: a closure being made locks the slots it closes, so
    that it either commits before this read, and is seen, or ends what this
    transaction makes.
    """
    closures = Closure.objects.over(
        room_id=slot.room_id, starts_at=slot.starts_at, ends_at=slot.ends_at
    )
    if closures.exists():
        raise errors.SlotClosed()


def slots_close(
    *,
    time_slot_ids: Sequence[int],
    reason: str,
    now: datetime,
    actor: AbstractBaseUser | None = None,
) -> tuple[list[Reservation], list[WaitingEntry]]:
    """
    End every pending hold on slots the venue just closed, and close their waiting lists.

    For ``apps.reservations.closures``, in its transaction, with the slots
    locked. Each hold (an offer too) is cancelled at once by its own
    conditional UPDATE (reason ``closed``, cause ``closure``), lapsed or
    not; paid bookings stay. ``reason``, the closure's, is the events'
    detail. A closed slot goes to no one: unlike ``_release_slot``
    it is not handed to its waiting list, whose parties' places end
    (``closed``; an offer's with it) and who are told
    (``offers.slots_closed``). Returns the holds it ended and the waiting
    parties it told.
    """
    ended = []
    holds = Reservation.objects.filter(time_slot_id__in=list(time_slot_ids), status=Status.PENDING)
    for hold in holds.order_by("time_slot_id"):
        if _transition(
            hold,
            expect={"status": Status.PENDING, "expires_at": hold.expires_at},
            at=now,
            cause=Cause.CLOSURE,
            actor=actor,
            detail=reason[:200],
            status=Status.CANCELLED,
            cancelled_at=now,
            cancellation_reason=Reason.CLOSED,
        ):
            ended.append(hold)
    TimeSlot.objects.filter(
        pk__in=[hold.time_slot_id for hold in ended], status=TimeSlot.Status.RESERVED
    ).update(status=TimeSlot.Status.ACTIVE)
    told = offers.slots_closed(
        time_slot_ids,
        offers_ended=[hold.pk for hold in ended if hold.is_offer],
        now=now,
        reason=reason,
    )
    return ended, told


def party_size_problem(room: Room, party_size: int) -> str | None:
    """Why ``party_size`` does not fit ``room`` (its min and max players), or ``None``."""
    if room.min_players <= party_size <= room.max_players:
        return None
    return errors.PARTY_SIZE_OUT_OF_RANGE.format(min=room.min_players, max=room.max_players)


def reservation_create(
    *,
    time_slot_id: int,
    request_key: uuid.UUID | None = None,
    client_address: str | None = None,
    customer_name: str,
    customer_email: str,
    customer_phone: str = "",
    party_size: int,
    now: datetime | None = None,
    hold_seconds: float | None = None,
    cause: str = Cause.CUSTOMER,
    actor: AbstractBaseUser | None = None,
) -> Reservation:
    """
    Reserve a time slot and hold it for payment.

    The hold lasts ``hold_seconds`` (default ``settings.RESERVATION_HOLD_SECONDS``)
    and ends at the slot's start at the latest: the new reservation is pending
    with ``expires_at = min(now + hold, starts_at)``. A pending
    reservation on the slot whose hold has already lapsed is expired first, in
    the same transaction (cause ``reclaim``), so a lapsed hold never blocks a
    booking; but if parties wait for the slot, it goes to the first of them
    (an offer, committed) and this reservation is refused.

    ``request_key`` makes a submission idempotent: a second call with the
    same key for the same slot (a double click, a resubmitted form) returns
    the reservation the first one made and creates nothing. Interfaces pass
    only keys they issued themselves (a key names a reservation).

    Raises ``SlotNotFound`` (no such slot), ``SlotUnavailable`` (started, or its
    room is inactive), ``SlotClosed`` (a closure overlaps it),
    ``InvalidReservation`` (party size outside the room's limits; ``fields``
    says so) and ``SlotTaken`` (someone holds it).
    """
    if hold_seconds is None:
        hold_seconds = settings.RESERVATION_HOLD_SECONDS
    with transaction.atomic():
        slot = slot_lock(time_slot_id)
        now = now or timezone.now()  # read after the lock: see _now_after_lock
        if request_key is not None:
            earlier = Reservation.objects.filter(request_key=request_key, time_slot=slot).first()
            if earlier is not None:
                return earlier
        room = slot.room
        if slot.starts_at <= now or not room.is_active:
            raise errors.SlotUnavailable()
        slot_closure_check(slot)
        if (problem := party_size_problem(room, party_size)) is not None:
            raise errors.InvalidReservation(fields={"party_size": [problem]})
        holds_limit_check(customer_email=customer_email, client_address=client_address, now=now)

        # The holders decide, not the slot's stored status: that only mirrors them.
        holders = Reservation.objects.filter(
            time_slot=slot, status__in=(Status.PENDING, Status.PAID)
        ).values_list("status", "expires_at")
        handed_over = 0
        if any(status == Status.PENDING and ends <= now for status, ends in holders):
            # A lapsed hold is released first, and goes to the waiting list if
            # anyone waits for the slot: then the slot is taken, by an offer
            # that commits although this reservation is refused.
            handed_over = slot_lapsed_holds_expire(
                time_slot_id=slot.pk, now=now, cause=Cause.RECLAIM
            )
            taken = Reservation.objects.holding(now).filter(time_slot=slot).exists()
        else:
            taken = bool(holders)
        if taken and not handed_over:
            raise errors.SlotTaken()
        if not taken:
            TimeSlot.objects.filter(pk=slot.pk).update(status=TimeSlot.Status.RESERVED)
            try:
                with transaction.atomic():
                    reservation = Reservation.objects.create(
                        time_slot=slot,
                        request_key=request_key,
                        client_address=client_address,
                        customer_name=customer_name,
                        customer_email=customer_email,
                        customer_phone=customer_phone,
                        party_size=party_size,
                        price=room.price_for(party_size),
                        currency=room.currency,
                        status=Status.PENDING,
                        created_at=now,
                        # No hold outlasts the game it holds a place in.
                        expires_at=min(now + timedelta(seconds=hold_seconds), slot.starts_at),
                    )
            except IntegrityError:
                # The same submission won a race against itself, or a holder
                # appeared: the unique constraints are the last word.
                if request_key is not None:
                    earlier = Reservation.objects.filter(
                        request_key=request_key, time_slot=slot
                    ).first()
                    if earlier is not None:
                        return earlier
                raise errors.SlotTaken() from None
            _record(reservation, from_status="", at=now, cause=cause, actor=actor)
            reservations_changed.send(sender=Reservation, reservations=[reservation])
            return reservation
    raise errors.SlotTaken()


def reservation_pay(
    *,
    reservation: Reservation,
    payment_reference: str,
    now: datetime | None = None,
    cause: str = Cause.CUSTOMER,
    actor: AbstractBaseUser | None = None,
) -> Reservation:
    """
    Mark a pending reservation paid, if its hold has not lapsed.

    The transition behind ``payments.services.payment_confirm``, which every
    payment goes through; a late payment is its ``reservation_pay_late``.
    Here a payment after ``expires_at`` is refused and the reservation expired
    on the spot. Raises ``HoldExpired``, ``AlreadyPaid`` or
    ``AlreadyCancelled``; a refused payment changes nothing but that expiry.
    """
    with transaction.atomic():
        now = _now_after_lock(reservation, now)
        paid = _transition(
            reservation,
            expect={"status": Status.PENDING, "expires_at__gt": now},
            at=now,
            cause=cause,
            actor=actor,
            detail=f"{OFFER_TAKEN if reservation.is_offer else ''}"
            f"Payment reference {payment_reference}",
            status=Status.PAID,
            paid_at=now,
            payment_reference=payment_reference,
        )
        if paid:
            offers.slot_booked(reservation, now=now)
    if not paid:
        _refuse_stale(reservation, now=now, cause=cause, actor=actor, action="payment")
    return reservation


def _slot_free_for(reservation: Reservation, *, now: datetime) -> None:
    """
    Make sure no one else holds a lapsed reservation's slot at ``now``, or raise ``SlotTaken``.

    Another hold on the slot that lapsed too (its job not run yet) is no
    claim on it: it is expired first, as a new reservation would. A party
    waiting for the slot comes first: a hold that lapsed goes to the
    waiting list, not back to its holder. A closed slot goes to no one
    (``SlotClosed``). Call with the slot locked (``reservation_lock``).
    """
    slot_closure_check(TimeSlot.objects.get(pk=reservation.time_slot_id))
    lapsed = Reservation.objects.due_for_expiry(now).filter(time_slot_id=reservation.time_slot_id)
    for stale in lapsed.exclude(pk=reservation.pk):
        _expire(stale, now=now, cause=Cause.RECLAIM)
    taken = Reservation.objects.holding(now).filter(time_slot_id=reservation.time_slot_id)
    if taken.exclude(pk=reservation.pk).exists():
        raise errors.SlotTaken()
    if reservation.status == Status.PENDING and offers.waiting_on(
        reservation.time_slot_id, now=now
    ):
        raise errors.SlotTaken()  # its expiry offers the slot to the first party waiting


def _retake(reservation: Reservation, *, expect: dict[str, Any], **transition: Any) -> None:
    """
    Give a lapsed reservation its slot again, changed by ``transition`` (see ``_transition``).

    Clears the cancellation and marks the slot reserved. Call with the slot
    locked, after ``_slot_free_for``. Raises ``SlotTaken`` when a new holder
    got in first (the one-holder constraint), ``ReservationError`` when the
    row no longer matches ``expect``.
    """
    try:
        with transaction.atomic():
            retaken = _transition(
                reservation, expect=expect, cancelled_at=None, cancellation_reason="", **transition
            )
    except IntegrityError:
        raise errors.SlotTaken() from None
    if not retaken:
        raise errors.ReservationError()
    TimeSlot.objects.filter(pk=reservation.time_slot_id).update(status=TimeSlot.Status.RESERVED)


def reservation_pay_late(
    *,
    reservation: Reservation,
    payment_reference: str,
    now: datetime | None = None,
    cause: str = Cause.CUSTOMER,
    actor: AbstractBaseUser | None = None,
) -> Reservation:
    """
    Pay a reservation whose hold lapsed, if its slot is still free.

    The reservation may still be pending past ``expires_at`` or already
    expired by a job; either way it becomes paid and takes its slot again, in
    one transaction, and the audit trail says it came late. Raises
    ``SlotTaken`` when another reservation holds the slot now, ``SlotClosed``
    when the venue closed it, and ``ReservationError`` when the reservation's
    hold has not lapsed or it was cancelled for another reason.
    """
    with transaction.atomic():
        now = _now_after_lock(reservation, now)
        reservation.refresh_from_db()
        _slot_free_for(reservation, now=now)
        if reservation.status == Status.PENDING and reservation.expires_at <= now:
            expect: dict[str, Any] = {"status": Status.PENDING, "expires_at__lte": now}
        elif (
            reservation.status == Status.CANCELLED
            and reservation.cancellation_reason == Reason.EXPIRED
        ):
            expect = {"status": Status.CANCELLED, "cancellation_reason": Reason.EXPIRED}
        else:
            raise errors.ReservationError()
        _retake(
            reservation,
            expect=expect,
            at=now,
            cause=cause,
            actor=actor,
            detail=f"Late payment {payment_reference}: the slot was still free",
            status=Status.PAID,
            paid_at=now,
            payment_reference=payment_reference,
        )
        offers.slot_booked(reservation, now=now)
    return reservation


def reservation_hold_for_payment(
    *,
    reservation: Reservation,
    until: datetime,
    detail: str,
    now: datetime | None = None,
) -> bool:
    """
    Keep the slot for a payment the provider is completing, until ``until`` at the latest.

    For a payment in flight at the provider (authorised, or processing): a
    pending hold that has not lapsed runs until ``until`` if that is later
    than its end; a hold that lapsed (pending past ``expires_at``, or
    expired) takes its slot again, pending until ``until``, if no one else
    holds it. Never past the slot's start. ``detail`` goes to the audit
    trail (cause ``payment``). Returns whether the hold now runs past
    ``now``, so that the payment may complete within it.

    Raises ``SlotTaken`` (another reservation holds the slot),
    ``SlotUnavailable`` (the game has started; ``SlotClosed``, the venue
    closed it: a lapsed hold takes it no more), ``AlreadyPaid`` and
    ``AlreadyCancelled`` (cancelled by the customer or staff).
    """
    with transaction.atomic():
        now = _now_after_lock(reservation, now)
        reservation.refresh_from_db()
        starts_at = TimeSlot.objects.values_list("starts_at", flat=True).get(
            pk=reservation.time_slot_id
        )
        until = min(until, starts_at)
        if reservation.status == Status.PAID:
            raise errors.AlreadyPaid()
        lapsed_by_expiry = reservation.cancellation_reason == Reason.EXPIRED
        if reservation.status == Status.CANCELLED and not lapsed_by_expiry:
            raise errors.AlreadyCancelled()
        if reservation.status == Status.PENDING and reservation.expires_at > now:
            if until <= reservation.expires_at:
                return True
            _transition(
                reservation,
                expect={"status": Status.PENDING, "expires_at": reservation.expires_at},
                at=now,
                cause=Cause.PAYMENT,
                detail=detail,
                expires_at=until,
            )
            return True
        if starts_at <= now or until <= now:
            raise errors.SlotUnavailable()
        _slot_free_for(reservation, now=now)
        _retake(
            reservation,
            expect={"status": reservation.status, "expires_at": reservation.expires_at},
            at=now,
            cause=Cause.PAYMENT,
            detail=detail,
            status=Status.PENDING,
            expires_at=until,
        )
    return True


def reservation_checkout(*, reservation: Reservation, now: datetime | None = None) -> Reservation:
    """
    Record that the customer started paying; once, give the payment its window.

    The first call moves ``expires_at`` to the later of its value and
    ``now + PAYMENT_WINDOW_SECONDS`` (never past the slot's start), so that a
    slow payment provider does not cut the customer off; the job moves with
    it. Later calls change nothing. Raises ``HoldExpired``, ``AlreadyPaid`` or
    ``AlreadyCancelled``.
    """
    with transaction.atomic():
        now = _now_after_lock(reservation, now)
        reservation.refresh_from_db()
        already_started = reservation.checkout_started_at is not None
        if (
            already_started
            and reservation.status == Status.PENDING
            and reservation.expires_at > now
        ):
            return reservation  # once per reservation
        starts_at = TimeSlot.objects.values_list("starts_at", flat=True).get(
            pk=reservation.time_slot_id
        )
        window = now + timedelta(seconds=settings.PAYMENT_WINDOW_SECONDS)
        started = _transition(
            reservation,
            expect={
                "status": Status.PENDING,
                "expires_at": reservation.expires_at,
                "expires_at__gt": now,
                "checkout_started_at": None,
            },
            at=now,
            cause=Cause.CUSTOMER,
            detail="Checkout started: payment window",
            checkout_started_at=now,
            expires_at=min(max(reservation.expires_at, window), starts_at),
        )
    if not started:
        _refuse_stale(reservation, now=now, cause=Cause.CUSTOMER, action="checkout")
    return reservation


def reservation_cancel(
    *,
    reservation: Reservation,
    reason: str = Reason.CUSTOMER,
    now: datetime | None = None,
    actor: AbstractBaseUser | None = None,
) -> Reservation:
    """
    Cancel a pending reservation and release its slot.

    ``reason`` is ``customer`` or ``staff`` (``expired`` belongs to
    ``reservation_expire``; ``ValueError`` otherwise) and is also the cause in
    the audit trail. A hold that has lapsed is expired instead and
    ``HoldExpired`` raised, like a payment. Raises ``HoldExpired``,
    ``AlreadyPaid`` or ``AlreadyCancelled``.
    """
    if reason not in (Reason.CUSTOMER, Reason.STAFF):
        raise ValueError(f"Cancel with reason customer or staff, not {reason!r}.")
    cause = Cause.STAFF if reason == Reason.STAFF else Cause.CUSTOMER
    with transaction.atomic():
        now = _now_after_lock(reservation, now)
        # As it is now: its deadlines follow from the row, not an old copy.
        reservation.refresh_from_db()
        cancelled = _transition(
            reservation,
            expect={"status": Status.PENDING, "expires_at__gt": now},
            at=now,
            cause=cause,
            actor=actor,
            status=Status.CANCELLED,
            cancelled_at=now,
            cancellation_reason=reason,
        )
        if cancelled:
            _release_slot(reservation, now=now)
    if not cancelled:
        _refuse_stale(reservation, now=now, cause=cause, actor=actor, action="cancellation")
    return reservation


def cancel_deadline(starts_at: datetime) -> datetime:
    """Until when the customer may cancel a paid booking of a game starting at ``starts_at``."""
    return starts_at - timedelta(hours=settings.CUSTOMER_CANCEL_HOURS)


def customer_may_cancel_paid(*, starts_at: datetime, attendance: str, now: datetime) -> bool:
    """
    Whether the customer may cancel a paid booking, with its refund, at ``now``.

    Until ``cancel_deadline`` of its game, and never once staff checked the
    party in or marked it a no-show (``attendance``).
    """
    return not attendance and now <= cancel_deadline(starts_at)


def reservation_cancel_paid(
    *,
    reservation: Reservation,
    reason: str = Reason.STAFF,
    actor: AbstractBaseUser | None = None,
    now: datetime | None = None,
) -> Reservation:
    """
    Cancel a paid booking and release its slot; the refund is the caller's.

    ``reason`` is ``staff`` or ``customer`` (``ValueError`` otherwise) and is
    also the cause in the audit trail. The customer may cancel only until
    ``CUSTOMER_CANCEL_HOURS`` before the game starts, judged by the clock
    read after the lock, and never once staff checked the party in or
    marked it a no-show (``TooLateToCancel``). Raises ``NotRefundable``
    unless the reservation is paid.
    """
    if reason not in (Reason.CUSTOMER, Reason.STAFF):
        raise ValueError(f"Cancel with reason customer or staff, not {reason!r}.")
    by_customer = reason == Reason.CUSTOMER
    with transaction.atomic():
        now = _now_after_lock(reservation, now)
        if by_customer:
            starts_at, attendance = (
                Reservation.objects.filter(pk=reservation.pk)
                .values_list("time_slot__starts_at", "attendance")
                .get()
            )
            if not customer_may_cancel_paid(starts_at=starts_at, attendance=attendance, now=now):
                raise errors.TooLateToCancel(
                    errors.TooLateToCancel.default_message.format(
                        hours=settings.CUSTOMER_CANCEL_HOURS
                    )
                )
        cancelled = _transition(
            reservation,
            expect={"status": Status.PAID},
            at=now,
            cause=Cause.CUSTOMER if by_customer else Cause.STAFF,
            actor=actor,
            detail="Paid booking cancelled by the customer; refund due"
            if by_customer
            else "Paid booking cancelled by staff; refunded",
            status=Status.CANCELLED,
            cancelled_at=now,
            cancellation_reason=reason,
        )
        if not cancelled:
            raise errors.NotRefundable()
        _release_slot(reservation, now=now)
    return reservation


def reservation_note(*, reservation: Reservation, detail: str, now: datetime | None = None) -> None:
    """
    Record in the audit trail something the payment provider did that changed no status.

    A void, a refund or a dispute made at the provider: an event from the
    reservation's status to itself, cause ``payment``, with ``detail``.
    """
    _record(
        reservation,
        from_status=reservation.status,
        at=now or timezone.now(),
        cause=Cause.PAYMENT,
        detail=detail[:200],
    )


# Staff check a party in from this long before its game starts.
CHECK_IN_OPENS = timedelta(hours=1)
Attendance = Reservation.Attendance


def reservation_attendance_set(
    *,
    reservation: Reservation,
    attendance: str,
    actor: AbstractBaseUser | None,
    now: datetime | None = None,
) -> Reservation:
    """
    Record that a paid booking's party came (``checked_in``) or did not (``no_show``).

    Check-in opens ``CHECK_IN_OPENS`` before the game starts; a no-show can
    be recorded only once it has started. Either may replace the other (a
    party late for its game), never itself. One conditional UPDATE decides,
    on the booking as it stands (paid, on the slot it holds now); the audit
    trail records an event from paid to paid, cause ``staff``. No status or
    deadline changes, so ``reservations_changed`` is not sent. Raises
    ``NotPaid``, ``CheckInNotOpen``, ``GameNotStarted`` or
    ``AttendanceUnchanged``; ``ValueError`` for another ``attendance``.
    """
    if attendance not in Attendance.values:
        raise ValueError(f"Attendance is checked_in or no_show, not {attendance!r}.")
    opens = CHECK_IN_OPENS if attendance == Attendance.CHECKED_IN else timedelta(0)
    with transaction.atomic():
        # Locked first: the UPDATE below joins the slot, and PostgreSQL would
        # not check its conditions again after waiting for a cancel's lock.
        now = _now_after_lock(reservation, now)
        updated = (
            Reservation.objects.filter(
                pk=reservation.pk, status=Status.PAID, time_slot__starts_at__lte=now + opens
            )
            .exclude(attendance=attendance)
            .update(attendance=attendance, attendance_at=now)
        )
        if updated:
            reservation.attendance, reservation.attendance_at = attendance, now
            reservation.status = Status.PAID
            _record(
                reservation,
                from_status=Status.PAID,
                at=now,
                cause=Cause.STAFF,
                actor=actor,
                detail=Attendance(attendance).label,
            )
            return reservation
    # Refused: say why, from the row as it stands.
    reservation.refresh_from_db()
    if reservation.status != Status.PAID:
        raise errors.NotPaid()
    if reservation.attendance == attendance:
        raise errors.AttendanceUnchanged(
            f"This booking is already marked {Attendance(attendance).label.lower()}."
        )
    if attendance == Attendance.CHECKED_IN:
        raise errors.CheckInNotOpen()
    raise errors.GameNotStarted()


def reservation_extend_hold(
    *,
    reservation: Reservation,
    by: timedelta,
    now: datetime | None = None,
    cause: str = Cause.STAFF,
    actor: AbstractBaseUser | None = None,
    limit: int | None = None,
) -> Reservation:
    """
    Move a pending reservation's ``expires_at`` later by ``by`` (a positive timedelta).

    Compare-and-set on the ``expires_at`` (and, with ``limit``, the count of
    extensions) that was read, so two extensions never apply as one; the
    ``reservations_changed`` receiver moves the jobs. The hold never runs past the
    slot's start. With ``limit``, the reservation's ``extensions`` count goes up
    by one and must stay within it. A hold that has already lapsed cannot be
    extended: it is expired and ``HoldExpired`` raised. Raises ``ValueError``
    for a non-positive ``by``; ``HoldNotExtendable`` at the limit or the slot's
    start; ``HoldExpired``, ``AlreadyPaid`` or ``AlreadyCancelled``.
    """
    if by <= timedelta(0):
        raise ValueError("A hold can only be extended by a positive duration.")
    with transaction.atomic():
        now = _now_after_lock(reservation, now)
        reservation.refresh_from_db(
            fields=["status", "expires_at", "extensions", "checkout_started_at"]
        )
        current = Reservation.objects.filter(pk=reservation.pk).values_list(
            "time_slot__starts_at", flat=True
        )
        new_expiry = min(reservation.expires_at + by, current.get())
        expect: dict[str, Any] = {
            "status": Status.PENDING,
            "expires_at": reservation.expires_at,
            "expires_at__gt": now,
        }
        changes: dict[str, Any] = {"expires_at": new_expiry}
        if reservation.status == Status.PENDING and reservation.expires_at > now:
            if limit is not None and reservation.extensions >= limit:
                raise errors.HoldNotExtendable(errors.EXTENSION_LIMIT.format(limit=limit))
            if new_expiry <= reservation.expires_at:
                raise errors.HoldNotExtendable(errors.HOLD_ENDS_AT_START)
        if limit is not None:
            expect["extensions"] = reservation.extensions
            changes["extensions"] = reservation.extensions + 1
        until = timezone.localtime(new_expiry).isoformat()  # staff read it in the venue's zone
        extended = _transition(
            reservation,
            expect=expect,
            at=now,
            cause=cause,
            actor=actor,
            detail=f"Hold extended by {_minutes(by)} to {until}",
            **changes,
        )
    if not extended:
        _refuse_stale(reservation, now=now, cause=cause, actor=actor, action="hold extension")
    return reservation


def reservation_keep_slot(*, reservation: Reservation, now: datetime | None = None) -> Reservation:
    """
    The customer's *Keep my slot*: extend the hold by one hold length.

    At most ``settings.RESERVATION_MAX_EXTENSIONS`` times per reservation,
    never past the slot's start; never for a waiting-list offer, whose next
    party waits for it (``HoldNotExtendable``; staff may still extend it).
    Raises as ``reservation_extend_hold``.
    """
    if reservation.is_offer:
        raise errors.HoldNotExtendable(errors.OFFER_NOT_EXTENDABLE)
    return reservation_extend_hold(
        reservation=reservation,
        by=timedelta(seconds=settings.RESERVATION_HOLD_SECONDS),
        now=now,
        cause=Cause.CUSTOMER,
        limit=settings.RESERVATION_MAX_EXTENSIONS,
    )


def _minutes(duration: timedelta) -> str:
    minutes = duration.total_seconds() / 60
    return f"{minutes:g} min"


def _refuse_stale(
    reservation: Reservation,
    *,
    now: datetime,
    cause: str,
    actor: AbstractBaseUser | None = None,
    action: str,
) -> NoReturn:
    """Explain why a compare-and-set failed: expire a lapsed hold, then raise."""
    reservation.refresh_from_db()
    if reservation.status == Status.PENDING and reservation.expires_at <= now:
        reservation_expire(
            reservation_id=reservation.pk,
            now=now,
            cause=cause,
            actor=actor,
            detail=f"Expired when a {action} came after the hold had lapsed",
        )
        reservation.refresh_from_db()
        raise errors.HoldExpired()
    if reservation.status == Status.PAID:
        raise errors.AlreadyPaid()
    if reservation.cancellation_reason == Reason.EXPIRED:
        # The same answer whether the expiry job ran first or not.
        raise errors.HoldExpired()
    if reservation.status == Status.CANCELLED:
        raise errors.AlreadyCancelled()
    # Pending and within its hold, yet the update matched nothing: the row
    # changed between the update and this read. Say so rather than guess.
    raise errors.ReservationError()


def holds_limit_check(*, customer_email: str, client_address: str | None, now: datetime) -> None:
    """
    Refuse a new hold past the limits against hoarding.

    At most ``MAX_PENDING_HOLDS_PER_EMAIL`` pending holds per email address
    (case-insensitive) and ``MAX_PENDING_HOLDS_PER_ADDRESS`` per client
    address at a time; concurrent holds of one customer are counted one
    after the other. Call inside the transaction that makes the hold.
    Raises ``TooManyHolds`` with ``retry_after``: seconds until the earliest
    of those holds ends.
    """
    # Two holds made at once for one customer must not both count the other out.
    advisory_xact_lock(
        f"holds:{customer_email.lower()}", f"holds:{client_address}" if client_address else ""
    )
    live = Reservation.objects.filter(status=Status.PENDING, expires_at__gt=now)
    for holds, limit in (
        (
            # As the index of each customer's live holds has it, for SQLite too.
            live.alias(upper_email=Upper("customer_email")).filter(
                upper_email=Upper(Value(customer_email))
            ),
            settings.MAX_PENDING_HOLDS_PER_EMAIL,
        ),
        (
            live.filter(client_address=client_address) if client_address else live.none(),
            settings.MAX_PENDING_HOLDS_PER_ADDRESS,
        ),
    ):
        # One customer's live holds, on an index of their own: never many
        # more than the limit, since more are refused.
        held = holds.count()
        if held >= limit:
            # Below the limit again once this many have ended. A separate
            # statement: on PostgreSQL holds may have ended (been paid,
            # expired) since the count, and then there is no limit to enforce.
            ends = holds.order_by("expires_at").values_list("expires_at", flat=True)
            frees_one = ends[held - limit : held - limit + 1].first()
            if frees_one is None:
                continue
            retry_after = max(1, math.ceil((frees_one - now).total_seconds()))
            raise errors.TooManyHolds(
                errors.TOO_MANY_HOLDS.format(limit=limit), retry_after=retry_after
            )


def _expire(
    reservation: Reservation,
    *,
    now: datetime,
    cause: str,
    actor: AbstractBaseUser | None = None,
    detail: str = "",
) -> bool:
    if not _transition(
        reservation,
        expect={"status": Status.PENDING, "expires_at__lte": now},
        at=now,
        cause=cause,
        actor=actor,
        detail=detail or (OFFER_LAPSED if reservation.is_offer else ""),
        status=Status.CANCELLED,
        cancelled_at=now,
        cancellation_reason=Reason.EXPIRED,
    ):
        return False
    _release_slot(reservation, now=now)
    return True


EXPIRE_BATCH_SIZE = 1000  # reservations a bulk expiry changes in one transaction


@dataclass(frozen=True)
class ExpiredHold:
    """One reservation ``lapsed_holds_expire`` expired: what its log line names."""

    reservation_id: int
    customer_name: str
    room_name: str
    starts_at: datetime  # the slot's start, aware UTC
    expires_at: datetime  # the hold's end, aware UTC
    checkout_started_at: datetime | None = None  # when the customer started paying
    time_slot_id: int = 0
    is_offer: bool = False  # a waiting-list offer


def lapsed_holds_expire(
    *,
    now: datetime | None = None,
    cause: str = Cause.EXPIRY_JOB,
    limit: int = EXPIRE_BATCH_SIZE,
    reservation_ids: Sequence[int] | None = None,
) -> list[ExpiredHold]:
    """
    Expire up to ``limit`` pending reservations whose holds have lapsed, and release their slots.

    The bulk form of ``reservation_expire``, for the deadline jobs and the
    sweep: earliest ``expires_at`` first (only ``reservation_ids``, when
    given), in one transaction of one conditional UPDATE for the
    reservations (which returns what the log lines name), one for their
    slots and one INSERT for their events (``cause``, with each one's
    lateness); in the same transaction the freed slots go to their waiting
    lists (``offers.slots_released``). Each statement takes its ids as one
    array (PostgreSQL) or one JSON list (SQLite), not a thousand
    placeholders. 10,000 holds ending in the same second are then ten such
    transactions, not 10,000. Callers wanting every lapsed hold loop until
    fewer than ``limit`` come back (``lapsed_holds_release``).

    Never waits for a row that another transaction holds: on PostgreSQL it
    takes the due reservations, then their slots, with ``SKIP LOCKED``, so
    that a payment in flight, a long staff transaction or a concurrent bulk
    expiry delays only the rows it holds; what it skipped stays due for the
    next call. (SQLite's one write lock leaves nothing to skip.) ``now``
    (aware UTC; default: the clock, read after the locks) decides what is
    due.

    Returns what it expired, earliest expiry first; an empty list when
    nothing was due.
    """
    skip_locked = connection.features.has_select_for_update_skip_locked
    # On SQLite the write lock is taken the moment it is free (config.sqlite).
    with transaction.atomic():
        due = Reservation.objects.due_for_expiry(now or timezone.now()).order_by("expires_at", "pk")
        if reservation_ids is not None:
            due = due.filter(pk__in=reservation_ids)
        if skip_locked:
            due = due.select_for_update(skip_locked=True)
        slot_ids = list(due.values_list("time_slot_id", flat=True)[:limit])
        if not slot_ids:
            return []
        with connection.cursor() as cursor:
            if skip_locked:
                cursor.execute(
                    f"SELECT id FROM {_SLOTS} WHERE id {in_ids()} "  # noqa: S608 (our table's name)
                    "ORDER BY id FOR UPDATE SKIP LOCKED",
                    [ids_param(slot_ids)],
                )
                slot_ids = [row[0] for row in cursor.fetchall()]
            at = now or timezone.now()
            expired = _holds_cancel(cursor, slot_ids, at)
            if not expired:
                return []
            cursor.execute(
                f"UPDATE {_SLOTS} SET status = %s WHERE id {in_ids()} AND status = %s",  # noqa: S608 (our table's name)
                [
                    TimeSlot.Status.ACTIVE.value,
                    ids_param([hold.time_slot_id for hold in expired]),
                    TimeSlot.Status.RESERVED.value,
                ],
            )
            _record_expiries(cursor, expired, at=at, cause=cause)
            # Most slots have no list: one query over the batch says which do.
            cursor.execute(
                f"SELECT DISTINCT time_slot_id FROM {_WAITING} "  # noqa: S608 (our table's name)
                f"WHERE time_slot_id {in_ids()} AND status = %s",
                [
                    ids_param([hold.time_slot_id for hold in expired]),
                    WaitingEntry.Status.WAITING.value,
                ],
            )
            waited_for = {row[0] for row in cursor.fetchall()}
        # Inside the transaction, so that what receivers write (the customers'
        # messages) commits with the expiry: instances with the fields that
        # changed, not rows read again.
        fields = [
            "id",
            "status",
            "expires_at",
            "cancelled_at",
            "cancellation_reason",
            "checkout_started_at",
        ]
        changed = [
            Reservation.from_db(
                connection.alias,
                fields,
                (
                    hold.reservation_id,
                    Status.CANCELLED,
                    hold.expires_at,
                    at,
                    Reason.EXPIRED,
                    hold.checkout_started_at,
                ),
            )
            for hold in expired
        ]
        reservations_changed.send(sender=Reservation, reservations=changed)
        offers_ended = [hold.reservation_id for hold in expired if hold.is_offer]
        if waited_for or offers_ended:
            offers.slots_released(
                [hold.time_slot_id for hold in expired if hold.time_slot_id in waited_for],
                offers_ended=offers_ended,
                now=at,
                expired=True,
            )
    return expired


# The tables the bulk expiry writes with SQL of its own (plain names, no quoting needed).
_RESERVATIONS = Reservation._meta.db_table
_SLOTS = TimeSlot._meta.db_table
_ROOMS = Room._meta.db_table
_WAITING = WaitingEntry._meta.db_table
_EVENTS = ReservationEvent._meta.db_table


def _aware(value: Any) -> datetime | None:
    """A timestamp as a raw cursor returns it (SQLite: text, naive UTC), aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value


def _holds_cancel(cursor: Any, slot_ids: Sequence[int], at: datetime) -> list[ExpiredHold]:
    """
    Cancel the lapsed holds on ``slot_ids`` as expired at ``at``, in one UPDATE.

    Returns them, earliest ``expires_at`` first, with what their log lines
    name (read by the same statement). Call with the slots locked.
    """
    at_value = connection.ops.adapt_datetimefield_value(at)
    if connection.vendor == "postgresql":
        # A join: cheaper here than a subquery per row.
        where = (
            f"FROM {_SLOTS} s JOIN {_ROOMS} m ON m.id = s.room_id WHERE s.id = h.time_slot_id AND"
        )
        hold, slot_and_room = "h.", "m.name, s.starts_at"
    else:
        # SQLite's RETURNING sees only the table it changes, by bare names.
        where, hold = "WHERE", ""
        slot_and_room = (
            f"(SELECT m.name FROM {_SLOTS} s JOIN {_ROOMS} m ON m.id = s.room_id "  # noqa: S608 (our tables' names)
            "WHERE s.id = time_slot_id), "
            f"(SELECT s.starts_at FROM {_SLOTS} s WHERE s.id = time_slot_id)"
        )
    cursor.execute(
        f"UPDATE {_RESERVATIONS} AS h "  # noqa: S608 (our tables' names)
        "SET status = %s, cancelled_at = %s, cancellation_reason = %s "
        f"{where} h.time_slot_id {in_ids()} AND h.status = %s AND h.expires_at <= %s "
        f"RETURNING {hold}id, {hold}customer_name, {slot_and_room}, {hold}expires_at, "
        f"{hold}checkout_started_at, {hold}time_slot_id, {hold}is_offer",
        [
            Status.CANCELLED.value,
            at_value,
            Reason.EXPIRED.value,
            ids_param(slot_ids),
            Status.PENDING.value,
            at_value,
        ],
    )
    expired = [
        ExpiredHold(
            reservation_id=pk,
            customer_name=name,
            room_name=room,
            starts_at=_aware(starts_at),  # type: ignore[arg-type]  # a slot always starts
            expires_at=_aware(expires_at),  # type: ignore[arg-type]  # a hold always ends
            checkout_started_at=_aware(started),
            time_slot_id=slot_id,
            is_offer=bool(is_offer),
        )
        for pk, name, room, starts_at, expires_at, started, slot_id, is_offer in cursor.fetchall()
    ]
    expired.sort(key=lambda hold: (hold.expires_at, hold.reservation_id))
    return expired


def lapsed_holds_release(*, cause: str, now: datetime | None = None) -> list[ExpiredHold]:
    """
    Expire every hold lapsed by ``now`` (default: the clock), in batches.

    Loops over ``lapsed_holds_expire`` until a batch comes back short. If a
    batch fails, the lapsed holds are expired one at a time instead, so that
    one bad row cannot hold back the rest; each failure is logged. A
    database too busy to write (its lock timeout) ends the pass early: what
    is left stays due for the next job or sweep. Never raises; returns what
    it expired, in order.
    """
    released: list[ExpiredHold] = []
    # Urgent: this process's mail waits meanwhile (timeline.wait_while_urgent).
    with timeline.urgent():
        while True:
            try:
                batch = lapsed_holds_expire(now=now, cause=cause, limit=EXPIRE_BATCH_SIZE)
            except Exception as exc:
                if _database_busy(exc):
                    logger.warning("Database busy; lapsed holds wait for the next try: %s", exc)
                    return released
                logger.exception("Bulk expiry failed; expiring the lapsed holds one at a time")
                return released + _lapsed_holds_release_one_by_one(cause=cause, now=now)
            released += batch
            if len(batch) < EXPIRE_BATCH_SIZE:
                return released


def _lapsed_holds_release_one_by_one(*, cause: str, now: datetime | None) -> list[ExpiredHold]:
    released: list[ExpiredHold] = []
    try:
        due = list(
            Reservation.objects.due_for_expiry(now or timezone.now())
            .order_by("expires_at")
            .values_list("pk", flat=True)
        )
    except Exception:
        logger.exception("Could not list the lapsed holds; they wait for the next try")
        return released
    for reservation_id in due:
        try:
            released += lapsed_holds_expire(
                now=now, cause=cause, limit=1, reservation_ids=[reservation_id]
            )
        except Exception as exc:
            if _database_busy(exc):
                logger.warning("Database busy; lapsed holds wait for the next try: %s", exc)
                break
            logger.exception("Failed to cancel expired reservation %s", reservation_id)
    return released


def _database_busy(exc: Exception) -> bool:
    # A lock timeout (PostgreSQL) or a write lock held too long (SQLite):
    # nothing else will get through now either.
    message = str(exc).lower()
    return isinstance(exc, OperationalError) and ("lock timeout" in message or "locked" in message)


def _record_expiries(cursor: Any, expired: list[ExpiredHold], *, at: datetime, cause: str) -> None:
    """The ``ReservationEvent`` rows of a bulk expiry: one statement (SQLite: one executemany)."""
    at_value = connection.ops.adapt_datetimefield_value(at)
    columns = "reservation_id, from_status, to_status, at, cause, detail, lateness_seconds"
    details = [OFFER_LAPSED if hold.is_offer else "" for hold in expired]
    lateness = [(at - hold.expires_at).total_seconds() for hold in expired]
    if connection.vendor == "postgresql":
        # Three arrays, not a thousand rows of parameters: one statement to
        # parse and one round trip, where executemany sent one per row.
        cursor.execute(
            f"INSERT INTO {_EVENTS} ({columns}) "  # noqa: S608 (a model's table name, no input)
            "SELECT id, %s, %s, %s, %s, detail, lateness "
            "FROM unnest(%s::bigint[], %s::text[], %s::float8[]) AS e(id, detail, lateness)",
            [
                Status.PENDING.value,
                Status.CANCELLED.value,
                at_value,
                str(cause),
                [hold.reservation_id for hold in expired],
                details,
                lateness,
            ],
        )
        return
    cursor.executemany(
        f"INSERT INTO {_EVENTS} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s)",  # noqa: S608 (a model's table name, no input)
        [
            (
                hold.reservation_id,
                Status.PENDING.value,
                Status.CANCELLED.value,
                at_value,
                str(cause),
                detail,
                seconds,
            )
            for hold, detail, seconds in zip(expired, details, lateness, strict=True)
        ],
    )


def reservation_expire(
    *,
    reservation_id: int,
    now: datetime | None = None,
    cause: str = Cause.EXPIRY_JOB,
    actor: AbstractBaseUser | None = None,
    detail: str = "",
) -> ExpireResult:
    """
    Expire the reservation if its hold has lapsed, and release its slot.

    Idempotent: on a paid, cancelled, missing or not-yet-due reservation it
    changes nothing and says so in the result's ``outcome``. ``cause`` goes to
    the audit trail (``expiry_job``, ``sweep``, ``reconcile``, ...) with the
    lateness: seconds from ``expires_at`` to ``now``. The reservation comes
    back with its slot and room loaded (for the seed's log line), or ``None``
    when it does not exist.
    """
    with transaction.atomic():
        reservation_lock(reservation_id)
        now = now or timezone.now()
        reservation = (
            Reservation.objects.select_related("time_slot__room").filter(pk=reservation_id).first()
        )
        if reservation is None:
            return ExpireResult(ExpireOutcome.NOT_FOUND, None)
        if _expire(reservation, now=now, cause=cause, actor=actor, detail=detail):
            return ExpireResult(ExpireOutcome.EXPIRED, reservation)
    reservation.refresh_from_db()
    if reservation.status == Status.PAID:
        outcome = ExpireOutcome.ALREADY_PAID
    elif reservation.status == Status.CANCELLED:
        outcome = ExpireOutcome.ALREADY_CANCELLED
    else:
        outcome = ExpireOutcome.NOT_DUE
    return ExpireResult(outcome, reservation)
