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
    creates nothing twice.
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
    existing = set(
        TimeSlot.objects.filter(room=room, starts_at__range=(min(wanted), max(wanted))).values_list(
            "starts_at", flat=True
        )
    )
    result.created = [slot for at, slot in sorted(wanted.items()) if at not in existing]
    result.existing = len(wanted) - len(result.created)
    if not dry_run:
        with transaction.atomic():
            # ignore_conflicts: another run creating the same slots meanwhile.
            TimeSlot.objects.bulk_create(result.created, batch_size=500, ignore_conflicts=True)
    return result
