"""
Stripe against a local Stripe: authorised in the hold, captured only with the slot.

Each test reads the provider's own state back (the PaymentIntent's status,
its charge's ``captured``) besides the reservation's and the slot's.
"""

import json
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest
import stripe
from django.utils import timezone

from apps.payments import deadlines as payment_deadlines
from apps.payments.models import Payment, ProviderPayment
from apps.payments.providers import ProviderRefused
from apps.payments.services import (
    booking_cancel_and_refund,
    payment_settle,
    payment_start,
)
from apps.reservations import errors
from apps.reservations.models import Reservation
from apps.reservations.services import lapsed_holds_release
from apps.rooms.models import TimeSlot
from escape_rooms_backend.timeline import BY_JOB

from ..conftest import run_together
from ..factories import TimeSlotFactory, reserve
from .conftest import WEBHOOK_SECRET

pytestmark = pytest.mark.django_db


def at_provider(localstripe, intent_id):
    intent = localstripe.client.v1.payment_intents.retrieve(intent_id).to_dict()
    charge = intent.get("latest_charge")
    if isinstance(charge, str):
        charge = localstripe.client.v1.charges.retrieve(charge).to_dict()
    return intent["status"], bool(charge and charge.get("captured"))


def lapse(reservation):
    """Let the hold lapse and expire it, as its job would."""
    Reservation.objects.filter(pk=reservation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    lapsed_holds_release(cause="expiry_job")
    reservation.refresh_from_db()


def test_starting_to_pay_makes_one_manual_capture_intent_for_the_price(provider):
    reservation = reserve()

    first = payment_start(reservation=reservation)
    again = payment_start(reservation=reservation)

    assert again.provider_id == first.provider_id
    assert first.client_secret.startswith(f"{first.provider_id}_secret_")
    intent = provider.client.v1.payment_intents.retrieve(first.provider_id)
    assert (intent.amount, intent.currency, intent.capture_method) == (8000, "eur", "manual")
    assert intent.metadata["reservation"] == str(reservation.token)
    assert intent.status == "requires_payment_method"
    assert ProviderPayment.objects.count() == 1


def test_authorised_within_the_hold_it_is_captured_and_paid(provider):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)

    row = payment_settle(row)

    reservation.refresh_from_db()
    assert (row.outcome, row.status) == ("captured", "succeeded")
    assert at_provider(provider, row.provider_id) == ("succeeded", True)
    assert (reservation.status, reservation.payment_reference) == ("paid", row.provider_id)
    payment = Payment.objects.get()
    assert (payment.outcome, payment.amount, payment.source) == (
        "applied",
        Decimal("80.00"),
        "provider",
    )


def test_authorised_after_the_hold_lapsed_with_the_slot_free_it_is_captured_late(provider):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    lapse(reservation)
    assert reservation.cancellation_reason == "expired"
    provider.authorise(row.provider_id)

    row = payment_settle(row)

    reservation.refresh_from_db()
    assert row.outcome == "captured"
    assert at_provider(provider, row.provider_id) == ("succeeded", True)
    assert reservation.status == "paid"
    assert TimeSlot.objects.get(pk=reservation.time_slot_id).status == "reserved"
    assert Payment.objects.get().outcome == "applied_late"


def test_authorised_after_the_slot_went_to_someone_else_it_is_voided(provider):
    slot = TimeSlotFactory()
    first = reserve(slot)
    row = payment_start(reservation=first)
    lapse(first)
    second = reserve(slot, customer_email="jane@example.com")
    provider.authorise(row.provider_id)

    row = payment_settle(row)

    first.refresh_from_db()
    second.refresh_from_db()
    assert (row.outcome, row.reason) == ("voided", "slot_taken")
    assert at_provider(provider, row.provider_id) == ("canceled", False)
    assert (first.status, first.cancellation_reason) == ("cancelled", "expired")
    assert second.status == "pending"  # the other customer's hold, untouched
    assert not Payment.objects.exists()  # no money arrived: nothing to refund
    assert first.events.filter(cause="payment", detail__contains="voided").exists()


def test_a_hold_that_lapses_with_an_unconfirmed_intent_has_it_cancelled(provider):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    lapse(reservation)

    still_waiting = payment_deadlines.settle_handle([reservation.pk], BY_JOB)

    row.refresh_from_db()
    assert still_waiting == []
    assert (row.outcome, row.reason) == ("voided", "hold_lapsed")
    assert at_provider(provider, row.provider_id) == ("canceled", False)
    # No late authorisation can follow a cancelled intent.
    with pytest.raises(stripe.InvalidRequestError):
        provider.authorise(row.provider_id)


def test_an_intent_left_open_by_a_customer_cancelling_is_cancelled(provider):
    from apps.reservations.services import reservation_cancel

    reservation = reserve()
    row = payment_start(reservation=reservation)
    reservation_cancel(reservation=reservation)

    payment_deadlines.settle_handle([reservation.pk], BY_JOB)

    row.refresh_from_db()
    assert (row.outcome, row.reason) == ("voided", "cancelled")
    assert at_provider(provider, row.provider_id) == ("canceled", False)


def test_the_provider_down_when_starting_makes_nothing_and_says_so(provider, closed_url, settings):
    settings.STRIPE_API_BASE = closed_url
    reservation = reserve()

    with pytest.raises(errors.ProviderUnavailable):
        payment_start(reservation=reservation)

    settings.STRIPE_API_BASE = provider.api_base
    row = payment_start(reservation=reservation)  # tried again: made now, once
    assert row.provider_id.startswith("pi_")
    assert ProviderPayment.objects.count() == 1


def test_a_settle_with_the_provider_down_changes_nothing_and_is_retried(
    provider, closed_url, settings
):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    lapse(reservation)
    settings.STRIPE_API_BASE = closed_url

    assert payment_deadlines.settle_handle([reservation.pk], BY_JOB) == [reservation.pk]

    settings.STRIPE_API_BASE = provider.api_base
    assert payment_deadlines.settle_handle([reservation.pk], BY_JOB) == []
    row.refresh_from_db()
    assert row.outcome == "captured"  # the slot was still free
    assert at_provider(provider, row.provider_id) == ("succeeded", True)


def test_staff_cancelling_a_paid_booking_refund_it_at_the_provider(provider, admin_user):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    payment_settle(row)
    reservation.refresh_from_db()

    payment = booking_cancel_and_refund(reservation=reservation, actor=admin_user)

    reservation.refresh_from_db()
    assert (reservation.status, reservation.cancellation_reason) == ("cancelled", "staff")
    assert TimeSlot.objects.get(pk=reservation.time_slot_id).status == "active"
    assert payment.refund_reference.startswith("re_")
    assert payment.refunded_by == admin_user
    refund = provider.client.v1.refunds.retrieve(payment.refund_reference)
    assert (refund.payment_intent, refund.amount) == (row.provider_id, 8000)


# The webhook --------------------------------------------------------------------


def signed(client, event: dict, *, secret=WEBHOOK_SECRET, timestamp=None):
    payload = json.dumps(event)
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", secret)
    return client.post(
        "/api/payments/stripe/webhook/",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=f"t={timestamp},v1={signature}",
    )


def intent_event(kind: str, intent_id: str, n: int = 1, **fields) -> dict:
    return {
        "id": f"evt_{n}",
        "object": "event",
        "type": kind,
        "data": {"object": {"id": intent_id, "object": "payment_intent", **fields}},
    }


def test_replayed_and_reordered_events_settle_one_payment_once(provider, client):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    events = [
        # Out of order, twice, and claiming states the intent is not in:
        # the intent is read back from the provider every time.
        intent_event("payment_intent.succeeded", row.provider_id, 3, status="succeeded"),
        intent_event("payment_intent.created", row.provider_id, 1, status="canceled"),
        intent_event("payment_intent.amount_capturable_updated", row.provider_id, 2),
        intent_event("payment_intent.succeeded", row.provider_id, 3, status="succeeded"),
    ]

    answers = [signed(client, event).status_code for event in events]

    assert answers == [200, 200, 200, 200]
    reservation.refresh_from_db()
    assert reservation.status == "paid"
    assert Payment.objects.count() == 1
    assert Payment.objects.get().outcome == "applied"
    assert at_provider(provider, row.provider_id) == ("succeeded", True)


@pytest.mark.parametrize(
    "tamper",
    [
        {"secret": "whsec_someone_else"},
        {"timestamp": int(time.time()) - 3600},  # outside the library's tolerance
    ],
)
def test_a_badly_signed_or_stale_event_is_400_and_changes_nothing(provider, client, tamper):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)

    response = signed(
        client, intent_event("payment_intent.amount_capturable_updated", row.provider_id), **tamper
    )

    assert (response.status_code, response.json()["error"]["code"]) == (400, "bad_signature")
    row.refresh_from_db()
    assert row.outcome == ""
    assert at_provider(provider, row.provider_id) == ("requires_capture", False)


def test_an_unsigned_event_is_400(provider, client):
    response = client.post("/api/payments/stripe/webhook/", "{}", content_type="application/json")

    assert response.status_code == 400


def test_a_signed_event_of_a_type_not_acted_on_is_acknowledged(provider, client):
    response = signed(client, {"id": "evt_x", "type": "customer.created", "data": {"object": {}}})

    assert (response.status_code, response.json()) == (200, {"received": True, "handled": False})


def test_a_refund_or_dispute_at_the_provider_flags_the_booking(provider, client):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    payment_settle(row)
    charge = provider.client.v1.payment_intents.retrieve(row.provider_id).to_dict()["latest_charge"]
    charge = charge if isinstance(charge, str) else charge["id"]

    refunded = signed(
        client,
        {
            "id": "evt_r",
            "type": "charge.refunded",
            "data": {
                "object": {
                    "id": charge,
                    "object": "charge",
                    "payment_intent": row.provider_id,
                    "amount_refunded": 8000,
                    "currency": "eur",
                }
            },
        },
    )

    payment = Payment.objects.get()
    assert (refunded.status_code, refunded.json()["handled"]) == (200, True)
    assert payment.flag == "refunded_at_provider"
    assert "80.00 EUR refunded" in payment.flag_detail
    disputed = signed(
        client,
        {
            "id": "evt_d",
            "type": "charge.dispute.created",
            "data": {
                "object": {
                    "id": "dp_1",
                    "charge": charge,
                    "payment_intent": row.provider_id,
                    "reason": "fraudulent",
                }
            },
        },
    )
    payment.refresh_from_db()
    assert disputed.status_code == 200
    assert payment.flag == "disputed"
    assert reservation.events.filter(cause="payment", detail__startswith="Disputed").exists()


def test_the_webhook_answers_503_while_the_provider_cannot_be_asked(
    provider, client, closed_url, settings
):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    settings.STRIPE_API_BASE = closed_url

    response = signed(client, intent_event("payment_intent.succeeded", row.provider_id))

    assert response.status_code == 503  # Stripe sends it again later
    row.refresh_from_db()
    assert row.outcome == ""


# The API ---------------------------------------------------------------------


def test_the_api_returns_the_client_secret_and_refuses_a_customers_word(provider, client):
    reservation = reserve()

    started = client.post(f"/api/reservations/{reservation.token}/payment/")
    claimed = client.post(
        f"/api/reservations/{reservation.token}/pay/",
        {"payment_reference": "I-PAID"},
        content_type="application/json",
    )

    body = started.json()
    assert started.status_code == 200
    assert body["client_secret"].startswith(body["payment_intent"])
    assert (body["publishable_key"], body["amount"], body["currency"]) == (
        "pk_test_local",
        "80.00",
        "EUR",
    )
    assert (claimed.status_code, claimed.json()["error"]["code"]) == (409, "pay_at_provider")
    reservation.refresh_from_db()
    assert reservation.status == "pending"


def test_the_api_authorises_with_a_card_and_the_booking_is_paid(provider, client):
    reservation = reserve()
    client.post(f"/api/reservations/{reservation.token}/payment/")
    card = provider.client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {
                "number": "4242424242424242",
                "exp_month": 12,
                "exp_year": 2030,
                "cvc": "1" * 3,
            },
        }
    )

    response = client.post(
        f"/api/reservations/{reservation.token}/payment/authorise/",
        {"payment_method": card.id},
        content_type="application/json",
    )

    assert response.status_code == 200
    assert (response.json()["outcome"], response.json()["reservation_status"]) == (
        "captured",
        "paid",
    )


def test_a_declined_card_is_402_and_the_hold_runs_on(provider, client):
    reservation = reserve()
    client.post(f"/api/reservations/{reservation.token}/payment/")
    card = provider.client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": "4000000000000341", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )

    response = client.post(
        f"/api/reservations/{reservation.token}/payment/authorise/",
        {"payment_method": card.id},
        content_type="application/json",
    )

    assert (response.status_code, response.json()["error"]["code"]) == (402, "card_declined")
    reservation.refresh_from_db()
    assert reservation.status == "pending"
    assert not Payment.objects.exists()


def test_the_simulated_provider_takes_no_card(client):
    reservation = reserve()

    response = client.post(f"/api/reservations/{reservation.token}/payment/")

    assert (response.status_code, response.json()["error"]["code"]) == (
        409,
        "payment_confirmed_at_once",
    )


# Races --------------------------------------------------------------------------


def open_intents(localstripe, reservation) -> list[str]:
    found = localstripe.client.v1.payment_intents.list({"limit": 100}).to_dict()["data"]
    return [
        intent["id"]
        for intent in found
        if intent["metadata"].get("reservation") == str(reservation.token)
        and intent["status"] != "canceled"
    ]


@pytest.mark.django_db(transaction=True)
def test_concurrent_starts_leave_one_intent_open_at_the_provider(provider):
    reservation = reserve()

    results = run_together(*[lambda: payment_start(reservation=reservation).provider_id] * 4)

    row = ProviderPayment.objects.get()
    assert results == Counter({row.provider_id: 4})  # every caller was given the same one
    # The local Stripe ignores idempotency keys: a twin it made was cancelled.
    assert open_intents(provider, reservation) == [row.provider_id]


@pytest.mark.django_db(transaction=True)
def test_settles_racing_capture_once_and_record_one_payment(provider):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)

    results = run_together(
        *[lambda: payment_settle(ProviderPayment.objects.get(pk=row.pk)).outcome] * 4
    )

    assert results == Counter({"captured": 4})
    reservation.refresh_from_db()
    assert reservation.status == "paid"
    assert Payment.objects.filter(outcome="applied").count() == 1
    assert at_provider(provider, row.provider_id) == ("succeeded", True)


def test_a_price_changed_after_the_customer_started_paying_does_not_refuse_their_payment(
    provider,
):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    room = reservation.time_slot.room
    room.price = Decimal("99.00")
    room.save()
    provider.authorise(row.provider_id)

    row = payment_settle(row)

    reservation.refresh_from_db()
    assert (row.outcome, reservation.status) == ("captured", "paid")
    payment = Payment.objects.get()
    assert (payment.outcome, payment.amount) == ("applied", Decimal("80.00"))


def test_a_refund_the_provider_refuses_is_flagged_for_staff_and_not_asked_again(
    provider, admin_user
):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    payment_settle(row)
    reservation.refresh_from_db()
    # Stripe refuses for good (the local Stripe, emptied, no longer knows
    # the intent; Stripe itself refuses a charge already refunded).
    provider.flush()

    with pytest.raises(ProviderRefused):
        booking_cancel_and_refund(reservation=reservation, actor=admin_user)

    payment = Payment.objects.get()
    assert (payment.flag, payment.refund_reference) == ("refund_refused", "")
    assert payment.flag_detail.startswith("Refund refused:")
    assert payment_deadlines.settle_handle([reservation.pk], BY_JOB) == []  # not retried
    reservation.refresh_from_db()
    assert reservation.status == "cancelled"


def test_an_event_for_an_intent_stripe_does_not_know_is_acknowledged(provider, client):
    response = signed(client, intent_event("payment_intent.succeeded", "pi_nobody_made"))

    assert (response.status_code, response.json()["handled"]) == (200, False)
    assert not ProviderPayment.objects.exists()
