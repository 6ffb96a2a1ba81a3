from datetime import date, datetime, time, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from .models import Room, TimeSlot


def room_list_active() -> QuerySet[Room]:
    return Room.objects.filter(is_active=True)


def venue_day_bounds(day: date) -> tuple[datetime, datetime]:
    """Return the aware start and end of ``day`` in the venue's ``TIME_ZONE``.

    The day lasts 23 or 25 hours when daylight-saving time changes.
    """
    tz = timezone.get_default_timezone()
    start = datetime.combine(day, time.min, tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=tz)
    return start, end


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
