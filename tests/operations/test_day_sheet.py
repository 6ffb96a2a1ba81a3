"""
The staff's day sheet (/staff/day/): every room's slots of one day, with check-in.

Read as staff read it: the state each slot's cell shows, the actions and
their refusals as messages, who may open it, and that a year of bookings
does not slow it down.
"""

import html
import re
import zoneinfo
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.staticfiles import finders
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.reservations import errors
from apps.reservations.models import Reservation, ReservationEvent
from apps.rooms.models import Closure, TimeSlot

from ..factories import ReservationFactory, RoomFactory, TimeSlotFactory

pytestmark = pytest.mark.django_db

Status = Reservation.Status
Attendance = Reservation.Attendance
VENUE = timezone.get_default_timezone()


def staff(*codenames: str, username: str = "desk", is_staff: bool = True):
    """A staff user with the reservations' permissions ``codenames`` (view_reservation, ...)."""
    user = get_user_model().objects.create_user(username, password="pw", is_staff=is_staff)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def desk(client):
    """A client logged in as staff who may read the sheet and check parties in."""
    client.force_login(staff("view_reservation", "change_reservation"))
    return client


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=VENUE)


def venue_day(moment: datetime) -> date:
    return timezone.localdate(moment, VENUE)


def sheet_url(day: date) -> str:
    return f"/staff/day/{day.isoformat()}/"


def cell(page: str, slot: TimeSlot) -> tuple[str, str]:
    """(state, text) of ``slot``'s cell on a rendered sheet, text with tags and spaces collapsed."""
    found = re.search(
        rf'<td id="slot-{slot.pk}" class="[^"]*" data-state="([a-z_]+)">(.*?)</td>', page, re.S
    )
    assert found, f"no cell for slot {slot.pk}"
    text = html.unescape(re.sub(r"<[^>]+>", " ", found.group(2)))
    return found.group(1), " ".join(text.split())


def paid(slot: TimeSlot, **fields) -> Reservation:
    defaults = {
        "status": Status.PAID,
        "paid_at": timezone.now(),
        "payment_reference": "PAY-1",
        "customer_phone": "+49 30 5550123",
    }
    return ReservationFactory(time_slot=slot, **{**defaults, **fields})


def text_of(page: str) -> str:
    """The page's text as read: tags dropped, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def messages_on(page: str) -> list[str]:
    found = re.search(r'<ul class="messages" role="status">(.*?)</ul>', page, re.S)
    return [] if not found else [html.unescape(m) for m in re.findall(r">([^<]+)</li>", found[1])]


# What each slot shows


def test_each_slot_shows_free_held_offered_paid_checked_in_no_show_or_closed(desk):
    day = timezone.localdate(timezone.now(), VENUE) + timedelta(days=2)
    escape, vault = RoomFactory(name="Escape"), RoomFactory(name="Vault")
    slot = {
        hour: TimeSlotFactory(room=escape, starts_at=at(day, hour), ends_at=at(day, hour + 1))
        for hour in range(10, 17)
    }
    now = timezone.now()
    held = ReservationFactory(
        time_slot=slot[11],
        customer_name="Hana Held",
        party_size=4,
        expires_at=now + timedelta(minutes=20),
    )
    ReservationFactory(
        time_slot=slot[12], customer_name="Otto Offered", party_size=2, is_offer=True
    )
    paid(slot[13], customer_name="Paula Paid", party_size=5, price=Decimal("125.50"))
    paid(slot[14], customer_name="Ivo In", attendance=Attendance.CHECKED_IN, attendance_at=now)
    paid(slot[15], customer_name="Nina Gone", attendance=Attendance.NO_SHOW, attendance_at=now)
    vault_slot = TimeSlotFactory(room=vault, starts_at=at(day, 10), ends_at=at(day, 11))
    Closure.objects.create(
        room=escape, starts_at=at(day, 16), ends_at=at(day, 18), reason="Flooded"
    )

    page = desk.get(sheet_url(day)).content.decode()

    assert cell(page, slot[10]) == ("free", "10:00–11:00 Free")
    assert cell(page, vault_slot) == ("free", "10:00–11:00 Free")
    until = timezone.localtime(held.expires_at, VENUE).strftime("%H:%M")
    assert cell(page, slot[11]) == ("held", f"11:00–12:00 Held Hana Held, 4 players until {until}")
    state, text = cell(page, slot[12])
    assert state == "offered" and "Offered (waiting list) Otto Offered, 2 players until" in text
    assert cell(page, slot[13]) == (
        "paid",
        "13:00–14:00 Paid Paula Paid, 5 players +49 30 5550123 125.50 EUR",
    )
    state, text = cell(page, slot[14])
    assert state == "checked_in" and text.startswith("14:00–15:00 Checked in Ivo In, 3 players")
    state, text = cell(page, slot[15])
    assert state == "no_show" and text.startswith("15:00–16:00 No-show Nina Gone, 3 players")
    assert cell(page, slot[16]) == ("closed", "16:00–17:00 Closed: Flooded")
    # Rooms are the columns, times the rows.
    assert re.search(r"<th scope=\"col\">Escape</th><th scope=\"col\">Vault</th>", page)
    assert "2 free, 1 held, 1 offered, 1 paid, 1 checked in, 1 no-show, 1 closed." in text_of(page)


def test_a_held_slot_counts_down_from_the_seconds_the_server_gives(desk):
    now = timezone.now()
    reservation = ReservationFactory(expires_at=now + timedelta(minutes=7, seconds=30))
    starts_at = reservation.time_slot.starts_at

    page = desk.get(sheet_url(venue_day(starts_at))).content.decode()

    seconds = int(re.search(r'data-seconds-left="(\d+)"', page).group(1))
    assert 440 <= seconds <= 450
    assert 'src="/static/operations/day-sheet.js"' in page


def test_a_lapsed_hold_shows_free_before_any_job_has_expired_it(desk):
    slot = TimeSlotFactory(status=TimeSlot.Status.RESERVED)
    ReservationFactory(time_slot=slot, expires_at=timezone.now() - timedelta(seconds=1))

    page = desk.get(sheet_url(venue_day(slot.starts_at))).content.decode()

    assert cell(page, slot)[0] == "free"
    assert Reservation.objects.get().status == Status.PENDING  # nothing was expired by reading


def test_a_closure_of_the_whole_venue_closes_every_room_and_is_listed(desk):
    day = timezone.localdate(timezone.now(), VENUE) + timedelta(days=3)
    first, second = RoomFactory(), RoomFactory()
    slots = [
        TimeSlotFactory(room=room, starts_at=at(day, 18), ends_at=at(day, 19))
        for room in (first, second)
    ]
    later = TimeSlotFactory(room=first, starts_at=at(day, 20), ends_at=at(day, 21))
    paid(slots[1], customer_name="Bea Booked")
    Closure.objects.create(
        room=None, starts_at=at(day, 17), ends_at=at(day, 19, 30), reason="Power cut"
    )

    page = desk.get(sheet_url(day)).content.decode()

    assert cell(page, slots[0]) == ("closed", "18:00–19:00 Closed: Power cut")
    # A paid booking on a closed slot stays visible, for staff to move or refund.
    state, text = cell(page, slots[1])
    assert state == "paid" and "Bea Booked" in text and text.endswith("Closed: Power cut")
    assert cell(page, later)[0] == "free"
    assert f"The whole venue closed {day:%a} {day.day} {day:%b} 17:00 – " in text_of(page)


def test_the_day_is_the_venues_even_where_utc_and_daylight_saving_disagree(desk):
    # Europe/Berlin leaves summer time on 25 October 2026: that day lasts 25 hours.
    day = date(2026, 10, 25)
    room = RoomFactory()
    first = TimeSlotFactory(room=room, starts_at=at(day, 0, 30), ends_at=at(day, 1, 30))
    last = TimeSlotFactory(room=room, starts_at=at(day, 23, 0), ends_at=at(day, 23, 59))
    next_day = TimeSlotFactory(
        room=room,
        starts_at=at(day + timedelta(days=1), 0, 0),
        ends_at=at(day, 23, 59) + timedelta(hours=1),
    )

    page = desk.get(sheet_url(day)).content.decode()

    assert cell(page, first) == ("free", "00:30–01:30 Free")  # 22:30 UTC the day before
    assert cell(page, last) == ("free", "23:00–23:59 Free")
    assert f'id="slot-{next_day.pk}"' not in page


def test_a_day_without_slots_says_so(desk):
    assert "No time slots on this day." in desk.get("/staff/day/2031-01-01/").content.decode()


# Moving between days


def test_today_previous_and_next_day_and_the_date_picker(desk):
    today = timezone.localdate(timezone.now(), VENUE)
    page = desk.get("/staff/day/").content.decode()

    assert f"Day sheet: {today:%A} {today.day} {today:%B %Y} (today)" in page
    assert f'href="{sheet_url(today - timedelta(days=1))}" rel="prev"' in page
    assert f'href="{sheet_url(today + timedelta(days=1))}" rel="next"' in page
    assert 'type="date" name="date"' in page
    assert desk.get("/staff/day/?date=2026-12-04")["Location"] == "/staff/day/2026-12-04/"
    assert desk.get("/staff/day/?date=tomorrow").status_code == 404
    assert desk.get("/staff/day/2026-02-30/").status_code == 404


def test_the_sheet_refreshes_by_itself_and_is_never_cached(desk):
    response = desk.get("/staff/day/")

    assert '<meta http-equiv="refresh" content="30">' in response.content.decode()
    assert "no-cache" in response["Cache-Control"]


def test_the_print_style_hides_navigation_and_keeps_the_table_on_one_page(desk):
    page = desk.get("/staff/day/").content.decode()
    assert 'href="/static/operations/day-sheet.css"' in page

    with open(finders.find("operations/day-sheet.css")) as css_file:
        css = css_file.read()
    print_css = css[css.index("@media print") :]
    assert re.search(r"nav\.staff, nav\.days, form\.actions[^{]*\{ display: none", print_css)
    assert re.search(r"table\.sheet \{[^}]*page-break-inside: avoid", print_css)


# Check-in and no-show


def attendance(client: Client, reservation: Reservation, value: str):
    return client.post(
        f"/staff/reservations/{reservation.pk}/attendance/", {"attendance": value}, follow=True
    )


def test_staff_check_a_party_in_within_the_hour_before_its_game(desk):
    slot = TimeSlotFactory(
        starts_at=(timezone.now() + timedelta(minutes=30)).replace(microsecond=0)
    )
    booking = paid(slot, customer_name="Carla Early")
    page = desk.get(sheet_url(venue_day(slot.starts_at))).content.decode()
    assert 'value="checked_in">Check in</button>' in page
    assert 'value="no_show"' not in page  # the game has not started

    response = attendance(desk, booking, "checked_in")

    assert response.redirect_chain == [(sheet_url(venue_day(slot.starts_at)), 302)]
    page = response.content.decode()
    assert messages_on(page) == ["Carla Early checked in."]
    assert cell(page, slot)[0] == "checked_in"
    booking.refresh_from_db()
    assert (booking.status, booking.attendance) == (Status.PAID, Attendance.CHECKED_IN)
    event = ReservationEvent.objects.get(reservation=booking)
    assert (event.from_status, event.to_status, event.cause, event.detail) == (
        "paid",
        "paid",
        "staff",
        "Checked in",
    )
    assert event.staff_user.username == "desk"


def test_staff_mark_a_no_show_once_the_game_has_started(desk):
    slot = TimeSlotFactory(
        starts_at=(timezone.now() - timedelta(minutes=10)).replace(microsecond=0)
    )
    booking = paid(slot, customer_name="Max Missing")

    page = attendance(desk, booking, "no_show").content.decode()

    assert messages_on(page) == ["Max Missing marked a no-show."]
    assert cell(page, slot)[0] == "no_show"
    assert ReservationEvent.objects.get(reservation=booking).detail == "No-show"
    # The party turns up late after all.
    page = attendance(desk, booking, "checked_in").content.decode()
    assert messages_on(page) == ["Max Missing checked in."]
    assert cell(page, slot)[0] == "checked_in"


@pytest.mark.parametrize(
    ("starts_in", "value", "refusal"),
    [
        (timedelta(hours=2), "checked_in", errors.CheckInNotOpen.default_message),
        (timedelta(minutes=30), "no_show", errors.GameNotStarted.default_message),
    ],
)
def test_too_early_for_check_in_or_no_show_is_refused_and_changes_nothing(
    desk, starts_in, value, refusal
):
    slot = TimeSlotFactory(starts_at=(timezone.now() + starts_in).replace(microsecond=0))
    booking = paid(slot, customer_name="Tom Early")

    page = attendance(desk, booking, value).content.decode()

    assert messages_on(page) == [f"Tom Early: {refusal}"]
    assert cell(page, slot)[0] == "paid"
    booking.refresh_from_db()
    assert (booking.attendance, booking.attendance_at) == ("", None)
    assert not ReservationEvent.objects.filter(reservation=booking).exists()


def test_a_hold_cannot_be_checked_in_nor_the_same_mark_given_twice(desk):
    soon = (timezone.now() + timedelta(minutes=20)).replace(microsecond=0)
    hold = ReservationFactory(time_slot=TimeSlotFactory(starts_at=soon), customer_name="Hal Hold")
    booking = paid(
        TimeSlotFactory(starts_at=soon + timedelta(minutes=1)), customer_name="Di Double"
    )

    page = attendance(desk, hold, "checked_in").content.decode()
    assert messages_on(page) == [f"Hal Hold: {errors.NotPaid.default_message}"]
    attendance(desk, booking, "checked_in")
    page = attendance(desk, booking, "checked_in").content.decode()
    assert messages_on(page) == ["Di Double: This booking is already marked checked in."]

    hold.refresh_from_db()
    assert (hold.status, hold.attendance) == (Status.PENDING, "")
    assert ReservationEvent.objects.filter(reservation=booking).count() == 1


def test_the_actions_need_a_post_with_a_csrf_token_and_a_known_mark(db):
    user = staff("view_reservation", "change_reservation")
    booking = paid(
        TimeSlotFactory(starts_at=(timezone.now() + timedelta(minutes=5)).replace(microsecond=0))
    )
    url = f"/staff/reservations/{booking.pk}/attendance/"
    careful = Client(enforce_csrf_checks=True)
    careful.force_login(user)

    assert careful.post(url, {"attendance": "checked_in"}).status_code == 403
    assert careful.get(url).status_code == 405
    careful.get("/staff/day/")
    token = careful.cookies["csrftoken"].value
    assert careful.post(url, {"attendance": "late"}, HTTP_X_CSRFTOKEN=token).status_code == 400
    assert (
        careful.post(
            "/staff/reservations/999999/attendance/",
            {"attendance": "no_show"},
            HTTP_X_CSRFTOKEN=token,
        ).status_code
        == 404
    )
    booking.refresh_from_db()
    assert booking.attendance == ""
    assert (
        careful.post(url, {"attendance": "checked_in"}, HTTP_X_CSRFTOKEN=token).status_code == 302
    )


# Who may open it


def test_anyone_not_logged_in_as_staff_is_sent_to_the_admin_login(client, db):
    assert client.get("/staff/day/2026-12-04/")["Location"] == (
        "/admin/login/?next=/staff/day/2026-12-04/"
    )
    client.force_login(staff("view_reservation", is_staff=False))
    assert client.get("/staff/day/")["Location"] == "/admin/login/?next=/staff/day/"


def test_staff_without_the_permission_are_refused(client, db):
    client.force_login(staff())
    assert client.get("/staff/day/").status_code == 403


def test_staff_who_may_only_read_see_no_actions_and_cannot_post_them(client, db):
    booking = paid(
        TimeSlotFactory(starts_at=(timezone.now() + timedelta(minutes=5)).replace(microsecond=0))
    )
    client.force_login(staff("view_reservation"))

    page = client.get(sheet_url(venue_day(booking.time_slot.starts_at))).content.decode()
    assert cell(page, booking.time_slot)[0] == "paid"
    assert "Check in</button>" not in page
    response = client.post(
        f"/staff/reservations/{booking.pk}/attendance/", {"attendance": "checked_in"}
    )
    assert response.status_code == 403
    booking.refresh_from_db()
    assert booking.attendance == ""


def test_the_admin_links_to_the_day_sheet_for_those_who_may_read_it(client, db):
    client.force_login(get_user_model().objects.create_superuser("boss", password="pw"))
    page = client.get("/admin/").content.decode()
    assert '<a href="/staff/day/">Today\'s day sheet</a>' in page
    assert '<a href="/staff/day/">Day sheet</a>' in page

    client.force_login(staff("view_room", username="rooms-only"))
    assert "/staff/day/" not in client.get("/admin/").content.decode()


# A year of data


def year_of_bookings(first_day: date, days: int) -> None:
    """Three rooms, six games a day for ``days`` days; half the games paid, a few held."""
    rooms = [RoomFactory(name=f"Year room {n}") for n in range(3)]
    slots = TimeSlot.objects.bulk_create(
        TimeSlot(
            room=room,
            starts_at=at(first_day + timedelta(days=n), hour),
            ends_at=at(first_day + timedelta(days=n), hour + 1),
            status=TimeSlot.Status.RESERVED if hour % 4 == 2 else TimeSlot.Status.ACTIVE,
        )
        for n in range(days)
        for room in rooms
        for hour in range(12, 24, 2)
    )
    now = timezone.now()
    Reservation.objects.bulk_create(
        Reservation(
            time_slot=slot,
            customer_name=f"Party {slot.pk}",
            customer_email="party@example.com",
            party_size=4,
            status=Status.PAID,
            expires_at=now,
            paid_at=now,
            price=Decimal("80.00"),
            currency="EUR",
        )
        for slot in slots
        if slot.status == TimeSlot.Status.RESERVED
    )
    Closure.objects.bulk_create(
        Closure(
            room=rooms[0],
            starts_at=at(first_day + timedelta(days=n), 12),
            ends_at=at(first_day + timedelta(days=n), 13),
            reason="Repairs",
        )
        for n in range(0, days, 30)
    )


def test_the_sheet_takes_as_many_queries_with_a_year_of_data_as_with_one_day(
    desk, django_assert_max_num_queries
):
    day = date(2027, 3, 1)
    year_of_bookings(day, days=1)
    with CaptureQueriesContext(connection) as one_day:
        page = desk.get(sheet_url(day)).content.decode()
    assert page.count('data-state="paid"') == 9

    year_of_bookings(day - timedelta(days=180), days=365)
    with django_assert_max_num_queries(len(one_day.captured_queries)):
        page = desk.get(sheet_url(day)).content.decode()

    assert page.count('data-state="paid"') == 18
    assert len(one_day.captured_queries) <= 10


def test_on_the_day_the_clocks_go_back_the_two_half_past_twos_are_told_apart(
    admin_client, settings
):
    settings.TIME_ZONE = "Europe/Berlin"
    room = RoomFactory(duration_minutes=30)
    day = date(2030, 10, 27)  # 03:00 CEST becomes 02:00 CET
    zone = zoneinfo.ZoneInfo("Europe/Berlin")
    for fold in (0, 1):
        starts_at = datetime.combine(day, time(2, 30), tzinfo=zone).replace(fold=fold)
        TimeSlotFactory(room=room, starts_at=starts_at, ends_at=starts_at + timedelta(minutes=30))

    page = admin_client.get(f"/staff/day/{day}/").content.decode()

    assert re.findall(r'<th scope="row">([^<]+)</th>', page) == ["02:30 CEST", "02:30 CET"]
