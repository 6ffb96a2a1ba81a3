"""
The payment deadline on the timeline: when it falls due, what the sweep and the reconcile see.

No scheduler runs here; the provider's answers come from the local Stripe,
or from a scripted provider for what it cannot show (a payment processing).
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.payments import deadlines as payment_deadlines
from apps.payments import providers
from apps.payments.models import ProviderPayment
from apps.payments.providers import IntentState
from apps.payments.services import payment_settle, payment_start
from apps.reservations.models import Reservation
from apps.reservations.services import lapsed_holds_release
from escape_rooms_backend import timeline

from ..factories import reserve

pytestmark = pytest.mark.django_db


def test_the_deadline_falls_before_the_hold_ends_then_at_once_when_it_lapsed(provider, settings):
    settings.PAYMENT_CHECK_LEAD_SECONDS = 10
    reservation = reserve()
    assert payment_deadlines.settle_due_at(reservation) is None  # nothing started: no deadline
    payment_start(reservation=reservation)
    reservation.refresh_from_db()

    assert payment_deadlines.settle_due_at(reservation) == reservation.expires_at - timedelta(
        seconds=10
    )
    Reservation.objects.filter(pk=reservation.pk).update(expires_at=timezone.now())
    lapsed_holds_release(cause="expiry_job")
    reservation.refresh_from_db()
    assert payment_deadlines.settle_due_at(reservation) == reservation.cancelled_at


def test_the_simulated_provider_puts_no_payment_deadline_on_any_reservation(settings):
    reservation = reserve()
    reservation.checkout_started_at = timezone.now()

    assert payment_deadlines.settle_due_at(reservation) is None


def test_the_sweep_schedules_due_payments_and_never_asks_the_provider(
    provider, settings, job_store, closed_url
):
    held = reserve()
    lapsed = reserve()
    payment_start(reservation=held)
    row = payment_start(reservation=lapsed)
    Reservation.objects.filter(pk=lapsed.pk).update(expires_at=timezone.now())
    lapsed_holds_release(cause="expiry_job")
    settings.STRIPE_API_BASE = closed_url  # a provider call would fail the sweep

    handled = payment_deadlines.settle_sweep(None, timeline.BY_SWEEP)

    assert handled == 1
    assert f"settle_payment:{lapsed.pk}" in job_store.jobs()
    assert f"settle_payment:{held.pk}" not in job_store.jobs()  # its hold runs on
    row.refresh_from_db()
    assert row.outcome == ""  # settled by the job, not the sweep


def test_without_jobs_the_sweep_settles_itself(provider, settings):
    settings.SCHEDULER_EXPIRY_JOBS = False  # the benchmarks' switch
    reservation = reserve()
    row = payment_start(reservation=reservation)
    Reservation.objects.filter(pk=reservation.pk).update(expires_at=timezone.now())
    lapsed_holds_release(cause="expiry_job")

    assert payment_deadlines.settle_sweep(None, timeline.BY_SWEEP) == 1

    row.refresh_from_db()
    assert (row.outcome, row.reason) == ("voided", "hold_lapsed")


def test_the_reconcile_needs_what_the_receiver_schedules(provider, settings):
    settings.PAYMENT_CHECK_LEAD_SECONDS = 10
    reservation = reserve()
    payment_start(reservation=reservation)
    reservation.refresh_from_db()

    needed = dict(payment_deadlines.settle_scheduled())

    assert needed == {reservation.pk: payment_deadlines.settle_due_at(reservation)}


# A payment processing at the provider (the local Stripe has none) ------------


class Processing:
    """A provider whose every intent is processing: its money is on the way."""

    name = "processing"
    authorises = True

    def retrieve(self, intent_id: str) -> IntentState:
        return IntentState(intent_id, "processing", Decimal("80.00"), "EUR")


@pytest.fixture
def processing(settings):
    providers.PROVIDERS["processing"] = f"{__name__}.Processing"
    settings.PAYMENT_PROVIDER = "processing"
    yield
    del providers.PROVIDERS["processing"]
    providers.provider_named.cache_clear()


def test_a_payment_processing_keeps_the_hold_for_the_grace_and_no_longer(processing, settings):
    settings.PAYMENT_IN_FLIGHT_GRACE_SECONDS = 120
    now = timezone.now()
    reservation = reserve(now=now, hold_seconds=5)
    row = ProviderPayment.objects.create(
        reservation=reservation,
        provider="processing",
        provider_id="pi_slow",
        amount=Decimal("80.00"),
        currency="EUR",
        created_at=now,
    )

    payment_settle(row, now=now + timedelta(seconds=4))
    reservation.refresh_from_db()
    assert reservation.expires_at == now + timedelta(seconds=124)  # first seen + the grace
    assert reservation.events.filter(cause="payment", detail__contains="processing").exists()

    payment_settle(row, now=now + timedelta(seconds=100))  # still processing: no more
    reservation.refresh_from_db()
    assert reservation.expires_at == now + timedelta(seconds=124)
    row.refresh_from_db()
    assert (row.status, row.outcome) == ("processing", "")
