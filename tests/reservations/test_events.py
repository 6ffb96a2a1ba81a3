"""The audit trail: every change of a reservation writes one event with its cause."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.reservations import errors
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import (
    reservation_cancel,
    reservation_expire,
    reservation_extend_hold,
    reservation_pay,
)
from escape_rooms_backend.scheduler import cancel_expired_reservations
from escape_rooms_backend.timeline import run_deadline

from ..factories import TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db

Cause = ReservationEvent.Cause


def trail(reservation):
    return [
        (e.from_status, e.to_status, e.cause)
        for e in ReservationEvent.objects.filter(reservation=reservation)
    ]


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("staff", password="x", is_staff=True)


def test_creation_and_payment_by_the_customer():
    now = timezone.now()
    reservation = reserve(now=now)

    reservation_pay(reservation=reservation, payment_reference="PAY-1", now=now)

    assert trail(reservation) == [
        ("", "pending", Cause.CUSTOMER),
        ("pending", "paid", Cause.CUSTOMER),
    ]
    assert ReservationEvent.objects.filter(reservation=reservation).last().at == now


def test_staff_actions_name_the_staff_user(staff):
    paid, cancelled = reserve(), reserve()

    reservation_pay(reservation=paid, payment_reference="BANK-7", cause=Cause.STAFF, actor=staff)
    reservation_cancel(reservation=cancelled, reason="staff", actor=staff)

    for reservation, to_status in ((paid, "paid"), (cancelled, "cancelled")):
        event = ReservationEvent.objects.filter(reservation=reservation).last()
        assert (event.to_status, event.cause, event.staff_user) == (to_status, Cause.STAFF, staff)
    assert "BANK-7" in ReservationEvent.objects.filter(reservation=paid).last().detail


def test_an_expiry_by_its_job_records_the_lateness(job_store):
    reservation = reserve(hold_seconds=0.001)
    reservation.refresh_from_db()

    run_deadline(HOLD_END.name, reservation.pk)

    event = ReservationEvent.objects.filter(reservation=reservation).last()
    assert (event.from_status, event.to_status, event.cause) == (
        "pending",
        "cancelled",
        "expiry_job",
    )
    assert event.lateness_seconds == pytest.approx(
        (event.at - reservation.expires_at).total_seconds()
    )
    assert 0 < event.lateness_seconds < 5


def test_an_expiry_by_the_sweep_says_sweep():
    now = timezone.now()
    reservation = reserve(now=now - timedelta(minutes=2), hold_seconds=60)

    cancel_expired_reservations(now=now)

    event = ReservationEvent.objects.filter(reservation=reservation).last()
    assert (event.cause, event.lateness_seconds) == (Cause.SWEEP, 60.0)


def test_a_new_reservation_taking_over_a_lapsed_hold_says_reclaim():
    slot = TimeSlotFactory()
    now = timezone.now()
    stale = reserve(slot, now=now, hold_seconds=60)

    reserve(slot, now=now + timedelta(seconds=90))

    assert trail(stale)[-1] == ("pending", "cancelled", Cause.RECLAIM)
    assert ReservationEvent.objects.filter(reservation=stale).last().lateness_seconds == 30.0


def test_extending_a_hold_is_recorded_and_moves_expires_at(staff):
    now = timezone.now()
    reservation = reserve(now=now, hold_seconds=60)

    reservation_extend_hold(reservation=reservation, by=timedelta(minutes=15), now=now, actor=staff)

    reservation.refresh_from_db()
    assert reservation.expires_at == now + timedelta(seconds=60) + timedelta(minutes=15)
    event = ReservationEvent.objects.filter(reservation=reservation).last()
    assert (event.from_status, event.to_status, event.cause, event.staff_user) == (
        "pending",
        "pending",
        Cause.STAFF,
        staff,
    )
    assert event.detail.startswith("Hold extended by 15 min")


def test_extending_a_lapsed_hold_is_refused_and_expires_it():
    now = timezone.now()
    reservation = reserve(now=now, hold_seconds=60)

    with pytest.raises(errors.HoldExpired):
        reservation_extend_hold(
            reservation=reservation, by=timedelta(minutes=5), now=now + timedelta(seconds=61)
        )

    reservation.refresh_from_db()
    assert reservation.status == Reservation.Status.CANCELLED
    assert reservation.expires_at == now + timedelta(seconds=60)


@pytest.mark.parametrize("by", [timedelta(0), timedelta(minutes=-5)])
def test_extending_by_nothing_or_less_is_a_programming_error(by):
    reservation = reserve()

    with pytest.raises(ValueError):
        reservation_extend_hold(reservation=reservation, by=by)

    assert trail(reservation) == [("", "pending", Cause.CUSTOMER)]


def test_a_refused_change_writes_no_event():
    reservation = reserve()
    reservation_pay(reservation=reservation, payment_reference="PAY-1")

    with pytest.raises(errors.AlreadyPaid):
        reservation_cancel(reservation=reservation)
    assert reservation_expire(reservation_id=reservation.pk).expired is False

    assert trail(reservation) == [
        ("", "pending", Cause.CUSTOMER),
        ("pending", "paid", Cause.CUSTOMER),
    ]
