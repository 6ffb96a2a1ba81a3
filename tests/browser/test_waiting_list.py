"""A customer waits for a held slot in a real browser, and is offered it when the hold lapses."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from apps.reservations.models import Reservation, WaitingEntry
from apps.reservations.services import reservation_create

from ..factories import RoomFactory, TimeSlotFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture
def slot(db):
    room = RoomFactory(name="The Lost Tomb", slug="the-lost-tomb", min_players=2, max_players=6)
    starts_at = (timezone.now() + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return TimeSlotFactory(room=room, starts_at=starts_at)


def test_join_a_held_slots_list_then_get_the_offer_when_the_hold_lapses(page, slot, shot):
    hold = reservation_create(
        time_slot_id=slot.pk,
        customer_name="Dana",
        customer_email="dana@example.com",
        party_size=2,
        hold_seconds=3,
    )
    page.goto(f"/rooms/{slot.room.slug}/?date={timezone.localdate(slot.starts_at).isoformat()}")
    start = timezone.localtime(slot.starts_at)
    ends = timezone.localtime(hold.expires_at)
    row = page.locator(f"tr[data-slot='{slot.key}']")
    expect(row).to_contain_text(f"Held — may be free at {ends:%H:%M}")
    shot(page, "1-held")
    row.get_by_role("link", name=f"Join the waiting list for {start:%H:%M}").click()

    expect(page.get_by_role("heading", name="Join the waiting list")).to_be_visible()
    page.get_by_label("Your name").fill("Ada")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Players").fill("4")
    page.get_by_role("button", name="Join the waiting list").click()
    expect(page.get_by_role("heading", name="You're on the waiting list")).to_be_visible()
    expect(page.locator("#state")).to_contain_text("Number 1")
    shot(page, "2-waiting")

    # No scheduler runs here: opening the page after the hold's end makes the offer.
    remaining = (hold.expires_at - timezone.now()).total_seconds()
    page.wait_for_timeout(max(0, remaining) * 1000 + 200)
    page.reload()
    expect(page.get_by_role("heading", name="The time is yours to book")).to_be_visible()
    shot(page, "3-offered")
    page.get_by_role("link", name="Pay for it").click()
    expect(page.get_by_role("heading", name="Your slot is held")).to_be_visible()
    page.get_by_role("button", name=re.compile("^Pay")).click()
    expect(page.get_by_role("heading", name="You're booked!")).to_be_visible()
    shot(page, "4-booked")

    entry = WaitingEntry.objects.get()
    assert entry.status == WaitingEntry.Status.BOOKED
    assert entry.offer.status == Reservation.Status.PAID
    assert Reservation.objects.get(pk=hold.pk).cancellation_reason == "expired"
