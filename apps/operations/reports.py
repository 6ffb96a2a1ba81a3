"""The owner's report: occupancy and revenue per room and week, in the venue's time zone."""

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.db.models.functions import TruncWeek
from django.utils import timezone

from apps.payments.models import Payment
from apps.reservations.models import Reservation
from apps.rooms.models import Closure, Room, TimeSlot

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
    *refunded* the payments that paid for no game and were sent back:
    refused on arrival, or for a booking cancelled since (by the customer,
    or by staff with *Cancel and refund*).
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

    closures = Closure.objects.over(
        room_id=OuterRef("room_id"), starts_at=OuterRef("starts_at"), ends_at=OuterRef("ends_at")
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
    closing_game = Closure.objects.over(
        room_id=OuterRef("time_slot__room_id"),
        starts_at=OuterRef("time_slot__starts_at"),
        ends_at=OuterRef("time_slot__ends_at"),
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
