"""The waiting list through its services: joining, the hand-over, the offers' cascade."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.messaging.models import Message
from apps.reservations import errors, waitlist
from apps.reservations import services as reservations
from apps.reservations.models import Reservation, ReservationEvent, WaitingEntry
from apps.rooms.models import TimeSlot

from ..factories import TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db

Entry = WaitingEntry.Status


def join(slot, email, **overrides):
    fields = {"customer_name": email.split("@")[0].title(), "party_size": 3}
    return waitlist.waiting_join(
        time_slot_id=slot.pk, customer_email=email, **{**fields, **overrides}
    )


def lapse(reservation, now=None):
    """Expire the hold as its job would, as of a moment after its end."""
    return reservations.lapsed_holds_release(
        cause=ReservationEvent.Cause.EXPIRY_JOB,
        now=now or reservation.expires_at + timedelta(milliseconds=1),
    )


def test_three_parties_cascade_until_the_second_pays_and_the_third_is_told(settings):
    settings.WAITLIST_OFFER_SECONDS = 900
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email="holder@example.com")
    ada, bo, cy = (join(slot, f"{name}@example.com") for name in ("ada", "bo", "cy"))
    assert [waitlist.offers.waiting_place(e) for e in (ada, bo, cy)] == [1, 2, 3]

    lapse(hold)
    ada.refresh_from_db()
    assert ada.status == Entry.OFFERED
    offer = ada.offer
    assert (offer.status, offer.is_offer, offer.customer_email) == (
        "pending",
        True,
        "ada@example.com",
    )
    assert Message.objects.filter(reservation=offer, kind="offer").exists()

    lapse(offer)
    ada.refresh_from_db(), bo.refresh_from_db()
    assert (ada.status, bo.status) == (Entry.LAPSED, Entry.OFFERED)

    reservations.reservation_pay(reservation=bo.offer, payment_reference="PAY-BO")
    bo.refresh_from_db(), cy.refresh_from_db()
    assert (bo.status, cy.status) == (Entry.BOOKED, Entry.WAITING)
    assert Message.objects.filter(waiting_entry=cy, kind="slot_booked").exists()
    assert TimeSlot.objects.with_availability(timezone.now()).get(pk=slot.pk).available is False


def test_a_public_customer_never_beats_the_waiting_party_to_a_lapsed_hold():
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email="holder@example.com")
    ada = join(slot, "ada@example.com")
    Reservation.objects.filter(pk=hold.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert TimeSlot.objects.with_availability(timezone.now()).get(pk=slot.pk).available is False
    with pytest.raises(errors.SlotTaken):
        reserve(slot, customer_email="eve@example.com")
    ada.refresh_from_db()
    assert ada.status == Entry.OFFERED


def test_a_slot_starting_within_the_offer_time_goes_free_and_the_list_is_told(settings):
    settings.WAITLIST_OFFER_SECONDS = 900
    slot = TimeSlotFactory(starts_at=timezone.now() + timedelta(minutes=10))
    hold = reserve(slot, customer_email="holder@example.com", hold_seconds=60)
    ada = join(slot, "ada@example.com")
    lapse(hold)
    ada.refresh_from_db()
    assert ada.status == Entry.CLOSED
    assert Message.objects.filter(waiting_entry=ada, kind="slot_free").exists()
    assert TimeSlot.objects.with_availability(timezone.now()).get(pk=slot.pk).available is True


def test_a_party_holding_another_game_at_that_time_is_skipped():
    slot = TimeSlotFactory()
    other = TimeSlotFactory(starts_at=slot.starts_at, room__slug="other")
    hold = reserve(slot, customer_email="holder@example.com")
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    reserve(other, customer_email="ADA@example.com")
    lapse(hold)
    ada.refresh_from_db(), bo.refresh_from_db()
    assert (ada.status, bo.status) == (Entry.WAITING, Entry.OFFERED)


def test_joining_a_free_slot_is_refused_and_joining_twice_too():
    slot = TimeSlotFactory()
    with pytest.raises(errors.SlotAvailable):
        join(slot, "ada@example.com")
    reserve(slot, customer_email="holder@example.com")
    join(slot, "ada@example.com")
    with pytest.raises(errors.AlreadyWaiting):
        join(slot, "ADA@example.com")


def test_leaving_with_an_offer_passes_it_on():
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email="holder@example.com")
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    reservations.reservation_cancel(reservation=hold)
    ada.refresh_from_db()
    assert ada.status == Entry.OFFERED
    waitlist.waiting_leave(entry=ada)
    ada.refresh_from_db(), bo.refresh_from_db()
    assert (ada.status, ada.offer.status, bo.status) == (Entry.LEFT, "cancelled", Entry.OFFERED)


def test_the_offers_history_says_it_was_made_lapsed_and_taken():
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email="holder@example.com")
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    lapse(hold)
    ada.refresh_from_db()
    lapse(ada.offer)
    bo.refresh_from_db()
    reservations.reservation_pay(reservation=bo.offer, payment_reference="PAY-BO")

    def history(reservation):
        return [(e.cause, e.to_status, e.detail) for e in reservation.events.all()]

    offered = f"Offered to the first party on the waiting list (entry {ada.pk})"
    made = ("waitlist", "pending", offered)
    assert history(ada.offer) == [made, ("expiry_job", "cancelled", "Waiting-list offer lapsed")]
    # (Paid at the clock's now, before the lapse this test dated 15 minutes on.)
    assert ("customer", "paid", "Waiting-list offer taken. Payment reference PAY-BO") in history(
        bo.offer
    )


def test_a_party_at_its_limit_is_told_what_is_wrong_with_this_join_first(settings):
    settings.MAX_WAITING_PER_EMAIL = 1
    held, free = TimeSlotFactory(), TimeSlotFactory()
    reserve(held, customer_email="holder@example.com")
    join(held, "ada@example.com")
    with pytest.raises(errors.AlreadyWaiting):
        join(held, "ada@example.com")
    with pytest.raises(errors.SlotAvailable):
        join(free, "ada@example.com")
    other = TimeSlotFactory()
    reserve(other, customer_email="holder@example.com")
    with pytest.raises(errors.TooManyWaiting):
        join(other, "ada@example.com")


def test_an_offer_cannot_be_kept_longer_by_its_party_but_staff_may_extend_it():
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email="holder@example.com")
    ada = join(slot, "ada@example.com")
    reservations.reservation_cancel(reservation=hold)
    ada.refresh_from_db()
    offer, ends = ada.offer, ada.offer.expires_at

    with pytest.raises(errors.HoldNotExtendable, match="the next party is waiting"):
        reservations.reservation_keep_slot(reservation=offer)
    offer.refresh_from_db()
    assert (offer.expires_at, offer.extensions) == (ends, 0)
    reservations.reservation_extend_hold(reservation=offer, by=timedelta(minutes=5))
    offer.refresh_from_db()
    assert offer.expires_at == ends + timedelta(minutes=5)
