from datetime import date, datetime, time, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from .models import Room, TimeSlot


def room_list_active() -> QuerySet[Room]:
    """Rooms open for booking, with their price tiers."""
    return Room.objects.filter(is_active=True).prefetch_related("price_tiers")


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
