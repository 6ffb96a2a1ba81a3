"""
Paying by card in a real browser, against localstripe and its stand-in for Stripe.js.

The page mounts the stand-in's card field (plain inputs where Stripe.js puts
its iframe), the server confirms the PaymentIntent at localstripe and
captures it, and each test reads back what the customer sees, what the
venue's records say and what the provider holds.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import Locator, Page, expect

from apps.payments.models import Payment, ProviderPayment
from apps.reservations.errors import CardDeclined
from apps.reservations.models import Reservation

from ..factories import RoomFactory, TimeSlotFactory, reserve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

# Test cards, as localstripe's resources.py treats them.
VISA = "4242424242424242"
VISA_3D_SECURE = "4000002500003155"  # confirm waits for 3-D Secure (requires_action)
VISA_DECLINED = "4000000000000341"  # tokenised fine; the charge is declined on confirm
PRICE_MINOR_UNITS = 8000  # the factories' 80.00 EUR
NOT_CONFIRMED = "Your bank did not confirm the payment"  # card-payment.js


@pytest.fixture
def stripe_provider(localstripe, settings):
    """PAYMENT_PROVIDER=stripe pointed at the tests' localstripe; the live server reads it too."""
    settings.PAYMENT_PROVIDER = "stripe"
    settings.STRIPE_SECRET_KEY = "sk_test_local"
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_local"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test_secret"
    settings.STRIPE_API_BASE = localstripe.api_base
    settings.STRIPE_JS_URL = localstripe.js_url
    settings.STRIPE_TIMEOUT_SECONDS = 3
    return localstripe


@pytest.fixture
def slot(db):
    room = RoomFactory(name="The Lost Tomb", slug="the-lost-tomb", min_players=2, max_players=6)
    starts_at = (timezone.now() + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return TimeSlotFactory(room=room, starts_at=starts_at)


def open_held_reservation(page: Page, slot) -> Reservation:
    reservation = reserve(slot)
    page.goto(f"/reservations/{reservation.token}/")
    expect(page.get_by_role("heading", name="Your slot is held")).to_be_visible()
    return reservation


def enter_card(page: Page, number: str) -> None:
    """Type a card into the stand-in's field (its inputs are named only by placeholders)."""
    card = page.get_by_role("group", name="Card")
    for placeholder, value in (
        ("number", number),
        ("exp_month", "12"),
        ("exp_year", "30"),  # the stand-in sends "20" + this
        ("cvc", "123"),
        ("postal_code", "75001"),
    ):
        card.get_by_placeholder(placeholder, exact=True).fill(value)


def pay(page: Page) -> None:
    page.get_by_role("button", name="Pay 80.00 EUR").click()


def card_message(page: Page) -> Locator:
    return page.locator("#card-message[role=status]")


def at_provider(localstripe, reservation: Reservation) -> tuple[dict, dict | None]:
    """The reservation's PaymentIntent at localstripe and its latest charge (or None)."""
    intent_id = ProviderPayment.objects.get(reservation=reservation).provider_id
    intent = localstripe.client.v1.payment_intents.retrieve(intent_id).to_dict()
    charge = intent.get("latest_charge")
    if isinstance(charge, str):
        charge = localstripe.client.v1.charges.retrieve(charge).to_dict()
    return intent, charge


def assert_paid_and_captured(localstripe, reservation: Reservation) -> None:
    reservation.refresh_from_db()
    assert reservation.status == Reservation.Status.PAID
    payment = Payment.objects.get()
    assert (payment.reservation, payment.outcome, payment.amount, payment.currency) == (
        reservation,
        Payment.Outcome.APPLIED,
        Decimal("80.00"),
        "EUR",
    )
    assert reservation.payment_reference == payment.reference
    row = ProviderPayment.objects.get(reservation=reservation)
    assert (row.outcome, row.payment) == (ProviderPayment.Outcome.CAPTURED, payment)
    intent, charge = at_provider(localstripe, reservation)
    assert (intent["id"], intent["status"], intent["amount"], intent["currency"]) == (
        payment.reference,
        "succeeded",
        PRICE_MINOR_UNITS,
        "eur",
    )
    assert (charge["status"], charge["captured"], charge["amount"]) == (
        "succeeded",
        True,
        PRICE_MINOR_UNITS,
    )


def assert_nothing_charged(localstripe, reservation: Reservation) -> tuple[dict, dict | None]:
    reservation.refresh_from_db()
    assert reservation.status == Reservation.Status.PENDING
    assert not Payment.objects.exists()
    assert ProviderPayment.objects.get(reservation=reservation).outcome == ""
    intent, charge = at_provider(localstripe, reservation)
    assert intent["status"] == "requires_payment_method"
    assert charge is None or not charge["captured"]
    return intent, charge


def test_paying_with_a_card_books_the_slot_and_captures_the_price(
    page, slot, stripe_provider, shot
):
    page.goto(f"/rooms/{slot.room.slug}/?date={timezone.localdate(slot.starts_at).isoformat()}")
    page.get_by_role("link", name=f"Reserve {timezone.localtime(slot.starts_at):%H:%M}").click()
    page.get_by_label("Your name").fill("John Doe")
    page.get_by_label("Email").fill("john@example.com")
    page.get_by_label("Players").fill("3")
    page.get_by_role("button", name="Reserve and hold this slot").click()
    expect(page.get_by_role("heading", name="Your slot is held")).to_be_visible()
    pay(page)  # nothing typed yet: refused in the page, nothing started at the provider
    expect(card_message(page)).to_have_text("Check the card details and try again.")
    assert not ProviderPayment.objects.exists()
    enter_card(page, VISA)
    shot(page, "1-card-entered")

    pay(page)

    expect(page.get_by_role("heading", name="You're booked!")).to_be_visible()
    expect(page.locator("#state")).to_contain_text("Paid. See you at The Lost Tomb")
    expect(page.get_by_role("group", name="Card")).to_have_count(0)
    shot(page, "2-booked")
    assert_paid_and_captured(stripe_provider, Reservation.objects.get())


def test_a_card_that_asks_for_3d_secure_is_captured_once_the_customer_confirms(
    page, slot, stripe_provider, shot
):
    reservation = open_held_reservation(page, slot)
    enter_card(page, VISA_3D_SECURE)

    pay(page)

    confirm = page.get_by_role("button", name="Complete authentication")
    expect(confirm).to_be_visible()
    expect(card_message(page)).to_have_text("Your bank asks you to confirm the payment…")
    assert at_provider(stripe_provider, reservation)[0]["status"] == "requires_action"
    shot(page, "1-3d-secure")
    confirm.click()

    expect(page.get_by_role("heading", name="You're booked!")).to_be_visible()
    shot(page, "2-booked")
    assert_paid_and_captured(stripe_provider, reservation)


def test_a_failed_3d_secure_charges_nothing_and_another_try_pays(page, slot, stripe_provider, shot):
    reservation = open_held_reservation(page, slot)
    enter_card(page, VISA_3D_SECURE)
    pay(page)

    page.get_by_role("button", name="Fail authentication").click()

    expect(card_message(page)).to_contain_text(NOT_CONFIRMED)
    expect(card_message(page)).to_have_class("card-message error")
    expect(page.get_by_role("button", name="Pay 80.00 EUR")).to_be_enabled()
    shot(page, "1-not-confirmed")
    intent, charge = assert_nothing_charged(stripe_provider, reservation)
    # The stand-in drops the card from the intent: it takes another one.
    assert (intent["payment_method"], charge) == (None, None)

    enter_card(page, VISA)
    pay(page)

    expect(page.get_by_role("heading", name="You're booked!")).to_be_visible()
    shot(page, "2-booked")
    assert_paid_and_captured(stripe_provider, reservation)


def test_a_declined_card_is_refused_and_charges_nothing(page, slot, stripe_provider, shot):
    reservation = open_held_reservation(page, slot)
    enter_card(page, VISA_DECLINED)

    pay(page)

    expect(card_message(page)).to_have_text(
        f"{CardDeclined.default_message} (Your card was declined.)"
    )
    expect(card_message(page)).to_have_class("card-message error")
    shot(page, "1-declined")
    intent, declined = assert_nothing_charged(stripe_provider, reservation)
    assert (declined["status"], declined["failure_code"]) == ("failed", "card_declined")

    # Stripe takes another card for an intent back at requires_payment_method;
    # localstripe keeps the failed charge as the intent's latest and answers
    # the next confirm "400 Bad request", so the good card is refused too and
    # this reservation cannot be paid by card any more on the stand-in.
    enter_card(page, VISA)
    with page.expect_response(lambda answer: answer.url.endswith("/authorise/")) as second:
        pay(page)

    assert second.value.status == 402
    expect(card_message(page)).to_have_text(f"{CardDeclined.default_message} (Bad request)")
    expect(page.get_by_role("button", name="Pay 80.00 EUR")).to_be_enabled()
    shot(page, "2-second-card-refused-by-the-stand-in")
    intent, charge = assert_nothing_charged(stripe_provider, reservation)
    assert charge["id"] == declined["id"]  # no second charge was attempted
