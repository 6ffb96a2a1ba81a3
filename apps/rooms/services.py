from collections.abc import Iterable
from datetime import date, datetime, time, timedelta

from django.db import transaction
from django.utils import timezone

from .models import Room, TimeSlot


def timeslots_generate(
    *, room: Room, start: date, end: date, times: Iterable[time], dry_run: bool = False
) -> list[TimeSlot]:
    """
    Create the room's missing slots for each day from ``start`` to ``end`` inclusive.

    ``times`` are wall-clock start times in the venue's ``TIME_ZONE``; each
    slot lasts the room's ``duration_minutes``. Slots that already exist (same
    room and start) are skipped, so running it twice creates nothing twice.
    Returns the slots created (or, with ``dry_run``, that would be).
    """
    tz = timezone.get_default_timezone()
    length = timedelta(minutes=room.duration_minutes)
    wanted = []
    day = start
    while day <= end:
        for at in times:
            starts_at = datetime.combine(day, at, tzinfo=tz)
            wanted.append(TimeSlot(room=room, starts_at=starts_at, ends_at=starts_at + length))
        day += timedelta(days=1)
    existing = set(
        TimeSlot.objects.filter(
            room=room, starts_at__in=[slot.starts_at for slot in wanted]
        ).values_list("starts_at", flat=True)
    )
    missing = [slot for slot in wanted if slot.starts_at not in existing]
    if not dry_run:
        with transaction.atomic():
            TimeSlot.objects.bulk_create(missing, ignore_conflicts=True)
    return missing
