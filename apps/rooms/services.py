from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.db import transaction
from django.utils import timezone

from .models import Room, TimeSlot


@dataclass
class SlotGeneration:
    created: list[TimeSlot]  # or, for a dry run, that would be
    existing: int = 0  # already there, skipped
    overlapping: int = 0  # would overlap another slot of the room (say, after a TIME_ZONE change)
    nonexistent: list[datetime] = field(default_factory=list)  # local times a DST change skips


def timeslots_generate(
    *, room: Room, start: date, end: date, times: Iterable[time], dry_run: bool = False
) -> SlotGeneration:
    """
    Create the room's missing slots for each day from ``start`` to ``end`` inclusive.

    ``times`` are wall-clock start times in the venue's ``TIME_ZONE``. A time
    the clocks skip that day (spring forward) is reported, not created; a time
    the clocks pass twice (fall back) means its first occurrence. Each slot
    lasts the room's ``duration_minutes`` of real time, computed in UTC. Slots
    that already exist (same room and start) are skipped, so running it twice
    creates nothing twice; one that would overlap another slot of the room is
    skipped and counted in ``overlapping``.
    """
    tz = timezone.get_default_timezone()
    length = timedelta(minutes=room.duration_minutes)
    wanted: dict[datetime, TimeSlot] = {}
    result = SlotGeneration(created=[])
    day = start
    while day <= end:
        for at in times:
            local = datetime.combine(day, at, tzinfo=tz)
            starts_at = local.astimezone(UTC)
            if starts_at.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
                result.nonexistent.append(local.replace(tzinfo=None))
                continue
            wanted.setdefault(
                starts_at, TimeSlot(room=room, starts_at=starts_at, ends_at=starts_at + length)
            )
        day += timedelta(days=1)
    if not wanted:
        return result
    # One room runs one game at a time: a slot that would overlap another
    # (not merely repeat it) is skipped too.
    nearby = list(
        TimeSlot.objects.filter(
            room=room, starts_at__lt=max(wanted) + length, ends_at__gt=min(wanted)
        ).values_list("starts_at", "ends_at")
    )
    starts = {start for start, _ in nearby}
    for begins, slot in sorted(wanted.items()):
        if begins in starts:
            result.existing += 1
        elif any(start < slot.ends_at and begins < end for start, end in nearby):
            result.overlapping += 1
        else:
            result.created.append(slot)
    if not dry_run:
        with transaction.atomic():
            # ignore_conflicts: another run creating the same slots meanwhile.
            TimeSlot.objects.bulk_create(result.created, batch_size=500, ignore_conflicts=True)
    return result
