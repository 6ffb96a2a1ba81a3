"""
Staff at the desk racing a customer, or each other: exactly one wins.

A conditional UPDATE that joins another table is not enough on PostgreSQL:
after waiting for a row lock it checks again only the updated table's own
conditions. These services lock the row first.
"""

import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from apps.payments.models import Payment
from apps.payments.services import (
    booking_cancel_by_customer,
    payment_confirm_price,
    payment_mark_refunded,
    refunds_due_to_staff,
)
from apps.reservations import errors
from apps.reservations.models import Reservation
from apps.reservations.services import reservation_attendance_set, reservation_cancel_paid

from ..factories import TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db(transaction=True)


def paid(starts_in: timedelta) -> Reservation:
    reservation = reserve(TimeSlotFactory(starts_at=timezone.now() + starts_in))
    payment_confirm_price(reservation=reservation, reference="PAY-1", source="customer")
    reservation.refresh_from_db()
    return reservation


def first_then_second(first, second) -> None:
    """``first`` commits 1 s after taking its locks; ``second`` starts 0.2 s into that."""
    started = threading.Event()

    def run_first():
        try:
            with transaction.atomic():
                first()
                started.set()
                time.sleep(1.0)
        finally:
            connection.close()

    def run_second():
        started.wait(5)
        time.sleep(0.2)
        try:
            second()
        finally:
            connection.close()

    threads = [threading.Thread(target=run_first), threading.Thread(target=run_second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)


def test_a_check_in_behind_a_customers_cancel_is_refused(settings):
    settings.CUSTOMER_CANCEL_HOURS = 0
    booking = paid(starts_in=timedelta(minutes=30))
    outcome = {}

    def check_in():
        try:
            reservation_attendance_set(
                reservation=Reservation.objects.get(pk=booking.pk),
                attendance="checked_in",
                actor=None,
            )
            outcome["check_in"] = "ok"
        except errors.ReservationError as refused:
            outcome["check_in"] = refused.code

    first_then_second(
        lambda: reservation_cancel_paid(
            reservation=Reservation.objects.get(pk=booking.pk), reason="customer"
        ),
        check_in,
    )

    booking.refresh_from_db()
    assert (booking.status, booking.attendance) == ("cancelled", "")
    assert outcome == {"check_in": "not_paid"}
    assert not booking.events.filter(detail="Checked in").exists()


def test_two_desks_marking_one_refund_are_told_it_was_done_once():
    booking = paid(starts_in=timedelta(days=5))
    payment = booking_cancel_by_customer(reservation=booking)
    assert payment is not None and refunds_due_to_staff().filter(pk=payment.pk).exists()
    one, two = (User.objects.create_user(name, is_staff=True) for name in ("desk1", "desk2"))
    told = {}

    first_then_second(
        lambda: told.setdefault("one", payment_mark_refunded(payment=payment, actor=one)),
        lambda: told.setdefault("two", payment_mark_refunded(payment=payment, actor=two)),
    )

    assert told == {"one": True, "two": False}
    assert Payment.objects.get(pk=payment.pk).refunded_by == one
