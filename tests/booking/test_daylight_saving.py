"""The pages on the days Berlin's clocks change: the wall-clock times a customer reads."""

import re
from datetime import UTC, date, datetime, time

import pytest
from django.utils import timezone

from apps.booking.views import slot_key
from apps.reservations.services import reservation_create
from apps.rooms.models import TimeSlot
from apps.rooms.services import timeslots_generate

from ..factories import RoomFactory

pytestmark = pytest.mark.django_db

SPRING_FORWARD = date(2027, 3, 28)  # 02:00 CET -> 03:00 CEST: 02:30 does not exist
FALL_BACK = date(2026, 10, 25)  # 03:00 CEST -> 02:00 CET: 02:30 happens twice
HALF_AN_HOUR = 30 * 60


@pytest.fixture(autouse=True)
def berlin(settings):
    settings.TIME_ZONE = "Europe/Berlin"  # whatever the environment says


@pytest.fixture
def clock(monkeypatch):
    """Set the time the pages read: ``timezone.now()`` returns ``moment`` from then on."""

    def set_to(moment: datetime) -> datetime:
        monkeypatch.setattr(timezone, "now", lambda: moment)
        return moment

    return set_to


def slots_on(day: date, *times: time, duration_minutes: int = 60):
    """Generate the room's slots on ``day`` as staff would; return them as stored."""
    room = RoomFactory(name="The Lost Tomb", slug="tomb", duration_minutes=duration_minutes)
    timeslots_generate(room=room, start=day, end=day, times=times)
    return list(TimeSlot.objects.filter(room=room).order_by("starts_at"))


def times_shown(html: str) -> list[str]:
    """The text of the time column of the room page's slots, in page order."""
    return re.findall(r'<tr class="slot [^"]*"[^>]*>\s*<td>([^<]*)</td>', html)


def hold(slot, *, now: datetime):
    return reservation_create(
        time_slot_id=slot.pk,
        customer_name="John Doe",
        customer_email="john@example.com",
        party_size=3,
        now=now,
        hold_seconds=HALF_AN_HOUR,
    )


def test_the_room_page_shows_the_spring_forward_day_in_wall_clock_time(client, clock):
    slots_on(SPRING_FORWARD, time(1, 30), time(2, 30), time(10))  # 02:30 is skipped
    clock(datetime(2027, 3, 27, 12, tzinfo=UTC))

    html = client.get(f"/rooms/tomb/?date={SPRING_FORWARD}").content.decode()

    # An hour's game from 01:30 ends at 03:30: the clocks jumped in between.
    assert times_shown(html) == ["01:30 CET–03:30 CEST", "10:00–11:00 CEST"]
    assert "Reserve 01:30" in html and "Reserve 10:00" in html
    assert "Times in Europe/Berlin" in html


def test_the_room_page_shows_the_fall_back_day_in_wall_clock_time(client, clock):
    slots_on(FALL_BACK, time(1, 30), time(2, 30), time(3, 30))  # the first 02:30, in CEST
    clock(datetime(2026, 10, 24, 12, tzinfo=UTC))

    html = client.get(f"/rooms/tomb/?date={FALL_BACK}").content.decode()

    # 01:30 CEST is still 24 October in UTC, and belongs to the venue's 25th.
    assert times_shown(html) == [
        "01:30–02:30 CEST",
        "02:30 CEST–02:30 CET",
        "03:30–04:30 CET",
    ]


def test_the_reserve_page_names_which_of_the_two_0230s_it_is(client, clock):
    (first_0230,) = slots_on(FALL_BACK, time(2, 30))
    clock(datetime(2026, 10, 24, 12, tzinfo=UTC))

    html = client.get(f"/rooms/tomb/{slot_key(first_0230)}/reserve/").content.decode()

    assert '<p class="when">Sunday 25 October 2026, 02:30 CEST</p>' in html


def test_a_hold_across_spring_forward_ends_an_hour_later_on_the_clock(client, clock):
    (slot,) = slots_on(SPRING_FORWARD, time(10))
    now = clock(datetime(2027, 3, 28, 0, 50, tzinfo=UTC))  # 01:50 CET
    reservation = hold(slot, now=now)

    html = client.get(f"/reservations/{reservation.token}/").content.decode()

    # Half an hour of real time: 01:50 CET to 03:20 CEST.
    assert "Pay by <strong>03:20:00 CEST</strong>" in html
    assert '<span id="time-left">1800 seconds</span> left to pay.' in html
    assert "<dd>Sunday 28 March 2027, 10:00 CEST</dd>" in html


def test_a_hold_across_fall_back_ends_earlier_on_the_clock_than_it_began(client, clock):
    (slot,) = slots_on(FALL_BACK, time(10))
    now = clock(datetime(2026, 10, 25, 0, 50, tzinfo=UTC))  # 02:50 CEST
    reservation = hold(slot, now=now)

    html = client.get(f"/reservations/{reservation.token}/").content.decode()

    # Half an hour of real time: 02:50 CEST to 02:20 CET.
    assert "Pay by <strong>02:20:00 CET</strong>" in html
    assert '<span id="time-left">1800 seconds</span> left to pay.' in html
    assert "<dd>Sunday 25 October 2026, 10:00 CET</dd>" in html
