"""
Customer changes: move a booking to another time slot of the same room.

The new slot is the customer's before the old one is released, never
neither: one transaction locks both slots, moves the reservation with one
conditional UPDATE of its ``time_slot`` (the one-holder constraint is the
last word), then releases the old slot to its waiting list
(``services._release_slot``). The price stays the one frozen when the slot
was held: the same game in the same room.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.rooms.models import TimeSlot

from . import errors
from .models import Reservation, ReservationEvent
from .selectors import MOVED_PREFIX
from .services import (
    _release_slot,
    _transition,
    party_size_problem,
    slot_closure_check,
    slot_lapsed_holds_expire,
    slot_lock,
)
from .signals import reservation_moved

Status = Reservation.Status
Cause = ReservationEvent.Cause

MOVED_DETAIL = MOVED_PREFIX + "{old} to {new}"


def _local(at: datetime) -> str:
    """``2026-12-04 19:00 CET``: the venue's time, as staff read it."""
    at = timezone.localtime(at)
    return f"{at:%Y-%m-%d %H:%M} {at.tzname()}"


def move_deadline(starts_at: datetime) -> datetime:
    """Until when the customer may move a booking of a game starting at ``starts_at``."""
    return starts_at - timedelta(hours=settings.CUSTOMER_RESCHEDULE_HOURS)


def reservation_move(
    *, reservation: Reservation, time_slot_id: int, now: datetime | None = None
) -> Reservation:
    """
    Move a pending or paid reservation to another free time slot of the same room.

    Allowed until ``CUSTOMER_RESCHEDULE_HOURS`` before the old slot starts
    (``TooLateToChange``). The target is checked as ``reservation_create``
    checks a new reservation's: not started, room active, not closed
    (``SlotUnavailable``), the party size fits (``InvalidReservation``), no
    holder (``SlotTaken``). A lapsed hold on the target is expired first
    (cause ``reclaim``); if parties wait for the target it goes to the first
    of them (that commits) and the move is refused with ``SlotTaken``.

    Both slots are locked in ``pk`` order, then the reservation's row.
    A pending hold keeps its ``expires_at``, cut to the new slot's start if
    that is sooner; its deadlines follow through ``reservations_changed``.
    The event (cause ``customer``) says from which time to which; the old
    slot goes to its waiting list. A waiting-list offer not yet paid is not
    moved (``NotMovable``). Raises ``SlotNotFound`` for an unknown target,
    ``InvalidReservation`` (field ``slot_id``) for one of another room or
    the slot it already has, ``HoldExpired``, ``AlreadyCancelled``.
    """
    refused: errors.ReservationError | None = None
    with transaction.atomic():
        old_slot_id = reservation.time_slot_id
        locked = {pk: slot_lock(pk) for pk in sorted({old_slot_id, time_slot_id})}
        old, target = locked[old_slot_id], locked[time_slot_id]
        Reservation.objects.select_for_update().filter(pk=reservation.pk).exists()
        now = now or timezone.now()  # read after the locks
        reservation.refresh_from_db()
        if reservation.time_slot_id != old_slot_id:
            raise errors.ReservationError()  # moved meanwhile: the caller reads it again
        _check_movable(reservation, now=now)
        if target.room_id != old.room_id or target.pk == old.pk:
            raise errors.InvalidReservation(fields={"slot_id": [errors.MOVE_WITHIN_ROOM]})
        if now > move_deadline(old.starts_at):
            raise errors.TooLateToChange(
                errors.TooLateToChange.default_message.format(
                    hours=settings.CUSTOMER_RESCHEDULE_HOURS
                )
            )
        if target.starts_at <= now or not target.room.is_active:
            raise errors.SlotUnavailable()
        slot_closure_check(target)
        if (problem := party_size_problem(target.room, reservation.party_size)) is not None:
            raise errors.InvalidReservation(fields={"party_size": [problem]})
        handed_over = slot_lapsed_holds_expire(time_slot_id=target.pk, now=now, cause=Cause.RECLAIM)
        taken = Reservation.objects.holding(now).filter(time_slot=target).exists()
        if taken and not handed_over:
            raise errors.SlotTaken()
        if taken:
            # The lapsed hold went to the waiting list: that commits, the move does not happen.
            refused = errors.SlotTaken()
        else:
            _move(reservation, old=old, target=target, now=now)
    if refused is not None:
        raise refused
    return reservation


def _check_movable(reservation: Reservation, *, now: datetime) -> None:
    if reservation.status == Status.PAID:
        return
    if reservation.status == Status.PENDING and reservation.expires_at > now:
        if reservation.is_offer:
            raise errors.NotMovable()
        return
    if reservation.current_cancellation_reason(now) == Reservation.CancellationReason.EXPIRED:
        raise errors.HoldExpired()
    raise errors.AlreadyCancelled()


def _move(reservation: Reservation, *, old: TimeSlot, target: TimeSlot, now: datetime) -> None:
    """Move the reservation onto ``target`` with one conditional UPDATE, then release ``old``."""
    expect = {"status": reservation.status, "time_slot_id": old.pk}
    # Checked in (or not) for the old game: nothing yet for the new one.
    changes: dict = {"time_slot_id": target.pk, "attendance": "", "attendance_at": None}
    if reservation.status == Status.PENDING:
        expect["expires_at"] = reservation.expires_at
        expect["expires_at__gt"] = now
        # No hold outlasts the game it holds a place in.
        changes["expires_at"] = min(reservation.expires_at, target.starts_at)
    try:
        with transaction.atomic():
            moved = _transition(
                reservation,
                expect=expect,
                at=now,
                cause=Cause.CUSTOMER,
                detail=MOVED_DETAIL.format(old=_local(old.starts_at), new=_local(target.starts_at)),
                **changes,
            )
    except IntegrityError:
        raise errors.SlotTaken() from None
    if not moved:
        raise errors.ReservationError()
    reservation.time_slot = target
    TimeSlot.objects.filter(pk=target.pk).update(status=TimeSlot.Status.RESERVED)
    # What the old slot's release needs to know of the reservation that let it go.
    _release_slot(Reservation(pk=reservation.pk, time_slot_id=old.pk), now=now)
    reservation_moved.send(sender=Reservation, reservation=reservation, from_slot=old)
