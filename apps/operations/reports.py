"""
Reports: the owner's occupancy and revenue per room and week, in the venue's
time zone; and the operator's numbers for ``/metrics``, in Prometheus' text
format.

Most of ``/metrics`` is state, and the state is in the database: every web
worker and every scheduler process writes there, so ``VenueCollector`` reads
it at scrape time (a handful of small queries, each served by an index,
however long the audit trail) and any web worker answers the same. Counters
that only grow are kept in the database too: the heartbeats' sweeps,
takeovers and the runners' counts of their jobs' lateness. The reserve
outcomes are counted in the web processes that see them: with
``PROMETHEUS_MULTIPROC_DIR`` set (several gunicorn workers),
``prometheus_client`` keeps them in files there and adds up every worker's;
without it, in this process's default registry.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from time import monotonic

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.db.models.functions import TruncWeek
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from apps.messaging.selectors import outbox_backlog, outbox_due
from apps.payments.models import Payment
from apps.reservations.models import Reservation
from apps.rooms.models import Closure, Room, TimeSlot
from escape_rooms_backend import deadlines, timeline
from escape_rooms_backend.lifecycle import LATENESS_BUCKETS

from .selectors import (
    holds_pending,
    job_lateness_totals,
    lateness_histogram,
    overdue_holds,
    running_schedulers,
    scheduler_counters,
)

WEEKS_BEFORE = 8
WEEKS_AFTER = 4
CENT = Decimal("0.01")


@dataclass
class RoomWeek:
    """One room's figures for one week (Monday to Sunday, venue time), by its games' start."""

    room: str
    week_start: date
    offered: int = 0  # slots not closed
    closed: int = 0  # slots a closure overlaps
    booked: int = 0  # paid reservations
    booked_closed: int = 0  # of those, on closed slots (still to be moved or refunded)
    lapsed: int = 0  # holds that ended unpaid
    revenue: dict[str, Decimal] = field(default_factory=dict)  # currency -> paid prices
    refunded: dict[str, Decimal] = field(default_factory=dict)  # currency -> money sent back

    @property
    def iso_week(self) -> str:
        """``2026-W49``."""
        year, week, _ = self.week_start.isocalendar()
        return f"{year}-W{week:02d}"

    @property
    def occupancy(self) -> Decimal | None:
        """
        Booked slots per hundred offered, to one decimal; ``None`` when none was offered.

        Bookings left on closed slots do not count: those slots are not offered.
        """
        if not self.offered:
            return None
        percent = Decimal(100 * (self.booked - self.booked_closed)) / self.offered
        return percent.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class OccupancyReport:
    start: date  # a Monday
    end: date  # a Sunday, inclusive
    rows: list[RoomWeek]  # by week, then room name
    currencies: list[str]  # every currency in the revenue or refunds, sorted


def report_weeks_default(today: date) -> tuple[date, date]:
    """The last ``WEEKS_BEFORE`` weeks, this one and the next ``WEEKS_AFTER``: Monday to Sunday."""
    monday = today - timedelta(days=today.weekday())
    return monday - timedelta(weeks=WEEKS_BEFORE), monday + timedelta(
        weeks=WEEKS_AFTER + 1, days=-1
    )


def occupancy_report_get(*, start: date, end: date, now: datetime | None = None) -> OccupancyReport:
    """
    Per room and ISO week, from ``start``'s week to ``end``'s (whole weeks, venue time).

    A game counts in the week it starts in the venue's ``TIME_ZONE``, and so do
    its reservation, its price and any refund of a payment for it. *Offered*
    are the slots no closure overlaps (a closure without a room closes them
    all); *booked* the paid reservations; *revenue* the sum of their frozen
    prices per currency; *lapsed* the holds that ended unpaid (expired, or
    past ``expires_at`` at ``now`` and not yet expired by a job);
    *refunded* the payments that paid for no game and were sent back.
    Rooms and weeks with no slot and no reservation are left out.

    Four grouped queries and one for the rooms' names, whatever the range.
    """
    now = now or timezone.now()
    tz = timezone.get_default_timezone()
    start -= timedelta(days=start.weekday())
    end += timedelta(days=6 - end.weekday())
    since = datetime.combine(start, time.min, tzinfo=tz)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=tz)
    rows: dict[tuple[int, date], RoomWeek] = {}

    def row(room_id: int, week: datetime) -> RoomWeek:
        key = (room_id, timezone.localtime(week, tz).date())
        if key not in rows:
            rows[key] = RoomWeek(room="", week_start=key[1])
        return rows[key]

    closures = Closure.objects.filter(
        Q(room=OuterRef("room")) | Q(room__isnull=True),
        starts_at__lt=OuterRef("ends_at"),
        ends_at__gt=OuterRef("starts_at"),
    )
    slots = (
        TimeSlot.objects.filter(starts_at__gte=since, starts_at__lt=until)
        .annotate(week=TruncWeek("starts_at", tzinfo=tz))
        .values("room_id", "week")
        .annotate(
            offered=Count("pk", filter=~Exists(closures)),
            closed=Count("pk", filter=Exists(closures)),
        )
        .order_by()
    )
    for figures in slots:
        week = row(figures["room_id"], figures["week"])
        week.offered, week.closed = figures["offered"], figures["closed"]

    games = Reservation.objects.filter(
        time_slot__starts_at__gte=since, time_slot__starts_at__lt=until
    ).annotate(week=TruncWeek("time_slot__starts_at", tzinfo=tz))
    closing_game = Closure.objects.filter(
        Q(room=OuterRef("time_slot__room")) | Q(room__isnull=True),
        starts_at__lt=OuterRef("time_slot__ends_at"),
        ends_at__gt=OuterRef("time_slot__starts_at"),
    )
    paid = (
        games.filter(status=Reservation.Status.PAID)
        .values("time_slot__room_id", "week", "currency")
        .annotate(
            booked=Count("pk"),
            booked_closed=Count("pk", filter=Exists(closing_game)),
            revenue=Sum("price"),
        )
        .order_by()
    )
    for figures in paid:
        week = row(figures["time_slot__room_id"], figures["week"])
        week.booked += figures["booked"]
        week.booked_closed += figures["booked_closed"]
        # SQLite drops the trailing zeros of a sum: back to cents.
        week.revenue[figures["currency"]] = Decimal(figures["revenue"]).quantize(CENT)
    lapsed = (
        games.filter(
            Q(
                status=Reservation.Status.CANCELLED,
                cancellation_reason=Reservation.CancellationReason.EXPIRED,
            )
            | Q(status=Reservation.Status.PENDING, expires_at__lte=now)
        )
        .values("time_slot__room_id", "week")
        .annotate(lapsed=Count("pk"))
        .order_by()
    )
    for figures in lapsed:
        row(figures["time_slot__room_id"], figures["week"]).lapsed = figures["lapsed"]

    refunded = (
        Payment.objects.filter(
            outcome=Payment.Outcome.REFUND_DUE,
            refunded_at__isnull=False,
            reservation__time_slot__starts_at__gte=since,
            reservation__time_slot__starts_at__lt=until,
        )
        .annotate(week=TruncWeek("reservation__time_slot__starts_at", tzinfo=tz))
        .values("reservation__time_slot__room_id", "week", "currency")
        .annotate(amount=Sum("amount"))
        .order_by()
    )
    for figures in refunded:
        week = row(figures["reservation__time_slot__room_id"], figures["week"])
        week.refunded[figures["currency"]] = Decimal(figures["amount"]).quantize(CENT)

    names = dict(
        Room.objects.filter(pk__in={room_id for room_id, _ in rows}).values_list("pk", "name")
    )
    for (room_id, _), week in rows.items():
        week.room = names[room_id]
    ordered = sorted(rows.values(), key=lambda week: (week.week_start, week.room))
    currencies = sorted({c for week in ordered for c in (*week.revenue, *week.refunded)})
    return OccupancyReport(start=start, end=end, rows=ordered, currencies=currencies)


# ---------------------------------------------------------------------------
# /metrics
# ---------------------------------------------------------------------------

ROLES = ("runner", "standby")


class VenueCollector(Collector):
    """Read the holds, the deadlines, the scheduler and the outbox from the database at ``now``."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def collect(self) -> Iterator[Metric]:
        started = monotonic()
        now = self.now or timezone.now()
        yield from self._deadlines(now)
        yield from self._holds(now)
        yield from self._scheduler(now)
        yield from self._outbox(now)
        yield GaugeMetricFamily(
            "escape_rooms_metrics_collect_seconds",
            "How long reading these numbers from the database took, seconds.",
            value=monotonic() - started,
        )

    def _deadlines(self, now: datetime) -> Iterator[Metric]:
        window = settings.METRICS_LATENESS_WINDOW_SECONDS
        lateness = GaugeHistogramMetricFamily(
            "escape_rooms_deadline_lateness_seconds",
            f"Seconds from a deadline's due time until its work was done, for the deadlines "
            f"done in the last {window} s (a window, not a counter: no rate()). The hold's "
            f"end (kind expiry) only: its releases are in the audit trail.",
            labels=["kind"],
        )
        histogram = lateness_histogram(now, timedelta(seconds=window), LATENESS_BUCKETS)
        buckets = [
            (floatToGoString(bound), float(count))
            for bound, count in zip(histogram.bounds, histogram.cumulative, strict=True)
        ]
        lateness.add_metric(
            [deadlines.EXPIRY], [*buckets, ("+Inf", float(histogram.count))], histogram.sum
        )
        yield lateness
        yield self._job_lateness()
        jobs = GaugeMetricFamily(
            "escape_rooms_deadline_jobs",
            "Jobs in the job store, by deadline kind.",
            labels=["kind"],
        )
        try:
            counts = timeline.jobs_per_kind()
        except Exception:  # reported as down, not raised: the other numbers still matter
            up = 0.0
        else:
            up = 1.0
            for kind, count in counts.items():
                jobs.add_metric([kind], float(count))
        yield jobs
        yield GaugeMetricFamily(
            "escape_rooms_job_store_up", "1 when the job store answered, else 0.", value=up
        )

    def _job_lateness(self) -> Metric:
        family = HistogramMetricFamily(
            "escape_rooms_deadline_job_lateness_seconds",
            "Seconds from a deadline job's run time until it returned, by kind, counted by "
            "the runners since they started (a job that folded others in counts once); "
            "up to a minute behind.",
            labels=["kind"],
        )
        width = len(LATENESS_BUCKETS) + 2
        totals = job_lateness_totals(width)
        for kind in deadlines.kinds():
            counts = totals.get(kind.name, [0.0] * width)
            buckets = [
                (floatToGoString(bound), count)
                for bound, count in zip(LATENESS_BUCKETS, counts, strict=False)
            ]
            family.add_metric([kind.name], [*buckets, ("+Inf", counts[-2])], counts[-1])
        return family

    def _holds(self, now: datetime) -> Iterator[Metric]:
        grace = settings.METRICS_OVERDUE_SECONDS
        yield GaugeMetricFamily(
            "escape_rooms_holds_pending",
            "Pending reservations: holds waiting for payment, lapsed ones not yet released too.",
            value=float(holds_pending()),
        )
        overdue = overdue_holds(now - timedelta(seconds=grace))
        yield GaugeMetricFamily(
            "escape_rooms_holds_overdue",
            f"Pending reservations more than {grace:g} s past "
            f"expires_at: lapsed holds no job or sweep has released.",
            value=float(overdue.count),
        )
        oldest = overdue.oldest_age_seconds
        yield GaugeMetricFamily(
            "escape_rooms_holds_overdue_oldest_age_seconds",
            "Seconds since the oldest overdue hold's expires_at; 0 when none is overdue.",
            value=0.0 if oldest is None else oldest + grace,
        )

    def _scheduler(self, now: datetime) -> Iterator[Metric]:
        counters = scheduler_counters()
        sweeps = SummaryMetricFamily(
            "escape_rooms_sweep_duration_seconds",
            "Sweeps run by every runner (count) and how long they took (sum), seconds.",
            count_value=counters.sweeps,
            sum_value=counters.sweep_seconds,
        )
        yield sweeps
        if counters.last_sweep_at is not None:
            yield GaugeMetricFamily(
                "escape_rooms_sweep_last_success_timestamp_seconds",
                "When the latest sweep finished (Unix time).",
                value=counters.last_sweep_at.timestamp(),
            )
        yield CounterMetricFamily(
            "escape_rooms_runner_takeovers",
            "Times a scheduler process took the runner lock (each start of a runner, "
            "and each failover to a standby).",
            value=counters.takeovers,
        )
        processes = GaugeMetricFamily(
            "escape_rooms_scheduler_processes",
            "Scheduler processes with a fresh heartbeat, by role: runner (runs the jobs; "
            "0 means none) or standby.",
            labels=["role"],
        )
        alive = {role: running_schedulers(now, role=role) for role in ROLES}
        for role in ROLES:
            processes.add_metric([role], float(len(alive[role])))
        yield processes
        runners = alive["runner"]
        yield GaugeMetricFamily(
            "escape_rooms_runner_up",
            "1 when a runner has sent a heartbeat within two sweep intervals, else 0.",
            value=1.0 if runners else 0.0,
        )
        if runners:
            yield GaugeMetricFamily(
                "escape_rooms_runner_heartbeat_age_seconds",
                "Seconds since the runner's latest heartbeat.",
                value=max(0.0, min((now - beat.beat_at).total_seconds() for beat in runners)),
            )

    def _outbox(self, now: datetime) -> Iterator[Metric]:
        backlog = outbox_backlog()
        due = outbox_due(now)
        messages = GaugeMetricFamily(
            "escape_rooms_outbox_messages",
            "Customer messages in the outbox by state: pending (not sent yet), due (pending "
            "and due for an attempt now), failing (pending, the last attempt failed) and "
            "failed (given up on; staff may send them again).",
            labels=["state"],
        )
        messages.add_metric(["pending"], float(backlog.pending))
        messages.add_metric(["due"], float(due.count))
        messages.add_metric(["failing"], float(backlog.failing))
        messages.add_metric(["failed"], float(backlog.failed))
        yield messages
        yield GaugeMetricFamily(
            "escape_rooms_outbox_oldest_due_age_seconds",
            "Seconds the longest-waiting due message has waited past its attempt; 0 when none.",
            value=due.oldest_age_seconds(now),
        )
        yield GaugeMetricFamily(
            "escape_rooms_outbox_oldest_pending_age_seconds",
            "Seconds since the oldest pending message was queued; 0 when none.",
            value=backlog.oldest_age_seconds(now) or 0.0,
        )


def metrics_exposition(*, now: datetime | None = None) -> bytes:
    """Every number of ``/metrics`` in the Prometheus text format (version 0.0.4)."""
    registry = CollectorRegistry()
    registry.register(VenueCollector(now))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every gunicorn worker's counters, from the files they write there.
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)  # this process's counters, and its process_* numbers
    return generate_latest(registry)
