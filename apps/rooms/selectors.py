from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db.models import Min, Q, QuerySet
from django.utils import timezone

from .models import Room, TimeSlot


def room_list_active() -> QuerySet[Room]:
    """Rooms open for booking, with their price tiers."""
    return Room.objects.filter(is_active=True).prefetch_related("price_tiers")


# Days further than this from today are refused wherever a person picks one
# (the slot lists, the day sheet, reports, closures): ten years either way.
MAX_DAYS_AWAY = 3660
DATE_OUT_OF_RANGE = "Pick a date within ten years of today."


def day_within_reach(day: date, today: date) -> bool:
    """Whether ``day`` is at most ``MAX_DAYS_AWAY`` days before or after ``today``."""
    return abs((day - today).days) <= MAX_DAYS_AWAY


def venue_day_bounds(day: date) -> tuple[datetime, datetime]:
    """Return the aware start and end of ``day`` in the venue's ``TIME_ZONE``.

    The day lasts 23 or 25 hours when daylight-saving time changes.
    """
    tz = timezone.get_default_timezone()
    start = datetime.combine(day, time.min, tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=tz)
    return start, end


def timeslot_list_fresh_for(*, room: Room, day: date, now: datetime) -> int:
    """
    Seconds the room's slot list for ``day`` stays true, at most ``PUBLIC_LIST_MAX_AGE``.

    Until the first hold (or offer) on those slots ends, the first of them
    starts, or the first comes within ``WAITLIST_OFFER_SECONDS`` of its start
    (a lapsed hold then goes free rather than to a waiting party), whichever
    comes first: then a slot's availability changes by the clock alone.
    Rounded down; 0 when that is under a second away.
    """
    start, end = venue_day_bounds(day)
    offers_until = timedelta(seconds=settings.WAITLIST_OFFER_SECONDS)
    slots = TimeSlot.objects.filter(room=room, starts_at__gte=start, starts_at__lt=end)
    changes = slots.filter(starts_at__gt=now).aggregate(
        start=Min("starts_at"),
        offers_end=Min("starts_at", filter=Q(starts_at__gt=now + offers_until)),
        hold_end=Min(
            "reservations__expires_at",
            filter=Q(reservations__status="pending", reservations__expires_at__gt=now),
        ),
    )
    if changes["offers_end"] is not None:
        changes["offers_end"] -= offers_until
    seconds = [
        (at - now).total_seconds()
        for at in (changes["start"], changes["offers_end"], changes["hold_end"])
        if at
    ]
    return int(min([settings.PUBLIC_LIST_MAX_AGE, *seconds]))


def timeslot_list_for_day(*, room: Room, day: date, now: datetime) -> QuerySet[TimeSlot]:
    """The room's slots starting on ``day`` (venue time), each annotated with ``available``."""
    start, end = venue_day_bounds(day)
    return (
        TimeSlot.objects.filter(room=room, starts_at__gte=start, starts_at__lt=end)
        .with_availability(now)
        .order_by("starts_at")
    )


def timeslot_list_conflicting(
    *, room: Room, starts_at: datetime, ends_at: datetime, exclude_pk: int | None = None
) -> QuerySet[TimeSlot]:
    """
    The room's slots that a game from ``starts_at`` to ``ends_at`` would collide with.

    One room runs one game at a time and needs ``reset_minutes`` after each:
    two slots collide when they overlap once each is extended by the reset
    time, so a slot may start exactly when the previous one's reset ends.
    ``exclude_pk`` leaves out the slot being changed.
    """
    reset = timedelta(minutes=room.reset_minutes)
    slots = TimeSlot.objects.filter(
        room=room, starts_at__lt=ends_at + reset, ends_at__gt=starts_at - reset
    )
    if exclude_pk is not None:
        slots = slots.exclude(pk=exclude_pk)
    return slots.order_by("starts_at")
