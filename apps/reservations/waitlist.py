"""
The waiting list's services: join, leave, and the reads that hand a lapsed slot over.

A party may wait for a time slot that someone holds or booked. When the
holder lets it go, the services hand the slot to the first party waiting, in
the same transaction (``apps.reservations.offers``). Every change of a list
locks its slot first, as the services do, so that a join, a leave and a
hand-over on one slot queue behind each other.
"""

import contextlib
import uuid
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.rooms.models import TimeSlot
from escape_rooms_backend.db import advisory_xact_lock

from . import errors, offers, services
from .models import Reservation, ReservationEvent, WaitingEntry
from .signals import waiting_list_changed

Entry = WaitingEntry.Status


def waiting_join(
    *,
    time_slot_id: int,
    customer_name: str,
    customer_email: str,
    customer_phone: str = "",
    party_size: int,
    client_address: str | None = None,
    request_key: uuid.UUID | None = None,
    now: datetime | None = None,
) -> WaitingEntry:
    """
    Put a party on a held or booked time slot's waiting list, last.

    A hold on the slot that has lapsed is released first, and goes to the
    parties already waiting: the new party then either waits behind them or,
    if no one holds the slot any more, is told to reserve it. ``request_key``
    makes a submission idempotent, as for ``reservation_create``.

    Raises ``SlotNotFound``, ``SlotUnavailable`` (started, or its room is
    closed), ``SlotClosed`` (a closure overlaps it), ``InvalidReservation``
    (party size outside the room's limits), ``SlotAvailable`` (no one holds
    it: reserve it), ``AlreadyWaiting`` (this email address has a live place
    on the list), ``AlreadyHolding`` (it holds or booked the slot) and
    ``TooManyWaiting`` (past
    ``MAX_WAITING_PER_EMAIL`` live places for the address, or
    ``MAX_PENDING_HOLDS_PER_ADDRESS`` for the client address).
    """
    with transaction.atomic():
        slot = services.slot_lock(time_slot_id)
        now = now or timezone.now()
        if request_key is not None:
            earlier = WaitingEntry.objects.filter(request_key=request_key, time_slot=slot).first()
            if earlier is not None:
                return earlier
        if slot.starts_at <= now or not slot.room.is_active:
            raise errors.SlotUnavailable()
        services.slot_closure_check(slot)
        if (problem := services.party_size_problem(slot.room, party_size)) is not None:
            raise errors.InvalidReservation(fields={"party_size": [problem]})
        services.slot_lapsed_holds_expire(
            time_slot_id=slot.pk, now=now, cause=ReservationEvent.Cause.RECLAIM
        )
        holders = Reservation.objects.holding(now).filter(time_slot=slot)
        if not holders.exists():
            raise errors.SlotAvailable()
        live = WaitingEntry.objects.filter(time_slot=slot, status__in=WaitingEntry.LIVE)
        if live.filter(customer_email__iexact=customer_email).exists():
            raise errors.AlreadyWaiting()
        if holders.filter(customer_email__iexact=customer_email).exists():
            # Its hold is its place: on the list too, it would be offered its
            # own lapsed hold afresh, and told its own booking was another's.
            raise errors.AlreadyHolding()
        _waiting_limit_check(customer_email=customer_email, client_address=client_address)
        try:
            with transaction.atomic():
                entry = WaitingEntry.objects.create(
                    time_slot=slot,
                    customer_name=customer_name,
                    customer_email=customer_email,
                    customer_phone=customer_phone,
                    party_size=party_size,
                    client_address=client_address,
                    request_key=request_key,
                    created_at=now,
                )
        except IntegrityError:
            raise errors.AlreadyWaiting() from None
        waiting_list_changed.send(sender=WaitingEntry, entries=[entry], notice=offers.JOINED)
        return entry


def _waiting_limit_check(*, customer_email: str, client_address: str | None) -> None:
    # Joins of one customer queue here, so that two at once cannot both fit.
    advisory_xact_lock(
        f"waiting:{customer_email.lower()}", f"waiting:{client_address}" if client_address else ""
    )
    live = WaitingEntry.objects.filter(status__in=WaitingEntry.LIVE)
    if live.filter(customer_email__iexact=customer_email).count() >= settings.MAX_WAITING_PER_EMAIL:
        raise errors.TooManyWaiting()
    if (
        client_address
        and live.filter(client_address=client_address).count()
        >= settings.MAX_PENDING_HOLDS_PER_ADDRESS
    ):
        raise errors.TooManyWaiting()


def waiting_leave(
    *,
    entry: WaitingEntry,
    now: datetime | None = None,
    actor: AbstractBaseUser | None = None,
) -> WaitingEntry:
    """
    Take a party off its slot's waiting list; an offer it holds is cancelled and passed on.

    The party leaves, or staff (``actor``) take it off: an offer's
    cancellation is then recorded as staff's. Idempotent for a party that
    already left. Raises ``NotWaiting`` when its place ended otherwise
    (booked, lapsed, closed).
    """
    with transaction.atomic():
        TimeSlot.objects.select_for_update().filter(pk=entry.time_slot_id).exists()
        now = now or timezone.now()
        entry.refresh_from_db()
        if entry.status == Entry.WAITING:
            WaitingEntry.objects.filter(pk=entry.pk, status=Entry.WAITING).update(
                status=Entry.LEFT, ended_at=now
            )
        elif entry.status == Entry.OFFERED and entry.offer is not None:
            # Its release passes the slot on and marks the place left; an
            # offer that had lapsed ended the place with it.
            with contextlib.suppress(errors.HoldExpired):
                services.reservation_cancel(
                    reservation=entry.offer,
                    reason=Reservation.CancellationReason.STAFF
                    if actor is not None
                    else Reservation.CancellationReason.CUSTOMER,
                    now=now,
                    actor=actor,
                )
        elif entry.status != Entry.LEFT:
            raise errors.NotWaiting()
        entry.refresh_from_db()
    if entry.status == Entry.LAPSED:
        raise errors.NotWaiting()
    return entry


def waiting_lists_refresh(time_slot_ids: Iterable[int], *, now: datetime | None = None) -> int:
    """
    Release lapsed holds on these slots that parties wait for, so that the offers are made.

    For the reads of waiting parties and of the slot pages: the offer does
    not wait for the expiry job or the sweep. Returns how many holds it
    released.
    """
    now = now or timezone.now()
    slot_ids = list(
        Reservation.objects.due_for_expiry(now)
        .filter(
            time_slot_id__in=list(time_slot_ids),
            time_slot__waiting_entries__status=Entry.WAITING,
        )
        .values_list("time_slot_id", flat=True)
        .distinct()
    )
    released = 0
    for slot_id in slot_ids:
        with transaction.atomic():
            TimeSlot.objects.select_for_update().filter(pk=slot_id).exists()
            released += services.slot_lapsed_holds_expire(
                time_slot_id=slot_id, now=timezone.now(), cause=ReservationEvent.Cause.WAITLIST
            )
    return released
