"""A customer who lost a booking's address asks for its links in a real browser."""

import pytest
from playwright.sync_api import expect

from apps.messaging.services import FIND_BOOKING_SENT

from ..factories import ReservationFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_from_a_booking_to_find_my_booking_and_its_answer(page, shot):
    reservation = ReservationFactory()
    page.goto(f"/reservations/{reservation.token}/")
    page.locator(".keep-link").get_by_role("link", name="Find my booking").click()

    expect(page.get_by_role("heading", name="Find my booking")).to_be_visible()
    shot(page, "1-form")
    page.get_by_label("Email").fill("john-at-example")
    page.get_by_role("button", name="Send me the links").click()

    expect(page.locator("#id_email_error")).to_have_text("Enter a valid email address.")
    expect(page.get_by_label("Email")).to_be_focused()
    shot(page, "2-invalid")
    page.get_by_label("Email").fill("john@example.com")
    page.get_by_role("button", name="Send me the links").click()

    expect(page.get_by_role("status")).to_have_text(FIND_BOOKING_SENT)
    expect(page.get_by_label("Email")).to_have_value("")
    shot(page, "3-answer")
