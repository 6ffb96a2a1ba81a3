"""
Closures: staff close a room, or the whole venue, for a period.

A slot that a closure overlaps is not offered (``TimeSlot.objects.with_availability``
reads ``closed``), and ``reservation_create`` and ``waiting_join`` refuse it
(``SlotClosed``). Closing ends the live holds on the slots it closes and
closes their waiting lists; paid bookings stay, listed for staff to move or
refund. Deleting a closure reopens its slots: nothing it ended comes back.
"""

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from apps.rooms.models import Closure, Room, TimeSlot

from . import services
from .models import Reservation, WaitingEntry


@dataclass(frozen=True)
class ClosureResult:
    """What ``closure_create`` did."""

    closure: Closure
    holds_ended: list[Reservation]  # cancelled, reason ``closed``; offers included
    waiting_told: list[WaitingEntry]  # the parties waiting for the slots: list closed, told
    bookings: list[Reservation]  # paid, on the closed slots: for staff to move or refund
    slot_ids: list[int]  # the slots closed that had not started, by pk


def closure_create(
    *,
    room: Room | None,
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
    actor: AbstractBaseUser | None = None,
    now: datetime | None = None,
) -> ClosureResult:
    """
    Close ``room`` (``None``: every room) from ``starts_at`` to ``ends_at`` (aware), for ``reason``.

    In one transaction: every slot it overlaps that has not started is
    locked, in ``pk`` order (two closures over the same slots queue rather
    than deadlock), the closure is created, and the slots' holds end at
    once and their waiting lists close (``services.slots_close``). A
    reservation or a join racing the closure locks its slot before it reads
    the closures: it either commits first, and is ended here, or waits for
    this commit and is refused (``SlotClosed``). The holds' deadline jobs go after commit
    (``reservations_changed``); the customers' and the waiting parties'
    messages are queued in the transaction.

    Raises ``ValueError`` when ``ends_at`` is not after ``starts_at``.
    """
    if ends_at <= starts_at:
        raise ValueError("A closure must end after it starts.")
    closure = Closure(
        room=room,
        starts_at=starts_at,
        ends_at=ends_at,
        reason=reason,
        created_by=actor if isinstance(actor, User) and actor.is_authenticated else None,
    )
    with transaction.atomic():
        # Only the slots' rows (see services.slot_lock); a slot starting
        # meanwhile is left to its game.
        slot_ids = list(
            TimeSlot.objects.closed_by(closure)
            .filter(starts_at__gt=now or timezone.now())
            .select_for_update(of=("self",))
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        now = now or timezone.now()  # read after the locks, as the services do
        closure.created_at = now
        closure.save()
        ended, told = services.slots_close(
            time_slot_ids=slot_ids, reason=reason, now=now, actor=actor
        )
        bookings = closure_bookings(closure)
    return ClosureResult(
        closure=closure, holds_ended=ended, waiting_told=told, bookings=bookings, slot_ids=slot_ids
    )


def closure_bookings(closure: Closure) -> list[Reservation]:
    """The paid bookings on the slots ``closure`` overlaps, earliest first: to move or refund."""
    return list(
        Reservation.objects.filter(
            status=Reservation.Status.PAID,
            time_slot__in=TimeSlot.objects.closed_by(closure),
        )
        .select_related("time_slot__room")
        .order_by("time_slot__starts_at", "time_slot__room__name")
    )
