"""The owner's report: occupancy and revenue per room and week, on a page and as CSV."""

import csv
import io
import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from apps.operations.reports import occupancy_report_get
from apps.payments.models import Payment
from apps.payments.services import (
    booking_cancel_by_customer,
    payment_confirm_price,
    payment_mark_refunded,
)
from apps.reservations.models import Reservation
from apps.rooms.models import Closure, TimeSlot

from ..factories import ReservationFactory, RoomFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db

URL = "/admin/reports/occupancy/"
W23 = date(2030, 6, 3)  # Monday of ISO week 2030-W23
RANGE = {"start": "2030-06-05", "end": "2030-06-12"}  # a Wednesday to a Wednesday: W23 and W24


def local(day: date, hhmm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hhmm), tzinfo=timezone.get_default_timezone())


def slot(room, at: datetime) -> TimeSlot:
    return TimeSlotFactory(room=room, starts_at=at, ends_at=at + timedelta(hours=1))


def paid(time_slot: TimeSlot, price: str, currency: str = "EUR") -> Reservation:
    return ReservationFactory(
        time_slot=time_slot,
        status=Reservation.Status.PAID,
        paid_at=time_slot.starts_at - timedelta(days=7),
        price=Decimal(price),
        currency=currency,
    )


@pytest.fixture
def venue(settings):
    """
    Two rooms over ISO weeks 2030-W23 and W24 (Europe/Berlin, UTC+2 in June).

    Tomb, W23: four slots; one paid at 89 (Sunday 23:30, which is still W23
    in Berlin), one paid at 120, one whose hold lapsed and whose late payment
    was refunded, one the whole venue closed. W24: a slot on Monday 00:30,
    which is Sunday in UTC, paid at 89. Sub, W23: two slots, one paid in CHF,
    one held by a hold past its end that no job has expired yet; a closure
    of Sub alone overlaps Tomb's 120 game. Both rooms have slots and bookings
    in W25, outside the range.
    """
    settings.TIME_ZONE = "Europe/Berlin"
    tomb = RoomFactory(name="Tomb", price=Decimal("89.00"))
    sub = RoomFactory(name="Sub", price=Decimal("119.00"), currency="CHF")
    paid(slot(tomb, local(W23 + timedelta(days=6), "23:30")), "89.00")
    paid(slot(tomb, local(W23, "18:00")), "120.00")
    lapsed = ReservationFactory(
        time_slot=slot(tomb, local(W23, "20:00")),
        status=Reservation.Status.CANCELLED,
        cancelled_at=local(W23, "10:00"),
        cancellation_reason=Reservation.CancellationReason.EXPIRED,
        expires_at=local(W23, "10:00"),
    )
    Payment.objects.create(
        reference="PAY-late",
        reservation=lapsed,
        reservation_token=str(lapsed.token),
        amount=Decimal("89.00"),
        currency="EUR",
        received_at=local(W23, "10:05"),
        source="webhook",
        outcome=Payment.Outcome.REFUND_DUE,
        reason=Payment.Reason.CANCELLED,
        refunded_at=local(W23, "12:00"),
    )
    closed = slot(tomb, local(W23 + timedelta(days=1), "10:00"))
    Closure.objects.create(
        starts_at=closed.starts_at - timedelta(hours=1), ends_at=closed.ends_at, reason="Floods"
    )
    Closure.objects.create(
        room=sub, starts_at=local(W23, "17:00"), ends_at=local(W23, "22:00"), reason="Repairs"
    )
    paid(slot(tomb, local(W23 + timedelta(days=7), "00:30")), "89.00")
    paid(slot(sub, local(W23 + timedelta(days=2), "12:00")), "119.00", currency="CHF")
    ReservationFactory(
        time_slot=slot(sub, local(W23 + timedelta(days=2), "14:00")),
        expires_at=timezone.now() - timedelta(minutes=1),
    )
    paid(slot(tomb, local(W23 + timedelta(days=14), "12:00")), "89.00")
    paid(slot(sub, local(W23 + timedelta(days=14), "12:00")), "119.00", currency="CHF")
    return tomb, sub


def login(client, *permissions: str):
    user = get_user_model().objects.create_user("staff", password="pw", is_staff=True)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return client


def table(html: str) -> list[list[str]]:
    body = html.split('<table id="report">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, flags=re.S) for row in rows]
    return [[" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in row] for row in cells]


def test_the_report_page_shows_each_rooms_weeks_in_venue_time(client, venue):
    login(client, "view_reservation")

    response = client.get(URL, RANGE)

    assert response.status_code == 200
    assert table(response.content.decode()) == [
        [
            "Week",
            "Room",
            "Offered",
            "Closed",
            "Booked",
            "Occupancy",
            "Revenue",
            "Refunded",
            "Lapsed holds",
        ],
        ["2030-W23 (Jun 3)", "Sub", "2", "0", "1", "50.0 %", "119.00 CHF", "-", "1"],
        ["2030-W23 (Jun 3)", "Tomb", "3", "1", "2", "66.7 %", "209.00 EUR", "89.00 EUR", "1"],
        ["2030-W24 (Jun 10)", "Tomb", "1", "0", "1", "100.0 %", "89.00 EUR", "-", "0"],
    ]
    assert "Monday 2030-06-03 to Sunday 2030-06-16" in response.content.decode()


def test_the_report_downloads_as_csv_with_plain_numbers(client, venue):
    login(client, "view_reservation")

    response = client.get(URL, {**RANGE, "format": "csv"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="occupancy-2030-06-03-to-2030-06-16.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert rows == [
        {
            "week": "2030-W23",
            "week_start": "2030-06-03",
            "room": "Sub",
            "slots_offered": "2",
            "slots_closed": "0",
            "slots_booked": "1",
            "occupancy_percent": "50.0",
            "lapsed_holds": "1",
            "revenue_CHF": "119.00",
            "revenue_EUR": "0.00",
            "refunded_CHF": "0.00",
            "refunded_EUR": "0.00",
        },
        {
            "week": "2030-W23",
            "week_start": "2030-06-03",
            "room": "Tomb",
            "slots_offered": "3",
            "slots_closed": "1",
            "slots_booked": "2",
            "occupancy_percent": "66.7",
            "lapsed_holds": "1",
            "revenue_CHF": "0.00",
            "revenue_EUR": "209.00",
            "refunded_CHF": "0.00",
            "refunded_EUR": "89.00",
        },
        {
            "week": "2030-W24",
            "week_start": "2030-06-10",
            "room": "Tomb",
            "slots_offered": "1",
            "slots_closed": "0",
            "slots_booked": "1",
            "occupancy_percent": "100.0",
            "lapsed_holds": "0",
            "revenue_CHF": "0.00",
            "revenue_EUR": "89.00",
            "refunded_CHF": "0.00",
            "refunded_EUR": "0.00",
        },
    ]


def test_the_page_links_to_the_csv_of_the_same_weeks(client, venue):
    login(client, "view_reservation")

    html = client.get(URL, RANGE).content.decode()

    assert 'href="?start=2030-06-03&amp;end=2030-06-16&amp;format=csv"' in html
    assert "Download CSV" in html


def test_a_week_is_monday_to_sunday_in_the_venues_time_zone_not_utc(settings):
    settings.TIME_ZONE = "Pacific/Auckland"  # UTC+12 in June
    room = RoomFactory(name="Tomb")
    # Monday 08:00 in Auckland is Sunday 20:00 UTC, the week before in UTC.
    paid(slot(room, local(W23 + timedelta(days=7), "08:00")), "80.00")

    report = occupancy_report_get(start=W23, end=W23 + timedelta(days=13))

    assert [(week.iso_week, week.booked) for week in report.rows] == [("2030-W24", 1)]


def test_the_report_defaults_to_the_last_eight_weeks_and_the_next_four(client):
    login(client, "view_reservation")
    today = timezone.localdate()
    monday = today - timedelta(days=today.weekday())

    html = client.get(URL).content.decode()

    first, last = monday - timedelta(weeks=8), monday + timedelta(weeks=5) - timedelta(days=1)
    assert f"Monday {first:%Y-%m-%d} to Sunday {last:%Y-%m-%d}" in html
    assert f'value="{first:%Y-%m-%d}"' in html


def test_a_bad_range_is_explained_on_the_page_and_refused_as_csv(client):
    login(client, "view_reservation")
    backwards = {"start": "2030-06-12", "end": "2030-06-05"}

    page = client.get(URL, backwards)
    download = client.get(URL, {**backwards, "format": "csv"})

    assert "The last day is before the first." in page.content.decode()
    assert 'id="report"' not in page.content.decode()
    assert download.status_code == 400


def test_anonymous_visitors_are_sent_to_the_admin_login(client):
    response = client.get(URL)

    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={URL}"


def test_staff_without_the_permission_to_view_reservations_are_refused(client, venue):
    login(client, "view_timeslot")

    page = client.get(URL, RANGE)
    download = client.get(URL, {**RANGE, "format": "csv"})
    index = client.get("/admin/").content.decode()

    assert (page.status_code, download.status_code) == (403, 403)
    assert "Occupancy and revenue" not in index


def test_the_admin_index_links_to_the_report(client):
    login(client, "view_reservation")

    html = client.get("/admin/").content.decode()

    assert f'<a href="{URL}">Occupancy and revenue per room and week</a>' in html


def test_a_year_of_bookings_is_reported_in_a_constant_number_of_queries(
    django_assert_num_queries,
):
    rooms = [RoomFactory(), RoomFactory()]
    first = datetime(2030, 1, 1, 10, tzinfo=UTC)
    slots = TimeSlot.objects.bulk_create(
        TimeSlot(room=room, starts_at=at, ends_at=at + timedelta(hours=1))
        for room in rooms
        for at in (first + timedelta(hours=12 * n) for n in range(730))
    )
    Reservation.objects.bulk_create(
        Reservation(
            time_slot=booked,
            customer_name="A",
            customer_email="a@example.com",
            party_size=2,
            status=Reservation.Status.PAID,
            paid_at=first,
            expires_at=first,
            price=Decimal("80.00"),
            currency="EUR",
        )
        for booked in slots[::3]
    )

    with django_assert_num_queries(5):
        report = occupancy_report_get(start=date(2030, 1, 1), end=date(2030, 12, 31))

    assert sum(week.offered for week in report.rows) == 2 * 730
    assert sum(week.booked for week in report.rows) == len(slots[::3])
    assert sum(week.revenue["EUR"] for week in report.rows) == 80 * len(slots[::3])


def test_bookings_left_on_closed_slots_are_shown_but_not_counted_as_occupancy(settings):
    """Closing a day with paid games on it: the slots are not offered, so nor are they occupied."""
    settings.TIME_ZONE = "Europe/Berlin"
    room = RoomFactory(name="Tomb")
    games = [slot(room, local(W23, f"{hour}:00")) for hour in (10, 12, 14, 16)]
    for game in games[:3]:
        paid(game, "89.00")
    Closure.objects.create(
        room=room, starts_at=local(W23, "11:30"), ends_at=local(W23, "18:00"), reason="Floods"
    )

    (week,) = occupancy_report_get(start=W23, end=W23).rows

    assert (week.offered, week.closed, week.booked, week.booked_closed) == (1, 3, 3, 2)
    assert week.occupancy == Decimal("100.0")  # the one open game, booked
    assert week.revenue == {"EUR": Decimal("267.00")}  # until the two are refunded


def test_a_booking_the_customer_cancelled_and_was_refunded_shows_as_refunded(settings):
    room = RoomFactory(name="Tomb", price=Decimal("89.00"))
    day = timezone.localdate() + timedelta(days=5)
    booking = reserve(slot(room, local(day, "18:00")))
    payment_confirm_price(reservation=booking, reference="PAY-C", source="customer")
    payment = booking_cancel_by_customer(reservation=booking)
    desk = get_user_model().objects.create_user("desk", is_staff=True)
    assert payment is not None and payment_mark_refunded(payment=payment, actor=desk)

    (week,) = occupancy_report_get(start=day, end=day).rows

    assert (week.booked, week.revenue) == (0, {})
    assert week.refunded == {"EUR": Decimal("89.00")}
