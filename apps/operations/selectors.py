"""
Reads about expiry and the outbox, shared by scheduler_status, /healthz, /metrics
and the admin; and the staff's day sheet.
"""

import enum
import math
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db.models import Count, Max, Min, Q, Sum
from django.utils import timezone

from apps.messaging.selectors import Backlog, outbox_backlog
from apps.reservations.models import Reservation, ReservationEvent
from apps.rooms.models import Closure, Room, TimeSlot
from apps.rooms.selectors import venue_day_bounds
from escape_rooms_backend import deadlines, timeline

from .models import SchedulerHeartbeat

LATENESS_WINDOW = timedelta(hours=1)
# The outbox reads "backlog" once its oldest pending message has waited this
# long. A working runner sends a message within seconds of its commit; ten
# minutes is about six failed attempts at the default backoff, so a short
# hiccup of the mail server passes unnoticed and an outage does not.
OUTBOX_BACKLOG_AFTER = timedelta(minutes=10)
OUTBOX_OK = "ok"
OUTBOX_BACKLOG = "backlog"


def heartbeat_stale_after() -> float:
    """Seconds after which a runner's heartbeat counts as stale: two sweep intervals."""
    return 2 * settings.SCHEDULER_SWEEP_SECONDS


def _alive(heartbeat: SchedulerHeartbeat) -> bool:
    # A process on this host can be asked; one elsewhere is judged by its age.
    if heartbeat.hostname != socket.gethostname():
        return True
    try:
        os.kill(heartbeat.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def latest_heartbeat() -> SchedulerHeartbeat | None:
    """
    The most recent heartbeat of the runner (the scheduler that runs the jobs).

    Skips processes on this host that no longer exist (a ``runserver`` killed
    without a clean stop), so they do not count as running until their
    heartbeat goes stale.
    """
    candidates = SchedulerHeartbeat.objects.filter(stopped_at__isnull=True, role="runner").order_by(
        "-beat_at"
    )
    return next((beat for beat in candidates[:20] if _alive(beat)), None)


def running_schedulers(now: datetime, role: str = "runner") -> list[SchedulerHeartbeat]:
    """Every scheduler in ``role`` whose heartbeat is fresh and not stopped (one runner)."""
    fresh_since = now - timedelta(seconds=heartbeat_stale_after())
    candidates = SchedulerHeartbeat.objects.filter(
        stopped_at__isnull=True, beat_at__gte=fresh_since, role=role
    )
    return [beat for beat in candidates if _alive(beat)]


def heartbeat_age(heartbeat: SchedulerHeartbeat | None, now: datetime) -> float | None:
    return None if heartbeat is None else (now - heartbeat.beat_at).total_seconds()


@dataclass(frozen=True)
class Overdue:
    count: int
    oldest_age_seconds: float | None


def overdue_holds(now: datetime) -> Overdue:
    """Pending reservations past ``expires_at``: what the jobs and the sweep have yet to tidy."""
    due = Reservation.objects.due_for_expiry(now).aggregate(
        count=Count("pk"), oldest=Min("expires_at")
    )
    oldest = None if due["oldest"] is None else (now - due["oldest"]).total_seconds()
    return Overdue(due["count"], oldest)


def _percentile(ordered: list[float], fraction: float) -> float:
    # Nearest rank: the smallest value with at least ``fraction`` of the data at or below it.
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class Lateness:
    count: int
    p50: float | None = None
    p95: float | None = None
    max: float | None = None


def expiry_lateness(now: datetime, window: timedelta = LATENESS_WINDOW) -> Lateness:
    """Seconds from ``expires_at`` to release, over the expiries of the last ``window``."""
    values = sorted(
        value
        for value in ReservationEvent.objects.filter(
            at__gte=now - window, lateness_seconds__isnull=False
        ).values_list("lateness_seconds", flat=True)
        if value is not None
    )
    if not values:
        return Lateness(0)
    return Lateness(len(values), _percentile(values, 0.5), _percentile(values, 0.95), values[-1])


def holds_pending() -> int:
    """Pending reservations, within their hold or past it (served by the pending index)."""
    return Reservation.objects.filter(status=Reservation.Status.PENDING).count()


@dataclass(frozen=True)
class LatenessHistogram:
    bounds: tuple[float, ...]  # the buckets' upper bounds, seconds, ascending
    cumulative: tuple[int, ...]  # releases at or below each bound
    count: int
    sum: float  # seconds


def lateness_histogram(
    now: datetime, window: timedelta, bounds: tuple[float, ...]
) -> LatenessHistogram:
    """
    The releases of lapsed holds in the ``window`` before ``now``, by lateness.

    Lateness is the seconds from ``expires_at`` until the slot was released,
    as the audit trail records it. One query over that window's events (the
    ``(cause, at)`` index), whatever the size of the trail.
    """
    events = ReservationEvent.objects.filter(
        cause__in=ReservationEvent.Cause.values,  # lets the (cause, at) index serve the range
        at__gt=now - window,
        at__lte=now,
        lateness_seconds__isnull=False,
    )
    buckets = {
        f"le{index}": Count("pk", filter=Q(lateness_seconds__lte=bound))
        for index, bound in enumerate(bounds)
    }
    row = events.aggregate(count=Count("pk"), total=Sum("lateness_seconds"), **buckets)
    return LatenessHistogram(
        bounds=bounds,
        cumulative=tuple(row[f"le{index}"] for index in range(len(bounds))),
        count=row["count"],
        sum=row["total"] or 0.0,
    )


@dataclass(frozen=True)
class SchedulerCounters:
    sweeps: int  # sweeps run, by every process ever
    sweep_seconds: float  # their total duration
    takeovers: int  # times a process took the runner lock
    last_sweep_at: datetime | None  # the end of the latest sweep, by any process


def scheduler_counters() -> SchedulerCounters:
    """The heartbeats' counters summed over every process (one row each): one query."""
    row = SchedulerHeartbeat.objects.aggregate(
        sweeps=Sum("sweeps"),
        sweep_seconds=Sum("sweep_seconds"),
        takeovers=Sum("takeovers"),
        last_sweep_at=Max("last_sweep_at"),
    )
    return SchedulerCounters(
        sweeps=row["sweeps"] or 0,
        sweep_seconds=row["sweep_seconds"] or 0.0,
        takeovers=row["takeovers"] or 0,
        last_sweep_at=row["last_sweep_at"],
    )


def job_lateness_totals(width: int) -> dict[str, list[float]]:
    """
    Kind -> every process's deadline job lateness counts added up (``JobLateness.snapshot()``).

    ``width`` is the length of a snapshot's list as this release counts:
    one of another length (buckets changed since) is left out.
    """
    totals: dict[str, list[float]] = {}
    for snapshot in SchedulerHeartbeat.objects.exclude(job_lateness={}).values_list(
        "job_lateness", flat=True
    ):
        for kind, counts in (snapshot or {}).items():
            if len(counts) != width:
                continue
            total = totals.setdefault(kind, [0.0] * width)
            for index, count in enumerate(counts):
                total[index] += count
    return totals


def outbox_state(backlog: Backlog, now: datetime) -> str:
    """
    ``"backlog"`` when the oldest pending message has waited past ``OUTBOX_BACKLOG_AFTER``.

    Else ``"ok"``. Messages given up on (``failed``) do not count: they wait
    for staff in the admin, not for the mail server, and one bounced address
    would otherwise keep the outbox reading "backlog" for good.
    """
    age = backlog.oldest_age_seconds(now)
    late = age is not None and age > OUTBOX_BACKLOG_AFTER.total_seconds()
    return OUTBOX_BACKLOG if late else OUTBOX_OK


@dataclass(frozen=True)
class SchedulerStatus:
    now: datetime
    heartbeat: SchedulerHeartbeat | None
    heartbeat_age_seconds: float | None
    running: bool
    overdue: Overdue
    lateness: Lateness
    messages: Backlog
    expiry_jobs: int | None = None  # the hold's end's jobs
    jobs_per_kind: dict[str, int] | None = None  # deadline kind -> jobs in the store
    next_run_time: datetime | None = None
    job_store_error: str = ""


def scheduler_status_get(*, now: datetime | None = None) -> SchedulerStatus:
    """Everything ``scheduler_status`` shows; reads the job store, so not for hot paths."""
    now = now or timezone.now()
    heartbeat = latest_heartbeat()
    age = heartbeat_age(heartbeat, now)
    expiry_jobs = next_run_time = jobs_per_kind = None
    job_store_error = ""
    try:
        timeline.job_store_next_run_time()  # missing or damaged: say so
        jobs_per_kind = {}
        for kind in deadlines.kinds():
            jobs = timeline.stored_jobs(kind)
            jobs_per_kind[kind.name] = len(jobs)
            soonest = min((t for t in jobs.values() if t is not None), default=None)
            if soonest is not None and (next_run_time is None or soonest < next_run_time):
                next_run_time = soonest
        expiry_jobs = jobs_per_kind.get(deadlines.EXPIRY, 0)
    except Exception as exc:  # reported, not raised: status must work when the store does not
        job_store_error = f"{type(exc).__name__}: {exc}"
    return SchedulerStatus(
        now=now,
        heartbeat=heartbeat,
        heartbeat_age_seconds=age,
        running=age is not None and age <= heartbeat_stale_after(),
        overdue=overdue_holds(now),
        lateness=expiry_lateness(now),
        messages=outbox_backlog(),
        expiry_jobs=expiry_jobs,
        jobs_per_kind=jobs_per_kind,
        next_run_time=next_run_time,
        job_store_error=job_store_error,
    )


class SlotState(enum.StrEnum):
    """What the day sheet shows for a time slot."""

    FREE = "free"
    HELD = "held"
    OFFERED = "offered"
    PAID = "paid"
    CHECKED_IN = "checked_in"
    NO_SHOW = "no_show"
    CLOSED = "closed"


@dataclass(frozen=True)
class SheetCell:
    """One room's slot at one time; ``slot`` is None where the room has no slot then."""

    slot: TimeSlot | None = None
    state: SlotState | None = None
    reservation: Reservation | None = None
    closure: Closure | None = None  # the first closure over the slot, even if it is booked
    seconds_left: int = 0  # a hold's (held, offered)
    started: bool = False


@dataclass(frozen=True)
class SheetRow:
    starts_at: datetime
    cells: list[SheetCell]

    @property
    def zone(self) -> str:
        """The venue's zone at the start, ``CEST``: named even for a time the clocks pass twice."""
        return timezone.localtime(self.starts_at).tzname() or ""


@dataclass(frozen=True)
class DaySheet:
    day: date
    now: datetime
    rooms: list[Room]
    rows: list[SheetRow]
    closures: list[Closure]
    counts: dict[str, int] = field(default_factory=dict)  # SlotState value -> slots

    @property
    def clocks_change(self) -> bool:
        """Whether the clocks go forward or back this day: its times then name their zone."""
        start, end = venue_day_bounds(self.day)
        # In UTC: Python subtracts two times of one zone as wall-clock times.
        return end.astimezone(UTC) - start.astimezone(UTC) != timedelta(days=1)


def _slot_state(reservation: Reservation | None, closure: Closure | None) -> SlotState:
    if reservation is None:
        return SlotState.CLOSED if closure is not None else SlotState.FREE
    if reservation.status == Reservation.Status.PENDING:
        return SlotState.OFFERED if reservation.is_offer else SlotState.HELD
    if reservation.attendance:
        return SlotState(reservation.attendance)
    return SlotState.PAID


def day_sheet_get(*, day: date, now: datetime) -> DaySheet:
    """
    The staff's sheet of ``day`` (venue time): every room's slots by start, as of ``now``.

    A slot reads as held or offered only while its hold runs (a lapsed hold
    reads as free before any job has expired it), as paid, checked in or no-show
    once paid, as closed when a closure of its room or of the whole venue
    overlaps it and nobody holds it, and as free otherwise. Columns are the
    active rooms and any other room with slots that day. Four queries,
    whatever the number of days stored: the rooms, the day's slots (served by
    the index on room and start), their holders and the day's closures.
    """
    start, end = venue_day_bounds(day)
    rooms_all = list(Room.objects.order_by("name", "pk"))
    slots = list(
        TimeSlot.objects.filter(
            room__in=[room.pk for room in rooms_all], starts_at__gte=start, starts_at__lt=end
        ).order_by("starts_at", "room_id")
    )
    holders = {
        reservation.time_slot_id: reservation
        for reservation in Reservation.objects.holding(now)
        .filter(time_slot_id__in=[slot.pk for slot in slots])
        .order_by()
    }
    last_end = max((slot.ends_at for slot in slots), default=end)
    closures = list(
        Closure.objects.filter(starts_at__lt=max(end, last_end), ends_at__gt=start)
        .select_related("room")
        .order_by("starts_at", "pk")
    )
    with_slots = {slot.room_id for slot in slots}
    rooms = [room for room in rooms_all if room.is_active or room.pk in with_slots]
    column = {room.pk: index for index, room in enumerate(rooms)}
    rows: dict[datetime, list[SheetCell]] = {}
    counts = dict.fromkeys(SlotState, 0)
    for slot in slots:
        reservation = holders.get(slot.pk)
        closure = next(
            (
                closure
                for closure in closures
                if closure.room_id in (None, slot.room_id)
                and closure.starts_at < slot.ends_at
                and closure.ends_at > slot.starts_at
            ),
            None,
        )
        state = _slot_state(reservation, closure)
        counts[state] += 1
        cells = rows.setdefault(slot.starts_at, [SheetCell() for _ in rooms])
        cells[column[slot.room_id]] = SheetCell(
            slot=slot,
            state=state,
            reservation=reservation,
            closure=closure,
            seconds_left=reservation.seconds_left(now) if reservation is not None else 0,
            started=slot.starts_at <= now,
        )
    return DaySheet(
        day=day,
        now=now,
        rooms=rooms,
        rows=[SheetRow(starts_at, cells) for starts_at, cells in rows.items()],
        closures=closures,
        counts={state.value: count for state, count in counts.items()},
    )
