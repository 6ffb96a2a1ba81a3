"""
The hand-over: a time slot let go by its holder goes to the first party waiting for it.

The services call ``slots_released`` in the transaction that lets a slot go
(a hold that lapsed, an offer or a booking cancelled), with the slot locked,
so that no one can book it between its release and its offer: the first
party still waiting on the list (``WaitingEntry``) gets an *offer*, a pending
reservation with a hold of ``WAITLIST_OFFER_SECONDS``. Paying an offer is
paying a hold; an offer that lapses is released like any hold, and passes to
the next party the same way. A slot starting within ``WAITLIST_OFFER_SECONDS``
is offered to no one: it goes free for everyone, and the parties waiting are
told.

Below the services: this module writes rows and sends the domain signals; it
never calls a service.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F
from django.db.models.functions import Lower
from django.utils import timezone

from apps.rooms.models import PriceTier, TimeSlot
from escape_rooms_backend.db import advisory_xact_lock

from .models import Reservation, ReservationEvent, WaitingEntry
from .signals import reservations_changed, waiting_list_changed

logger = logging.getLogger(__name__)

Entry = WaitingEntry.Status
OFFERED_LOG = "Offered %s to waiting party %s (entry %s) until %s"

# What ``waiting_list_changed`` tells the parties: they joined; the slot was
# booked (they stay on the list: a booking may be cancelled); the slot went
# free for everyone (it starts too soon for an offer, and the list is closed);
# the venue closed the slot (and the list).
JOINED = "joined"
SLOT_BOOKED = "slot_booked"
SLOT_FREE = "slot_free"
SLOT_CLOSED = "slot_closed"


def offer_seconds() -> timedelta:
    return timedelta(seconds=settings.WAITLIST_OFFER_SECONDS)


def waiting_on(time_slot_id: int, *, now: datetime) -> bool:
    """
    Whether a lapsed hold on the slot would be offered to a waiting party at ``now``.

    Only a party the room takes counts (the hand-over skips the others); a
    party skipped for another game at that time still counts.
    """
    return WaitingEntry.objects.filter(
        time_slot_id=time_slot_id,
        status=Entry.WAITING,
        time_slot__starts_at__gt=now + offer_seconds(),
        time_slot__room__is_active=True,
        party_size__gte=F("time_slot__room__min_players"),
        party_size__lte=F("time_slot__room__max_players"),
    ).exists()


def slot_gone_to_waiting_list(time_slot_id: int, *, now: datetime, other_than: int | None) -> bool:
    """
    Whether the slot is offered to a waiting party at ``now``, or is about to be.

    An offer holds it, or a lapsed hold on it whose job has not run yet goes
    to the parties waiting (as every read of the slot says). Reservation
    ``other_than`` (the reader's own) does not count.
    """
    others = Reservation.objects.filter(time_slot_id=time_slot_id).exclude(pk=other_than)
    if others.holding(now).filter(is_offer=True, status=Reservation.Status.PENDING).exists():
        return True
    return others.due_for_expiry(now).exists() and waiting_on(time_slot_id, now=now)


def waiting_place(entry: WaitingEntry) -> int | None:
    """The entry's place on its slot's list (1: next to be offered), or ``None`` unless waiting."""
    if entry.status != Entry.WAITING:
        return None
    return WaitingEntry.objects.filter(
        time_slot_id=entry.time_slot_id, status=Entry.WAITING, pk__lte=entry.pk
    ).count()


def slots_released(
    slot_ids: Iterable[int], *, offers_ended: Sequence[int] = (), now: datetime, expired: bool
) -> list[Reservation]:
    """
    Hand slots that reservations just let go to their waiting lists.

    ``slot_ids``: the slots of the reservations expired (``expired``) or
    cancelled in the current transaction, which must hold their locks;
    ``offers_ended``: those of the reservations that were offers, whose
    parties' places end (``lapsed``, or ``left`` when cancelled). Then each
    slot goes to its first party still waiting (``offers_make``). Returns
    the offers made.
    """
    if offers_ended:
        WaitingEntry.objects.filter(offer_id__in=offers_ended, status=Entry.OFFERED).update(
            status=Entry.LAPSED if expired else Entry.LEFT, ended_at=now
        )
    return offers_make(slot_ids, now=now)


def slots_closed(
    slot_ids: Iterable[int], *, offers_ended: Sequence[int] = (), now: datetime, reason: str
) -> list[WaitingEntry]:
    """
    Close the waiting lists of slots the venue just closed: no one is offered them.

    Call in the closure's transaction, with the slots locked, after their
    holds ended. The places of ``offers_ended`` (offers ended by the
    closure, whose parties hear of it with their reservation) and of every
    party still waiting end (``closed``); the waiting parties are told
    (``slot_closed``, with the closure's ``reason``). Returns the entries
    of those told.
    """
    now_closed = {"status": Entry.CLOSED, "ended_at": now}
    if offers_ended:
        WaitingEntry.objects.filter(offer_id__in=offers_ended, status=Entry.OFFERED).update(
            **now_closed
        )
    waiting = list(
        WaitingEntry.objects.filter(time_slot_id__in=list(slot_ids), status=Entry.WAITING)
    )
    if waiting:
        WaitingEntry.objects.filter(pk__in=[entry.pk for entry in waiting]).update(**now_closed)
        for entry in waiting:
            entry.status, entry.ended_at = Entry.CLOSED, now
        waiting_list_changed.send(
            sender=WaitingEntry, entries=waiting, notice=SLOT_CLOSED, reason=reason
        )
    return waiting


def offers_make(slot_ids: Iterable[int], *, now: datetime) -> list[Reservation]:
    """
    Offer each free slot of ``slot_ids`` to the first party waiting for it, at ``now``.

    Call in the transaction that freed the slots, with them locked. A party
    is skipped (and stays waiting) when the room no longer takes its party
    size, or when it holds or booked another game at an overlapping time, or
    is offered one in this call. A slot that has started, whose room is
    closed, or that starts within ``WAITLIST_OFFER_SECONDS`` closes its list
    instead: the parties are told it went free (``slot_free``) unless the
    game has started. One query per step for any number of slots: a burst
    of lapsing holds hands over in its own batches. Returns the offers,
    pending reservations with ``is_offer`` set.
    """
    # Most slots have no list: one plain query says so.
    waiting = list(
        WaitingEntry.objects.filter(time_slot_id__in=list(slot_ids), status=Entry.WAITING)
        .select_related("time_slot__room")
        .order_by("time_slot_id", "pk")
    )
    if not waiting:
        return []
    # A slot someone holds is not free: nothing to hand over.
    held = set(
        Reservation.objects.filter(
            time_slot_id__in={entry.time_slot_id for entry in waiting},
            status__in=[Reservation.Status.PENDING, Reservation.Status.PAID],
        ).values_list("time_slot_id", flat=True)
    )
    waiting = [entry for entry in waiting if entry.time_slot_id not in held]
    if not waiting:
        return []
    by_slot: dict[int, list[WaitingEntry]] = {}
    for entry in waiting:
        by_slot.setdefault(entry.time_slot_id, []).append(entry)
    closing: list[WaitingEntry] = []
    told: list[WaitingEntry] = []
    offerable: dict[int, list[WaitingEntry]] = {}
    for slot_id, entries in by_slot.items():
        slot = entries[0].time_slot
        if slot.starts_at <= now or not slot.room.is_active:
            closing += entries
        elif slot.starts_at <= now + offer_seconds():
            closing += entries
            told += entries
        else:
            offerable[slot_id] = entries
    if closing:
        WaitingEntry.objects.filter(pk__in=[e.pk for e in closing], status=Entry.WAITING).update(
            status=Entry.CLOSED, ended_at=now
        )
        for entry in closing:
            entry.status, entry.ended_at = Entry.CLOSED, now
    if told:
        waiting_list_changed.send(sender=WaitingEntry, entries=told, notice=SLOT_FREE)
    chosen = _first_free_parties(offerable, now=now)
    if not chosen:
        return []
    return _offer(chosen, now=now)


def _first_free_parties(
    offerable: dict[int, list[WaitingEntry]], *, now: datetime
) -> list[WaitingEntry]:
    """For each slot, its first party that fits the room and has no game at that time."""
    emails = {entry.customer_email.lower() for entries in offerable.values() for entry in entries}
    if not emails:
        return []
    # Two hand-overs at once (a job on one slot, a reclaim or a page's read
    # on another at the same hour) must not both find a party free: each
    # locks its parties before reading their games, so that the second
    # reads the first's offer once it commits.
    advisory_xact_lock(*(f"offer:{email}" for email in emails))
    # (start, end) of every game each of these parties holds or booked.
    busy: dict[str, list[tuple[datetime, datetime]]] = {}
    for email, starts_at, ends_at in (
        Reservation.objects.holding(now)
        .annotate(email=Lower("customer_email"))
        .filter(email__in=emails)
        .values_list("email", "time_slot__starts_at", "time_slot__ends_at")
    ):
        busy.setdefault(email, []).append((starts_at, ends_at))
    chosen = []
    for entries in offerable.values():
        for entry in entries:
            slot, room = entry.time_slot, entry.time_slot.room
            email = entry.customer_email.lower()
            if not room.min_players <= entry.party_size <= room.max_players:
                continue
            games = busy.setdefault(email, [])
            if any(start < slot.ends_at and slot.starts_at < end for start, end in games):
                continue
            games.append((slot.starts_at, slot.ends_at))  # one offer per party and time
            chosen.append(entry)
            break
    return chosen


def _offer(entries: list[WaitingEntry], *, now: datetime) -> list[Reservation]:
    expires_at = now + offer_seconds()
    tiers: dict[int, list[PriceTier]] = defaultdict(list)
    for tier in PriceTier.objects.filter(room_id__in={e.time_slot.room_id for e in entries}):
        tiers[tier.room_id].append(tier)
    offers = Reservation.objects.bulk_create(
        Reservation(
            time_slot_id=entry.time_slot_id,
            price=entry.time_slot.room.price_for(entry.party_size, tiers[entry.time_slot.room_id]),
            currency=entry.time_slot.room.currency,
            customer_name=entry.customer_name,
            customer_email=entry.customer_email,
            customer_phone=entry.customer_phone,
            party_size=entry.party_size,
            client_address=entry.client_address,
            status=Reservation.Status.PENDING,
            created_at=now,
            expires_at=expires_at,
            is_offer=True,
        )
        for entry in entries
    )
    for entry, offer in zip(entries, offers, strict=True):
        entry.status, entry.offer, entry.offered_at = Entry.OFFERED, offer, now
    WaitingEntry.objects.bulk_update(entries, ["status", "offer", "offered_at"])
    TimeSlot.objects.filter(pk__in=[entry.time_slot_id for entry in entries]).update(
        status=TimeSlot.Status.RESERVED
    )
    ReservationEvent.objects.bulk_create(
        ReservationEvent(
            reservation=offer,
            from_status="",
            to_status=Reservation.Status.PENDING,
            at=now,
            cause=ReservationEvent.Cause.WAITLIST,
            detail=f"Offered to the first party on the waiting list (entry {entry.pk})",
        )
        for entry, offer in zip(entries, offers, strict=True)
    )
    for entry, offer in zip(entries, offers, strict=True):
        logger.info(
            OFFERED_LOG,
            entry.time_slot,
            entry.customer_name,
            entry.pk,
            timezone.localtime(offer.expires_at).isoformat(timespec="seconds"),
        )
    reservations_changed.send(sender=Reservation, reservations=offers)
    return offers


def slot_booked(reservation: Reservation, *, now: datetime) -> None:
    """
    A reservation on the slot was just paid: its offer, if it was one, is taken.

    The parties still waiting are told (``slot_booked``) and stay on the
    list, in case the booking is cancelled.
    """
    if reservation.is_offer:
        # Or paid late: an offer that lapsed while no one else waited.
        WaitingEntry.objects.filter(
            offer_id=reservation.pk, status__in=[Entry.OFFERED, Entry.LAPSED]
        ).update(status=Entry.BOOKED, ended_at=now)
    waiting = list(
        WaitingEntry.objects.filter(time_slot_id=reservation.time_slot_id, status=Entry.WAITING)
    )
    if waiting:
        waiting_list_changed.send(
            sender=WaitingEntry, entries=waiting, notice=SLOT_BOOKED, booking=reservation
        )
