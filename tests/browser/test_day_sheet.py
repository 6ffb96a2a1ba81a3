"""Staff watch a hold count down on the day sheet in a real browser, and check a party in."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from apps.reservations.models import Reservation

from ..factories import ReservationFactory, TimeSlotFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def log_in(page, next_url: str) -> None:
    get_user_model().objects.create_superuser("desk", password="desk-pw")
    page.goto(f"/admin/login/?next={next_url}")
    page.get_by_label("Username").fill("desk")
    page.get_by_label("Password").fill("desk-pw")
    page.get_by_role("button", name="Log in").click()


def test_a_hold_counts_down_and_the_sheet_shows_the_slot_free_once_it_lapses(page, shot):
    now = timezone.now()
    slot = TimeSlotFactory(starts_at=(now + timedelta(hours=3)).replace(microsecond=0))
    ReservationFactory(
        time_slot=slot, customer_name="Hana Held", expires_at=now + timedelta(seconds=6)
    )
    day = timezone.localdate(slot.starts_at, timezone.get_default_timezone())
    log_in(page, f"/staff/day/{day.isoformat()}/")

    cell = page.locator(f"#slot-{slot.pk}")
    expect(cell).to_contain_text("Hana Held")
    expect(cell.locator(".countdown")).to_have_text(re.compile(r"^00:0[1-6] left$"))
    shot(page, "1-counting-down")

    # At zero the sheet reloads itself and asks the server, which reads the lapsed hold as free.
    expect(cell).to_have_attribute("data-state", "free", timeout=15_000)
    expect(cell).to_contain_text("Free")
    shot(page, "2-free")


def test_staff_check_a_party_in_from_the_sheet(page):
    slot = TimeSlotFactory(
        starts_at=(timezone.now() + timedelta(minutes=20)).replace(microsecond=0)
    )
    booking = ReservationFactory(
        time_slot=slot,
        customer_name="Carla Early",
        status=Reservation.Status.PAID,
        paid_at=timezone.now(),
    )
    day = timezone.localdate(slot.starts_at, timezone.get_default_timezone())
    log_in(page, f"/staff/day/{day.isoformat()}/")

    page.locator(f"#slot-{slot.pk}").get_by_role("button", name="Check in").click()

    expect(page.get_by_role("status")).to_have_text("Carla Early checked in.")
    expect(page.locator(f"#slot-{slot.pk}")).to_have_attribute("data-state", "checked_in")
    booking.refresh_from_db()
    assert booking.attendance == Reservation.Attendance.CHECKED_IN
