import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.db import transaction
from django.utils import timezone

from .models import Room, TimeSlot
from .selectors import timeslot_list_conflicting


def room_lock(*, room_id: int) -> None:
    """
    Lock the room's row until the transaction ends: one writer of its slots at a time.

    Whoever checks a new slot for collisions and then saves it (slot
    generation, the slots admin) takes it first, so that two cannot each
    pass the check and both write. Call it inside that transaction.
    """
    list(Room.objects.select_for_update().filter(pk=room_id).values_list("pk", flat=True))


@dataclass
class SlotGeneration:
    created: list[TimeSlot]  # or, for a dry run, that would be
    existing: int = 0  # already there, skipped
    overlapping: int = 0  # would overlap another slot of the room or its reset time
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
    creates nothing twice. One that would overlap another slot of the room,
    or the room's ``reset_minutes`` before or after it, is skipped and counted
    in ``overlapping``; among the new slots, the earlier one is kept.
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
    with transaction.atomic():
        # The check and the writes under the room's lock: another run, or
        # staff adding a slot, cannot slip a colliding slot in between.
        room_lock(room_id=room.pk)
        nearby = list(
            timeslot_list_conflicting(
                room=room, starts_at=min(wanted), ends_at=max(wanted) + length
            ).values_list("starts_at", "ends_at")
        )
        starts = {begins for begins, _ in nearby}
        busy = _Busy(nearby, reset=timedelta(minutes=room.reset_minutes))
        for begins, slot in sorted(wanted.items()):
            if begins in starts:
                result.existing += 1
            elif busy.collides(begins, slot.ends_at):
                result.overlapping += 1
            else:
                result.created.append(slot)
                busy.add(begins, slot.ends_at)
        if not dry_run:
            # ignore_conflicts: a slot written meanwhile by one that took no lock.
            TimeSlot.objects.bulk_create(result.created, batch_size=500, ignore_conflicts=True)
    return result


class _Busy:
    """The times a room is playing, each followed and preceded by its reset time."""

    def __init__(self, games: Iterable[tuple[datetime, datetime]], *, reset: timedelta) -> None:
        self.games = sorted(games)
        self.reset = reset
        self.longest = max((ends - begins for begins, ends in self.games), default=timedelta(0))

    def collides(self, begins: datetime, ends: datetime) -> bool:
        # Games sorted by start: only those starting before this one's end
        # (plus the reset) and not too long before its start can collide.
        index = bisect.bisect_left(self.games, (ends + self.reset,))
        while index > 0:
            index -= 1
            other_begins, other_ends = self.games[index]
            if other_ends > begins - self.reset:
                return True
            if other_begins <= begins - self.reset - self.longest:
                return False
        return False

    def add(self, begins: datetime, ends: datetime) -> None:
        bisect.insort(self.games, (begins, ends))
        self.longest = max(self.longest, ends - begins)
