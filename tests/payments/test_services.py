"""Every payment confirmation ends in a recorded, explainable outcome; none is dropped."""

from collections import Counter
from datetime import timedelta
from decimal import Decimal
from functools import partial

import pytest
from django.utils import timezone

from apps.payments.models import Payment
from apps.payments.services import payment_confirm
from apps.reservations import errors
from apps.reservations.models import Reservation
from apps.reservations.services import reservation_cancel, reservation_expire
from apps.rooms.models import TimeSlot

from ..conftest import run_together
from ..factories import TimeSlotFactory, reserve

Outcome = Payment.Outcome
PRICE = Decimal("80.00")


def confirm(reservation, reference="PSP-1", amount=PRICE, currency="EUR", **kwargs):
    return payment_confirm(
        reservation_token=str(reservation.token)
        if reservation
        else "00000000-0000-0000-0000-000000000000",
        reference=reference,
        amount=amount,
        currency=currency,
        source="webhook",
        **kwargs,
    ).payment


def slot_status(reservation) -> str:
    return TimeSlot.objects.get(pk=reservation.time_slot_id).status


# Outcomes ------------------------------------------------------------------


@pytest.mark.django_db
def test_within_the_hold_the_payment_is_applied():
    reservation = reserve()

    payment = confirm(reservation)

    reservation.refresh_from_db()
    assert (payment.outcome, payment.reason) == (Outcome.APPLIED, "")
    assert (reservation.status, reservation.payment_reference) == ("paid", "PSP-1")


@pytest.mark.django_db
@pytest.mark.parametrize("job_ran", [False, True])
def test_after_the_hold_with_the_slot_free_it_is_applied_late(job_ran):
    now = timezone.now()
    reservation = reserve(now=now - timedelta(minutes=2), hold_seconds=60)
    if job_ran:
        reservation_expire(reservation_id=reservation.pk, now=now - timedelta(seconds=30))

    payment = confirm(reservation, now=now)

    reservation.refresh_from_db()
    assert payment.outcome == Outcome.APPLIED_LATE
    assert (reservation.status, reservation.cancellation_reason) == ("paid", "")
    assert slot_status(reservation) == TimeSlot.Status.RESERVED
    last = reservation.events.last()
    assert last.to_status == "paid" and last.detail.startswith("Late payment PSP-1")


@pytest.mark.django_db
def test_after_the_hold_with_the_slot_taken_a_refund_is_due():
    now = timezone.now()
    slot = TimeSlotFactory()
    late = reserve(slot, now=now - timedelta(minutes=2), hold_seconds=60)
    newcomer = reserve(slot, now=now - timedelta(seconds=5), customer_name="Jane Roe")

    payment = confirm(late, now=now)

    late.refresh_from_db()
    assert (payment.outcome, payment.reason) == (Outcome.REFUND_DUE, "slot_taken")
    assert late.status == "cancelled"
    assert Reservation.objects.get(pk=newcomer.pk).status == "pending"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount": Decimal("79.99")}, "amount_mismatch"),
        ({"currency": "USD"}, "amount_mismatch"),
    ],
)
def test_a_wrong_amount_or_currency_leaves_the_reservation_as_it_is(change, reason):
    reservation = reserve()

    payment = confirm(reservation, **change)

    assert (payment.outcome, payment.reason) == (Outcome.REFUND_DUE, reason)
    assert Reservation.objects.get(pk=reservation.pk).status == "pending"


@pytest.mark.django_db
def test_paying_a_cancelled_or_paid_reservation_is_a_refund():
    cancelled, paid = reserve(), reserve()
    reservation_cancel(reservation=cancelled)
    confirm(paid, reference="PSP-A")

    assert confirm(cancelled, reference="PSP-B").reason == "cancelled"
    assert confirm(paid, reference="PSP-C").reason == "already_paid"
    assert Reservation.objects.get(pk=paid.pk).payment_reference == "PSP-A"


@pytest.mark.django_db
def test_an_unknown_reservation_is_recorded_as_refund_due():
    payment = confirm(None)

    assert (payment.outcome, payment.reason, payment.reservation) == (
        Outcome.REFUND_DUE,
        "unknown_reservation",
        None,
    )


@pytest.mark.django_db
def test_a_reference_seen_before_changes_nothing_and_returns_the_first_outcome():
    reservation = reserve()
    first = confirm(reservation)

    again = payment_confirm(
        reservation_token=str(reservation.token),
        reference="PSP-1",
        amount=PRICE,
        currency="eur",
        source="webhook",
    )

    assert again.created is False
    assert again.payment.pk == first.pk and again.payment.outcome == Outcome.APPLIED
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_a_reference_reused_for_another_reservation_or_amount_is_a_conflict(client):
    first, second = reserve(), reserve()
    confirm(first, reference="PSP-1")

    with pytest.raises(errors.PaymentReferenceConflict):
        confirm(second, reference="PSP-1")
    with pytest.raises(errors.PaymentReferenceConflict):
        confirm(first, reference="PSP-1", amount=Decimal("1.00"))
    api = client.post(
        f"/api/reservations/{second.token}/pay/",
        {"payment_reference": "PSP-1"},
        content_type="application/json",
    )

    assert (api.status_code, api.json()["error"]["code"]) == (409, "reference_conflict")
    assert Reservation.objects.get(pk=second.pk).status == "pending"
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_a_late_payment_reclaims_a_slot_whose_newer_hold_lapsed_too():
    now = timezone.now()
    slot = TimeSlotFactory()
    first = reserve(slot, now=now - timedelta(minutes=5), hold_seconds=60)
    second = reserve(slot, now=now - timedelta(minutes=3), hold_seconds=60)  # lapsed, no job yet

    payment = confirm(first, now=now)

    assert payment.outcome == Outcome.APPLIED_LATE
    assert Reservation.objects.get(pk=first.pk).status == "paid"
    second.refresh_from_db()
    assert (second.status, second.cancellation_reason) == ("cancelled", "expired")


# The race with the expiry job --------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_payments_racing_the_expiry_job_and_a_newcomer_are_never_lost():
    """
    At the end of a hold, three things at once: the payment (sent a moment
    before the end), the expiry job (at the end), and a new customer taking
    the slot (a moment after). Whatever the order, the payment is recorded
    with an outcome and the slot agrees with the reservations.
    """
    outcomes: Counter[str] = Counter()
    rounds = 40
    for round_ in range(rounds):
        slot = TimeSlotFactory()
        reservation = reserve(slot, hold_seconds=60)
        end = reservation.expires_at
        reference = f"PSP-{round_}"
        results = run_together(
            partial(confirm, reservation, reference=reference, now=end - timedelta(milliseconds=1)),
            partial(reservation_expire, reservation_id=reservation.pk, now=end),
            partial(reserve, slot, customer_name="Newcomer", now=end + timedelta(milliseconds=1)),
        )

        failures = [r for r in results if isinstance(r, str) and r != "slot_taken"]
        assert not failures, failures  # no deadlock, no error: only the newcomer may be refused
        payment = Payment.objects.get(reference=reference)
        outcomes[payment.outcome] += 1
        reservation.refresh_from_db()
        holders = list(Reservation.objects.holding(end).filter(time_slot=slot))
        slot.refresh_from_db()
        if payment.outcome == Outcome.REFUND_DUE:
            assert payment.reason == "slot_taken"
            assert reservation.status == "cancelled"
            assert [
                h.customer_name
                for h in Reservation.objects.filter(time_slot=slot, status="pending")
            ] == ["Newcomer"]
        else:
            assert reservation.status == "paid"
            assert not Reservation.objects.filter(time_slot=slot, customer_name="Newcomer").exists()
        assert slot.status == TimeSlot.Status.RESERVED
        assert len(holders) <= 1

    print(f"\npayment outcomes over {rounds} races at the end of a hold: {dict(outcomes)}")
    assert sum(outcomes.values()) == rounds
