"""A customer books in a real browser: the pages over the services, end to end."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from apps.booking.views import slot_key
from apps.reservations.models import Reservation
from apps.rooms.models import TimeSlot

from ..factories import RoomFactory, TimeSlotFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture
def slot(db):
    room = RoomFactory(name="The Lost Tomb", slug="the-lost-tomb", min_players=2, max_players=6)
    starts_at = (timezone.now() + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return TimeSlotFactory(room=room, starts_at=starts_at)


def room_day_url(slot) -> str:
    return f"/rooms/{slot.room.slug}/?date={timezone.localdate(slot.starts_at).isoformat()}"


def fill_booking(page, name="John Doe", party="3"):
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Email").fill("john@example.com")
    page.get_by_label("Players").fill(party)


def open_booking_form(page, slot):
    page.goto(room_day_url(slot))
    page.get_by_role("link", name=f"Reserve {timezone.localtime(slot.starts_at):%H:%M}").click()
    expect(page.get_by_role("heading", name="Reserve The Lost Tomb")).to_be_visible()


def test_book_then_pay_then_see_the_confirmation(page, slot, shot):
    page.goto("/")
    shot(page, "1-rooms")
    page.get_by_role("link", name="See times for The Lost Tomb").click()
    page.goto(room_day_url(slot))
    shot(page, "2-room")
    open_booking_form(page, slot)
    fill_booking(page)
    shot(page, "3-form")
    page.get_by_role("button", name="Reserve and hold this slot").click()

    expect(page.get_by_role("heading", name="Your slot is held")).to_be_visible()
    expect(page.locator("#time-left")).to_have_text(re.compile(r"(29|30) min"))
    shot(page, "4-held")
    page.get_by_role("button", name=re.compile("^Pay")).click()

    expect(page.get_by_role("heading", name="You're booked!")).to_be_visible()
    shot(page, "5-confirmation")
    reservation = Reservation.objects.get()
    assert reservation.status == "paid"
    assert page.url.endswith(f"/reservations/{reservation.token}/")


def test_the_countdown_reaches_zero_and_the_slot_is_free_again(page, slot, settings, shot):
    settings.RESERVATION_HOLD_SECONDS = 3
    open_booking_form(page, slot)
    fill_booking(page)
    page.get_by_role("button", name="Reserve and hold this slot").click()
    expect(page.locator("#warning")).to_be_visible()  # under 5 minutes from the start
    shot(page, "1-counting-down")

    expect(page.get_by_role("heading", name="Your hold has expired")).to_be_visible(timeout=8_000)
    shot(page, "2-expired")
    page.get_by_role("link", name="See the times still available").click()

    row = page.locator(f"tr[data-slot='{slot_key(slot)}']")
    expect(row).to_contain_text("Available")
    shot(page, "3-slot-free-again")


def test_two_customers_race_and_the_loser_is_told_the_slot_was_just_taken(new_page, slot, shot):
    alice, bob = new_page(), new_page()
    for customer, name in ((alice, "Alice"), (bob, "Bob")):
        open_booking_form(customer, slot)
        fill_booking(customer, name=name)

    alice.get_by_role("button", name="Reserve and hold this slot").click()
    expect(alice.get_by_role("heading", name="Your slot is held")).to_be_visible()
    bob.get_by_role("button", name="Reserve and hold this slot").click()

    expect(bob.get_by_text("this slot was just taken")).to_be_visible()
    expect(bob.locator(f"tr[data-slot='{slot_key(slot)}']")).to_contain_text("Held")
    shot(bob, "loser")
    assert list(Reservation.objects.values_list("customer_name", flat=True)) == ["Alice"]


def test_keep_my_slot_extends_the_deadline_and_stops_at_the_limit(page, slot, settings, shot):
    settings.RESERVATION_HOLD_SECONDS = 600
    settings.RESERVATION_MAX_EXTENSIONS = 2
    open_booking_form(page, slot)
    fill_booking(page)
    page.get_by_role("button", name="Reserve and hold this slot").click()
    reservation = Reservation.objects.get()
    deadlines = [reservation.expires_at]

    for left in ("2 left", "1 left"):
        page.get_by_role("button", name=re.compile(f"Keep my slot .*{left}")).click()
        expect(page.get_by_text("Your slot is held for longer.")).to_be_visible()
        reservation.refresh_from_db()
        deadlines.append(reservation.expires_at)
        expect(page.locator(".state.pending")).to_contain_text(
            timezone.localtime(reservation.expires_at).strftime("%H:%M:%S")
        )
    shot(page, "after-two-extensions")

    assert [later - earlier for earlier, later in zip(deadlines, deadlines[1:], strict=False)] == [
        timedelta(seconds=600)
    ] * 2
    expect(page.get_by_role("button", name=re.compile("Keep my slot"))).to_have_count(0)


def test_a_double_click_and_a_resubmission_make_one_reservation(page, slot):
    open_booking_form(page, slot)
    fill_booking(page)

    page.get_by_role("button", name="Reserve and hold this slot").dblclick()
    expect(page.get_by_role("heading", name="Your slot is held")).to_be_visible()
    held_at = page.url
    page.go_back()  # back to the form: this browser is shown its own hold

    expect(page.get_by_text("This slot is already yours.")).to_be_visible()
    assert page.url == held_at
    assert Reservation.objects.count() == 1
    assert TimeSlot.objects.get(pk=slot.pk).status == "reserved"


def test_the_reservation_page_works_without_javascript(browser, live_server, slot):
    context = browser.new_context(java_script_enabled=False, base_url=live_server.url)
    page = context.new_page()
    open_booking_form(page, slot)
    fill_booking(page)
    page.get_by_role("button", name="Reserve and hold this slot").click()

    reservation = Reservation.objects.get()
    expect(page.locator(".state.pending")).to_contain_text(
        timezone.localtime(reservation.expires_at).strftime("%H:%M:%S")
    )
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("heading", name="Reservation cancelled")).to_be_visible()
    context.close()
