"""Reservation services: each transition and each refusal, with an injected ``now``."""

import uuid
from datetime import timedelta

import pytest
from django.db.models import ProtectedError
from django.db.models.signals import post_save
from django.utils import timezone

from apps.reservations import errors
from apps.reservations.models import Reservation
from apps.reservations.services import (
    ExpireOutcome,
    holds_limit_check,
    lapsed_holds_expire,
    reservation_cancel,
    reservation_checkout,
    reservation_create,
    reservation_expire,
    reservation_extend_hold,
    reservation_keep_slot,
    reservation_pay,
)
from apps.reservations.signals import reservations_changed
from apps.rooms.models import TimeSlot

from ..factories import ReservationFactory, RoomFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db

Status = Reservation.Status


def slot_status(slot) -> str:
    return TimeSlot.objects.get(pk=slot.pk).status


def test_create_holds_the_slot_for_the_configured_hold(slot, settings):
    settings.RESERVATION_HOLD_SECONDS = 900
    now = timezone.now()

    reservation = reserve(slot, now=now)

    assert reservation.status == Status.PENDING
    assert reservation.expires_at == now + timedelta(seconds=900)
    assert reservation.created_at == now
    assert slot_status(slot) == TimeSlot.Status.RESERVED


def test_create_refuses_a_slot_someone_holds(slot):
    first = reserve(slot)

    with pytest.raises(errors.SlotTaken):
        reserve(slot, customer_name="Jane Roe")

    assert list(Reservation.objects.values_list("pk", flat=True)) == [first.pk]


def test_create_refuses_a_paid_slot(slot):
    reservation_pay(reservation=reserve(slot), payment_reference="PAY-1")

    with pytest.raises(errors.SlotTaken):
        reserve(slot)

    assert Reservation.objects.count() == 1


def test_create_takes_over_a_lapsed_hold_and_expires_it(slot):
    now = timezone.now()
    stale = reserve(slot, now=now, hold_seconds=60)

    later = now + timedelta(seconds=61)
    fresh = reserve(slot, now=later, customer_name="Jane Roe")

    stale.refresh_from_db()
    assert stale.status == Status.CANCELLED
    assert stale.cancellation_reason == Reservation.CancellationReason.EXPIRED
    assert stale.cancelled_at == later
    assert fresh.status == Status.PENDING
    assert slot_status(slot) == TimeSlot.Status.RESERVED


def test_create_refuses_an_unknown_slot(db):
    with pytest.raises(errors.SlotNotFound):
        reservation_create(
            time_slot_id=999_999, customer_name="x", customer_email="x@example.com", party_size=2
        )


def test_create_refuses_a_slot_that_has_started(db):
    slot = TimeSlotFactory()

    with pytest.raises(errors.SlotUnavailable):
        reserve(slot, now=slot.starts_at)

    assert slot_status(slot) == TimeSlot.Status.ACTIVE
    assert not Reservation.objects.exists()


def test_create_refuses_a_slot_of_an_inactive_room(db):
    slot = TimeSlotFactory(room=RoomFactory(is_active=False))

    with pytest.raises(errors.SlotUnavailable):
        reserve(slot)

    assert not Reservation.objects.exists()


@pytest.mark.parametrize("party_size", [1, 7])
def test_create_refuses_a_party_outside_the_rooms_limits(slot, party_size):
    with pytest.raises(errors.InvalidReservation) as refused:
        reserve(slot, party_size=party_size)

    assert refused.value.fields == {
        "party_size": [errors.PARTY_SIZE_OUT_OF_RANGE.format(min=2, max=6)]
    }
    assert slot_status(slot) == TimeSlot.Status.ACTIVE
    assert not Reservation.objects.exists()


def test_pay_within_the_hold_marks_paid_and_keeps_the_slot(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now)

    reservation_pay(
        reservation=reservation, payment_reference="PAY-1", now=now + timedelta(minutes=29)
    )

    reservation.refresh_from_db()
    assert reservation.status == Status.PAID
    assert reservation.paid_at == now + timedelta(minutes=29)
    assert reservation.payment_reference == "PAY-1"
    assert slot_status(slot) == TimeSlot.Status.RESERVED


def test_pay_after_the_hold_is_refused_and_expires_the_reservation(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now, hold_seconds=60)

    with pytest.raises(errors.HoldExpired):
        reservation_pay(
            reservation=reservation, payment_reference="PAY-1", now=now + timedelta(seconds=60)
        )

    reservation.refresh_from_db()
    assert reservation.status == Status.CANCELLED
    assert reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED
    assert reservation.payment_reference == ""
    assert slot_status(slot) == TimeSlot.Status.ACTIVE


def test_pay_twice_is_refused_and_keeps_the_first_payment(slot):
    reservation = reserve(slot)
    reservation_pay(reservation=reservation, payment_reference="PAY-1")

    with pytest.raises(errors.AlreadyPaid):
        reservation_pay(
            reservation=Reservation.objects.get(pk=reservation.pk), payment_reference="PAY-2"
        )

    reservation.refresh_from_db()
    assert reservation.payment_reference == "PAY-1"


def test_pay_a_cancelled_reservation_is_refused(slot):
    reservation = reserve(slot)
    reservation_cancel(reservation=reservation)

    with pytest.raises(errors.AlreadyCancelled):
        reservation_pay(reservation=reservation, payment_reference="PAY-1")

    reservation.refresh_from_db()
    assert reservation.status == Status.CANCELLED
    assert reservation.paid_at is None


def test_pay_with_a_stale_instance_sees_the_stored_status(slot):
    reservation = reserve(slot)
    stale_copy = Reservation.objects.get(pk=reservation.pk)
    reservation_cancel(reservation=reservation)

    with pytest.raises(errors.AlreadyCancelled):
        reservation_pay(reservation=stale_copy, payment_reference="PAY-1")

    assert Reservation.objects.get(pk=reservation.pk).status == Status.CANCELLED


def test_cancel_releases_the_slot(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now)

    reservation_cancel(reservation=reservation, now=now + timedelta(minutes=1))

    reservation.refresh_from_db()
    assert reservation.status == Status.CANCELLED
    assert reservation.cancellation_reason == Reservation.CancellationReason.CUSTOMER
    assert reservation.cancelled_at == now + timedelta(minutes=1)
    assert slot_status(slot) == TimeSlot.Status.ACTIVE


def test_cancel_a_paid_reservation_is_refused(slot):
    reservation = reserve(slot)
    reservation_pay(reservation=reservation, payment_reference="PAY-1")

    with pytest.raises(errors.AlreadyPaid):
        reservation_cancel(reservation=reservation)

    assert Reservation.objects.get(pk=reservation.pk).status == Status.PAID
    assert slot_status(slot) == TimeSlot.Status.RESERVED


def test_cancel_after_the_hold_expires_it_instead(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now, hold_seconds=60)

    with pytest.raises(errors.HoldExpired):
        reservation_cancel(reservation=reservation, now=now + timedelta(seconds=61))

    reservation.refresh_from_db()
    assert reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED


def test_cancel_refuses_the_expired_reason(slot):
    with pytest.raises(ValueError):
        reservation_cancel(reservation=reserve(slot), reason=Reservation.CancellationReason.EXPIRED)


def test_expire_a_lapsed_hold_cancels_it_and_frees_the_slot(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now, hold_seconds=60)

    result = reservation_expire(reservation_id=reservation.pk, now=now + timedelta(seconds=60))

    assert result.outcome is ExpireOutcome.EXPIRED
    reservation.refresh_from_db()
    assert reservation.status == Status.CANCELLED
    assert reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED
    assert reservation.cancelled_at == now + timedelta(seconds=60)
    assert slot_status(slot) == TimeSlot.Status.ACTIVE


def test_expire_before_the_hold_ends_changes_nothing(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now, hold_seconds=60)

    result = reservation_expire(reservation_id=reservation.pk, now=now + timedelta(seconds=59))

    assert result.outcome is ExpireOutcome.NOT_DUE
    assert Reservation.objects.get(pk=reservation.pk).status == Status.PENDING
    assert slot_status(slot) == TimeSlot.Status.RESERVED


def test_expire_is_idempotent(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now, hold_seconds=60)
    later = now + timedelta(seconds=60)
    reservation_expire(reservation_id=reservation.pk, now=later)

    again = reservation_expire(reservation_id=reservation.pk, now=later + timedelta(seconds=5))

    assert again.outcome is ExpireOutcome.ALREADY_CANCELLED
    assert Reservation.objects.get(pk=reservation.pk).cancelled_at == later


def test_expire_leaves_a_paid_reservation_alone(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now, hold_seconds=60)
    reservation_pay(reservation=reservation, payment_reference="PAY-1", now=now)

    result = reservation_expire(reservation_id=reservation.pk, now=now + timedelta(hours=1))

    assert result.outcome is ExpireOutcome.ALREADY_PAID
    assert Reservation.objects.get(pk=reservation.pk).status == Status.PAID
    assert slot_status(slot) == TimeSlot.Status.RESERVED


def test_expire_a_missing_reservation_says_so(db):
    assert reservation_expire(reservation_id=424242).outcome is ExpireOutcome.NOT_FOUND


def test_a_lapsed_hold_reads_as_expired_before_any_job_runs(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now, hold_seconds=60)
    later = now + timedelta(seconds=60)

    assert reservation.current_status(later) == Status.CANCELLED
    assert reservation.current_cancellation_reason(later) == "expired"
    assert reservation.seconds_left(later) == 0
    assert TimeSlot.objects.with_availability(later).get(pk=slot.pk).available is True
    assert TimeSlot.objects.with_availability(now).get(pk=slot.pk).available is False


def test_a_hold_never_outlasts_the_start_of_its_slot(db, settings):
    settings.RESERVATION_HOLD_SECONDS = 1800
    now = timezone.now()
    slot = TimeSlotFactory(starts_at=now + timedelta(minutes=10))

    reservation = reserve(slot, now=now)

    assert reservation.expires_at == slot.starts_at


def test_a_reservation_with_a_history_cannot_be_deleted(slot):
    reservation = reserve(slot)

    with pytest.raises(ProtectedError):
        reservation.delete()

    assert Reservation.objects.filter(pk=reservation.pk).exists()


def test_a_slot_whose_reservation_was_deleted_outside_the_services_is_bookable(slot):
    TimeSlot.objects.filter(pk=slot.pk).update(status=TimeSlot.Status.RESERVED)
    ReservationFactory(time_slot=slot).delete()  # written and deleted around the services
    assert slot_status(slot) == TimeSlot.Status.RESERVED  # the mirror is stale...

    reservation = reserve(slot, customer_name="Jane Roe")  # ...but the holders decide

    assert reservation.status == Status.PENDING
    assert slot_status(slot) == TimeSlot.Status.RESERVED


def test_paying_a_hold_the_expiry_job_already_released_says_hold_expired(slot):
    now = timezone.now()
    reservation = reserve(slot, now=now, hold_seconds=60)
    reservation_expire(reservation_id=reservation.pk, now=now + timedelta(seconds=60))

    with pytest.raises(errors.HoldExpired):
        reservation_pay(
            reservation=reservation, payment_reference="PAY-1", now=now + timedelta(seconds=61)
        )
    with pytest.raises(errors.HoldExpired):
        reservation_cancel(reservation=reservation, now=now + timedelta(seconds=61))


def test_keep_my_slot_extends_by_one_hold_up_to_the_limit(slot, settings):
    settings.RESERVATION_HOLD_SECONDS = 600
    settings.RESERVATION_MAX_EXTENSIONS = 2
    now = timezone.now()
    reservation = reserve(slot, now=now)

    reservation_keep_slot(reservation=reservation, now=now)
    reservation_keep_slot(reservation=reservation, now=now)
    with pytest.raises(errors.HoldNotExtendable):
        reservation_keep_slot(reservation=reservation, now=now)

    reservation.refresh_from_db()
    assert reservation.expires_at == now + timedelta(seconds=1800)
    assert reservation.extensions == 2


def test_no_extension_runs_past_the_slots_start(db):
    now = timezone.now()
    slot = TimeSlotFactory(starts_at=now + timedelta(minutes=20))
    reservation = reserve(slot, now=now, hold_seconds=600)

    reservation_extend_hold(reservation=reservation, by=timedelta(hours=2), now=now)
    reservation.refresh_from_db()
    assert reservation.expires_at == slot.starts_at

    with pytest.raises(errors.HoldNotExtendable):
        reservation_extend_hold(reservation=reservation, by=timedelta(minutes=5), now=now)


def test_the_same_request_key_returns_the_first_reservation(slot):
    key = uuid.uuid4()

    first = reserve(slot, request_key=key)
    again = reserve(slot, request_key=key, customer_name="Someone Else")

    assert again.pk == first.pk
    assert Reservation.objects.count() == 1


# The payment window ------------------------------------------------------------


def test_checkout_extends_a_short_hold_once(settings):
    settings.PAYMENT_WINDOW_SECONDS = 300
    now = timezone.now()
    reservation = reserve(now=now, hold_seconds=60)

    reservation_checkout(reservation=reservation, now=now + timedelta(seconds=30))
    reservation_checkout(reservation=reservation, now=now + timedelta(seconds=50))

    reservation.refresh_from_db()
    assert reservation.expires_at == now + timedelta(seconds=330)
    assert reservation.checkout_started_at == now + timedelta(seconds=30)


def test_checkout_never_shortens_a_long_hold(settings):
    settings.PAYMENT_WINDOW_SECONDS = 300
    now = timezone.now()
    reservation = reserve(now=now, hold_seconds=1800)

    reservation_checkout(reservation=reservation, now=now)

    assert Reservation.objects.get(pk=reservation.pk).expires_at == now + timedelta(seconds=1800)


# Hold limits ---------------------------------------------------------------


@pytest.fixture
def limits(settings):
    settings.MAX_PENDING_HOLDS_PER_EMAIL = 2
    settings.MAX_PENDING_HOLDS_PER_ADDRESS = 3


def test_retry_after_counts_until_enough_holds_have_ended(limits):
    now = timezone.now()
    for seconds in (300, 100, 200):  # three holds against a limit of two
        ReservationFactory(expires_at=now + timedelta(seconds=seconds))

    with pytest.raises(errors.TooManyHolds) as refused:
        holds_limit_check(customer_email="john@example.com", client_address=None, now=now)

    # Below the limit once two have ended: at 200 s, not at the first (100 s).
    assert refused.value.retry_after == 200


def test_holds_that_end_between_the_count_and_the_read_lift_the_limit(limits, monkeypatch):
    # On PostgreSQL the count and the read are two statements: the holds the
    # count saw may have been paid or expired before the read. The check
    # must then let the hold through rather than fail on a missing row.
    now = timezone.now()
    monkeypatch.setattr(type(Reservation.objects.all()), "count", lambda self: 2)

    assert (
        holds_limit_check(customer_email="john@example.com", client_address=None, now=now) is None
    )


# The domain signal ---------------------------------------------------------


@pytest.fixture
def sent():
    """Record each ``reservations_changed``: one list of (pk, status, expires_at) per send."""
    signals: list[list[tuple[int, str, object]]] = []

    def receiver(sender, reservations, **kwargs):
        signals.append([(r.pk, r.status, r.expires_at) for r in reservations])

    reservations_changed.connect(receiver, sender=Reservation, weak=False)
    yield signals
    reservations_changed.disconnect(receiver, sender=Reservation)


def test_every_change_sends_reservations_changed_once_with_the_reservation_as_it_now_stands(
    slot, sent, settings
):
    settings.PAYMENT_WINDOW_SECONDS = 300
    now = timezone.now()
    paid = reserve(slot, now=now, hold_seconds=60)
    cancelled = reserve(now=now)
    expired = reserve(now=now, hold_seconds=60)
    created = list(sent)
    sent.clear()

    reservation_checkout(reservation=paid, now=now)
    reservation_extend_hold(reservation=paid, by=timedelta(minutes=10), now=now)
    reservation_pay(reservation=paid, payment_reference="PAY-1", now=now)
    reservation_cancel(reservation=cancelled, now=now)
    reservation_expire(reservation_id=expired.pk, now=now + timedelta(seconds=60))

    window_end = now + timedelta(seconds=300)
    assert created == [
        [(paid.pk, Status.PENDING, now + timedelta(seconds=60))],
        [(cancelled.pk, Status.PENDING, cancelled.expires_at)],
        [(expired.pk, Status.PENDING, now + timedelta(seconds=60))],
    ]
    assert sent == [
        [(paid.pk, Status.PENDING, window_end)],
        [(paid.pk, Status.PENDING, window_end + timedelta(minutes=10))],
        [(paid.pk, Status.PAID, window_end + timedelta(minutes=10))],
        [(cancelled.pk, Status.CANCELLED, cancelled.expires_at)],
        [(expired.pk, Status.CANCELLED, now + timedelta(seconds=60))],
    ]


def test_a_refused_or_repeated_request_sends_nothing(slot, sent):
    key = uuid.uuid4()
    reservation = reserve(slot, request_key=key)
    reservation_pay(reservation=reservation, payment_reference="PAY-1")
    sent.clear()

    reserve(slot, request_key=key)  # the same submission again
    with pytest.raises(errors.SlotTaken):
        reserve(slot, customer_name="Jane Roe")
    with pytest.raises(errors.AlreadyPaid):
        reservation_cancel(reservation=reservation)
    reservation_expire(reservation_id=reservation.pk, now=timezone.now() + timedelta(hours=1))

    assert sent == []


def test_taking_over_a_lapsed_hold_sends_its_expiry_then_the_new_hold(slot, sent):
    now = timezone.now()
    stale = reserve(slot, now=now, hold_seconds=60)
    sent.clear()

    fresh = reserve(slot, now=now + timedelta(seconds=61), hold_seconds=60)

    assert sent == [
        [(stale.pk, Status.CANCELLED, now + timedelta(seconds=60))],
        [(fresh.pk, Status.PENDING, now + timedelta(seconds=121))],
    ]


def test_a_bulk_expiry_sends_one_signal_with_every_expired_reservation(sent):
    now = timezone.now()
    holds = [reserve(now=now, hold_seconds=seconds) for seconds in (30, 10, 20)]
    waiting = reserve(now=now, hold_seconds=600)
    sent.clear()

    expired = lapsed_holds_expire(now=now + timedelta(seconds=60))

    earliest_first = [holds[1], holds[2], holds[0]]
    assert [hold.reservation_id for hold in expired] == [r.pk for r in earliest_first]
    assert sent == [[(r.pk, Status.CANCELLED, r.expires_at) for r in earliest_first]]
    assert Reservation.objects.get(pk=waiting.pk).status == Status.PENDING


def test_a_post_save_receiver_sees_only_the_saves_that_happened(slot):
    saves: list[tuple[int, bool]] = []

    def receiver(sender, instance, created, **kwargs):
        saves.append((instance.pk, created))

    post_save.connect(receiver, sender=Reservation, weak=False)
    try:
        now = timezone.now()
        paid = reserve(slot, now=now)
        cancelled = reserve(now=now)
        lapsed = reserve(now=now, hold_seconds=60)
        bulk = reserve(now=now, hold_seconds=60)
        reservation_extend_hold(reservation=paid, by=timedelta(minutes=5), now=now)
        reservation_pay(reservation=paid, payment_reference="PAY-1", now=now)
        reservation_cancel(reservation=cancelled, now=now)
        reservation_expire(reservation_id=lapsed.pk, now=now + timedelta(seconds=60))
        lapsed_holds_expire(now=now + timedelta(seconds=60))
    finally:
        post_save.disconnect(receiver, sender=Reservation)

    # One real save per reservation: its INSERT. The changes are conditional
    # UPDATEs, announced by reservations_changed, not by fake saves.
    assert saves == [(r.pk, True) for r in (paid, cancelled, lapsed, bulk)]
    assert Reservation.objects.get(pk=bulk.pk).status == Status.CANCELLED
