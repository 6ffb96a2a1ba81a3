"""
Staff see payments, refunds and flags, refund paid bookings and ask the provider.

Through the admin as staff use it, with the simulated provider unless a test
asks for the local Stripe (``provider``).
"""

from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from apps.payments.models import Payment, ProviderPayment
from apps.payments.services import payment_flag, payment_settle, payment_start
from apps.reservations.admin import CANCEL_AND_REFUND_INTRO
from apps.reservations.errors import NotRefundable
from apps.rooms.models import TimeSlot

from ..factories import reserve

pytestmark = pytest.mark.django_db

RESERVATIONS = "/admin/reservations/reservation/"
PAYMENTS = "/admin/payments/payment/"
PROVIDER_PAYMENTS = "/admin/payments/providerpayment/"


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("desk", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            codename__in=[
                "view_reservation",
                "change_reservation",
                "view_payment",
                "change_payment",
                "view_providerpayment",
                "change_providerpayment",
            ]
        )
    )
    client.force_login(user)
    return user


def act(client, path, action, objects, **data):
    return client.post(
        path, {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objects], **data}, follow=True
    )


def listed(client, path, **query) -> list:
    response = client.get(path, query)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def refunds_due(client) -> list[Payment]:
    return listed(client, PAYMENTS, refund="due")


def said(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def paid_at_the_desk(client, reference: str):
    reservation = reserve()
    act(client, RESERVATIONS, "mark_paid", [reservation], apply="1", payment_reference=reference)
    reservation.refresh_from_db()
    assert reservation.status == "paid"
    return reservation


def slot_status(reservation) -> str:
    return TimeSlot.objects.get(pk=reservation.time_slot_id).status


def started_at_provider(reservation, **fields) -> ProviderPayment:
    """A payment at Stripe as ``payment_start`` records it, written directly (no provider asked)."""
    return ProviderPayment.objects.create(
        reservation=reservation,
        provider="stripe",
        amount=Decimal("80.00"),
        currency="EUR",
        created_at=timezone.now(),
        **fields,
    )


def test_staff_see_refunds_due_and_mark_them_refunded(client, staff):
    cancelled = reserve()
    act(client, RESERVATIONS, "cancel", [cancelled])
    act(client, RESERVATIONS, "mark_paid", [cancelled], apply="1", payment_reference="BANK-9")
    payment = Payment.objects.get(reference="BANK-9")
    assert refunds_due(client) == [payment]

    done = act(client, PAYMENTS, "mark_refunded", [payment])

    payment.refresh_from_db()
    assert [str(m) for m in done.context["messages"]] == ["1 payment(s) marked refunded."]
    assert payment.refunded_at is not None and payment.refunded_by == staff
    assert refunds_due(client) == []


def test_a_payment_with_no_refund_due_is_skipped_and_left_as_it_is(client, staff):
    reservation = reserve()
    act(client, RESERVATIONS, "mark_paid", [reservation], apply="1", payment_reference="BANK-1")
    applied = Payment.objects.get(reference="BANK-1")

    response = act(client, PAYMENTS, "mark_refunded", [applied])

    applied.refresh_from_db()
    assert [str(m) for m in response.context["messages"]] == [
        "1 payment(s) skipped: no refund was due, or it was already made."
    ]
    assert (applied.outcome, applied.refunded_at, applied.refunded_by) == ("applied", None, None)


# Cancel and refund (paid bookings) ---------------------------------------------


def test_the_refund_action_asks_for_confirmation_first_and_changes_nothing(client, staff):
    reservation = paid_at_the_desk(client, "DESK-1")

    page = act(client, RESERVATIONS, "cancel_and_refund", [reservation])

    assert page.status_code == 200
    assert page.templates[0].name == "admin/action_form.html"
    assert CANCEL_AND_REFUND_INTRO in page.content.decode()
    reservation.refresh_from_db()
    assert reservation.status == "paid"
    assert Payment.objects.get().refund_requested_at is None


def test_staff_cancel_and_refund_a_paid_booking_with_the_simulated_provider(client, staff):
    reservation = paid_at_the_desk(client, "DESK-2")

    done = act(client, RESERVATIONS, "cancel_and_refund", [reservation], apply="1")

    assert said(done) == ["1 booking(s) cancelled and refunded."]
    reservation.refresh_from_db()
    assert (reservation.status, reservation.cancellation_reason) == ("cancelled", "staff")
    assert slot_status(reservation) == "active"
    payment = Payment.objects.get(reference="DESK-2")
    assert payment.refund_reference.startswith("SIM-REFUND-")
    assert payment.refund_requested_at is not None and payment.refunded_at is not None
    assert payment.refunded_by == staff
    assert listed(client, PAYMENTS, refund="done") == [payment]
    assert listed(client, PAYMENTS, refund="requested") == []


def test_the_refund_action_skips_a_pending_reservation_and_leaves_it_as_it_is(client, staff):
    pending = reserve()

    response = act(client, RESERVATIONS, "cancel_and_refund", [pending], apply="1")

    assert said(response) == [f"1 reservation(s) skipped: {NotRefundable.default_message}"]
    pending.refresh_from_db()
    assert (pending.status, slot_status(pending)) == ("pending", "reserved")
    assert not Payment.objects.exists()


def test_the_refund_action_refunds_a_paid_booking_at_stripe(provider, client, staff):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    payment_settle(row)

    done = act(client, RESERVATIONS, "cancel_and_refund", [reservation], apply="1")

    assert said(done) == ["1 booking(s) cancelled and refunded."]
    reservation.refresh_from_db()
    assert (reservation.status, slot_status(reservation)) == ("cancelled", "active")
    payment = Payment.objects.get()
    refund = provider.client.v1.refunds.retrieve(payment.refund_reference)
    assert (refund.payment_intent, refund.amount) == (row.provider_id, 8000)


def test_with_stripe_unreachable_the_booking_is_cancelled_and_the_refund_stays_requested(
    provider, client, staff, closed_url, settings
):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    payment_settle(row)
    settings.STRIPE_API_BASE = closed_url

    response = act(client, RESERVATIONS, "cancel_and_refund", [reservation], apply="1")

    assert said(response) == [
        f"John Doe ({reservation.token}): cancelled; the provider could not be reached, so "
        "the refund stays requested and is asked for again on its own."
    ]
    reservation.refresh_from_db()
    assert reservation.status == "cancelled"
    payment = Payment.objects.get()
    assert (payment.refund_reference, payment.refunded_at) == ("", None)
    assert listed(client, PAYMENTS, refund="requested") == [payment]


# Payments at the provider --------------------------------------------------------


def test_the_provider_payments_list_loads_with_its_filters_and_search(client, staff):
    first, second = reserve(), reserve(customer_email="jane@example.com")
    open_one = started_at_provider(first, provider_id="pi_open", status="requires_capture")
    voided = started_at_provider(
        second,
        provider_id="pi_voided",
        status="canceled",
        outcome="voided",
        reason="slot_taken",
        settled_at=timezone.now(),
    )

    assert listed(client, PROVIDER_PAYMENTS) == [voided, open_one]
    assert listed(client, PROVIDER_PAYMENTS, outcome="voided") == [voided]
    assert listed(client, PROVIDER_PAYMENTS, outcome__exact="") == [open_one]
    assert listed(client, PROVIDER_PAYMENTS, reason="slot_taken") == [voided]
    assert listed(client, PROVIDER_PAYMENTS, status="requires_capture") == [open_one]
    assert listed(client, PROVIDER_PAYMENTS, q="pi_voided") == [voided]
    assert listed(client, PROVIDER_PAYMENTS, q=str(first.token)) == [open_one]


def test_a_provider_payments_page_is_read_only_and_hides_its_client_secret(client, staff):
    row = started_at_provider(reserve(), provider_id="pi_1", client_secret="pi_1_secret_xyz")

    page = client.get(f"{PROVIDER_PAYMENTS}{row.pk}/change/")

    assert page.status_code == 200
    assert "pi_1" in page.content.decode()
    assert "pi_1_secret_xyz" not in page.content.decode()
    assert client.post(f"{PROVIDER_PAYMENTS}{row.pk}/change/", {}).status_code == 403


def test_asking_a_provider_that_refuses_says_so_and_changes_nothing(provider, client, staff):
    # An intent the provider does not know: it answers 404.
    row = started_at_provider(reserve(), provider_id="pi_unknown", status="requires_capture")

    response = act(client, PROVIDER_PAYMENTS, "ask_provider", [row])

    assert response.status_code == 200
    (message,) = said(response)
    assert message.startswith("pi_unknown: the provider refused (")
    row.refresh_from_db()
    assert (row.status, row.outcome, row.checked_at) == ("requires_capture", "", None)


def test_asking_stripe_now_captures_an_authorised_payment(provider, client, staff):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)

    response = act(client, PROVIDER_PAYMENTS, "ask_provider", [row])

    assert said(response) == ["1 payment(s) read back from the provider: 1 captured."]
    row.refresh_from_db()
    reservation.refresh_from_db()
    assert (row.outcome, row.status, reservation.status) == ("captured", "succeeded", "paid")


def test_asking_stripe_while_it_is_unreachable_says_so(
    provider, client, staff, closed_url, settings
):
    row = payment_start(reservation=reserve())
    settings.STRIPE_API_BASE = closed_url

    response = act(client, PROVIDER_PAYMENTS, "ask_provider", [row])

    assert response.status_code == 200
    [message] = said(response)
    assert message.startswith("pi_") and "could not be reached, nothing changed" in message
    row.refresh_from_db()
    assert row.outcome == ""


# Flags ---------------------------------------------------------------------------


def test_the_flagged_filter_shows_only_flagged_payments(client, staff):
    paid_at_the_desk(client, "DESK-3")
    paid_at_the_desk(client, "DESK-4")
    assert payment_flag(intent_id="DESK-4", flag="disputed", detail="dispute dp_1 (fraudulent)")
    disputed = Payment.objects.get(reference="DESK-4")

    assert len(listed(client, PAYMENTS)) == 2
    assert listed(client, PAYMENTS, flagged="any") == [disputed]
    assert listed(client, PAYMENTS, flagged="disputed") == [disputed]
    assert listed(client, PAYMENTS, flagged="refunded_at_provider") == []
