"""
The customer cancels a paid booking: the slot is released and the money goes back.

Through the provider that took it (Stripe, here a local one), or, for money no
provider took (the simulated provider, cash), as a refund due from staff.
Until CUSTOMER_CANCEL_HOURS before the game; later, nothing changes.
"""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.utils import timezone

from apps.messaging import compose
from apps.messaging.models import Message
from apps.payments.models import Payment
from apps.payments.services import (
    booking_cancel_by_customer,
    payment_confirm_price,
    payment_mark_refunded,
    payment_settle,
    payment_start,
    refunds_due_to_staff,
    refunds_requested,
)
from apps.reservations.models import Reservation, WaitingEntry
from apps.rooms.models import TimeSlot

from ..factories import TimeSlotFactory, reserve
from ..waitlist.conftest import join

pytestmark = pytest.mark.django_db


def slot_in(days: float) -> TimeSlot:
    now = timezone.now().replace(second=0, microsecond=0)
    return TimeSlotFactory(starts_at=now + timedelta(days=days))


def paid(slot) -> Reservation:
    reservation = reserve(slot)
    payment_confirm_price(reservation=reservation, reference=f"SIM-{slot.pk}", source="customer")
    reservation.refresh_from_db()
    return reservation


def cancelled_email(reservation):
    return compose.message_email(
        Message.objects.get(reservation=reservation, kind=Message.Kind.CANCELLED)
    )


@pytest.fixture
def api(client):
    def post(path):
        return client.post(f"/api{path}", {}, content_type="application/json")

    return post


def test_a_paid_booking_cancelled_in_time_frees_the_slot_and_leaves_the_refund_to_staff(
    api, admin_user
):
    booking = paid(slot_in(5))

    response = api(f"/reservations/{booking.token}/cancel/")

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["cancellation_reason"]) == (
        "cancelled",
        "customer",
    )
    assert TimeSlot.objects.get(pk=booking.time_slot_id).status == "active"
    event = booking.events.last()
    assert (event.from_status, event.to_status, event.cause) == ("paid", "cancelled", "customer")
    payment = Payment.objects.get(reservation=booking)
    assert payment.refund_requested_at is not None
    assert (payment.refund_reference, payment.refunded_at) == ("", None)
    assert list(refunds_due_to_staff()) == [payment]
    assert not refunds_requested().exists()  # no provider to ask: no job asks it
    email = cancelled_email(booking)
    assert f"Your payment of {payment.amount} {payment.currency} will be refunded" in email.body
    assert "we will be in touch" in email.body

    assert payment_mark_refunded(payment=payment, actor=admin_user)
    assert not refunds_due_to_staff().exists()


def test_a_paid_booking_cancelled_within_the_cancel_hours_is_409_and_changes_nothing(api, settings):
    settings.CUSTOMER_CANCEL_HOURS = 48
    booking = paid(slot_in(1.5))
    messages = Message.objects.count()
    events = booking.events.count()

    response = api(f"/reservations/{booking.token}/cancel/")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "too_late_to_cancel"
    assert "48 hours" in response.json()["error"]["message"]
    booking.refresh_from_db()
    assert booking.status == Reservation.Status.PAID
    assert TimeSlot.objects.get(pk=booking.time_slot_id).status == "reserved"
    assert Payment.objects.get(reservation=booking).refund_requested_at is None
    assert (Message.objects.count(), booking.events.count()) == (messages, events)


def test_a_cancelled_booking_goes_to_the_slots_waiting_list():
    booking = paid(slot_in(5))
    party = join(booking.time_slot, "ada@example.com")

    booking_cancel_by_customer(reservation=booking)

    party.refresh_from_db()
    assert party.status == WaitingEntry.Status.OFFERED
    assert party.offer.time_slot_id == booking.time_slot_id


def test_the_booking_page_states_the_refund_terms_and_cancels(client, settings):
    settings.CUSTOMER_CANCEL_HOURS = 48
    booking = paid(slot_in(5))
    page = client.get(f"/reservations/{booking.token}/").content.decode()
    assert "Cancel booking" in page
    assert "back in full" in page

    response = client.post(f"/reservations/{booking.token}/cancel/", follow=True)

    content = response.content.decode()
    assert "Your booking is cancelled. Your payment will be refunded in full." in content
    booking.refresh_from_db()
    assert booking.cancellation_reason == "customer"


def test_the_booking_page_offers_no_cancel_too_close_to_the_game(client, settings):
    settings.CUSTOMER_CANCEL_HOURS = 48
    booking = paid(slot_in(1.5))

    page = client.get(f"/reservations/{booking.token}/").content.decode()

    assert "Cancel booking" not in page
    assert "can no longer be cancelled online" in page


def test_a_booking_paid_at_stripe_is_refunded_there(provider):
    booking = reserve(slot_in(5))
    row = payment_start(reservation=booking)
    provider.authorise(row.provider_id)
    payment_settle(row)
    booking.refresh_from_db()
    assert booking.status == Reservation.Status.PAID

    payment = booking_cancel_by_customer(reservation=booking)

    booking.refresh_from_db()
    assert (booking.status, booking.cancellation_reason) == ("cancelled", "customer")
    assert payment.refund_reference.startswith("re_")
    refund = provider.client.v1.refunds.retrieve(payment.refund_reference)
    assert (refund.payment_intent, refund.amount) == (row.provider_id, 8000)
    assert not refunds_due_to_staff().exists()
    assert "to the card you paid with" in cancelled_email(booking).body


def listed(client, **query) -> list[Payment]:
    response = client.get("/admin/payments/payment/", query)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_staff_find_the_refund_due_in_the_admin_and_mark_it_refunded(admin_client, admin_user):
    booking = paid(slot_in(5))
    booking_cancel_by_customer(reservation=booking)
    payment = Payment.objects.get(reservation=booking)
    assert listed(admin_client, refund="due") == [payment]
    assert listed(admin_client, refund="requested") == []  # no provider is to make it

    done = admin_client.post(
        "/admin/payments/payment/",
        {"action": "mark_refunded", ACTION_CHECKBOX_NAME: [payment.pk]},
        follow=True,
    )

    assert [str(m) for m in done.context["messages"]] == ["1 payment(s) marked refunded."]
    payment.refresh_from_db()
    assert payment.refunded_by == admin_user
    assert listed(admin_client, refund="due") == []
