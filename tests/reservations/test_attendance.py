"""Check-in and no-show of paid bookings (``reservation_attendance_set``), with time injected."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.payments.services import booking_cancel_by_customer, payment_confirm_price
from apps.reservations import changes, errors
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import reservation_attendance_set

from ..factories import ReservationFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db

Attendance = Reservation.Attendance


@pytest.fixture
def booking() -> Reservation:
    """A paid booking of a game that starts in three hours."""
    slot = TimeSlotFactory(starts_at=(timezone.now() + timedelta(hours=3)).replace(microsecond=0))
    return ReservationFactory(
        time_slot=slot, status=Reservation.Status.PAID, paid_at=timezone.now()
    )


def unchanged(reservation: Reservation) -> bool:
    reservation.refresh_from_db()
    events = ReservationEvent.objects.filter(reservation=reservation)
    return reservation.attendance == "" and reservation.attendance_at is None and not events


def test_check_in_opens_exactly_one_hour_before_the_game(booking):
    starts_at = booking.time_slot.starts_at
    with pytest.raises(errors.CheckInNotOpen):
        reservation_attendance_set(
            reservation=booking,
            attendance=Attendance.CHECKED_IN,
            actor=None,
            now=starts_at - timedelta(hours=1, seconds=1),
        )
    assert unchanged(booking)

    opens = starts_at - timedelta(hours=1)
    reservation_attendance_set(
        reservation=booking, attendance=Attendance.CHECKED_IN, actor=None, now=opens
    )

    booking.refresh_from_db()
    assert (booking.status, booking.attendance, booking.attendance_at) == (
        Reservation.Status.PAID,
        Attendance.CHECKED_IN,
        opens,
    )


def test_a_no_show_is_recorded_from_the_start_of_the_game_with_who_recorded_it(booking):
    starts_at = booking.time_slot.starts_at
    desk = get_user_model().objects.create_user("desk", is_staff=True)
    with pytest.raises(errors.GameNotStarted):
        reservation_attendance_set(
            reservation=booking,
            attendance=Attendance.NO_SHOW,
            actor=desk,
            now=starts_at - timedelta(seconds=1),
        )
    assert unchanged(booking)

    reservation_attendance_set(
        reservation=booking, attendance=Attendance.NO_SHOW, actor=desk, now=starts_at
    )

    event = ReservationEvent.objects.get(reservation=booking)
    assert (event.from_status, event.to_status, event.cause, event.detail, event.at) == (
        "paid",
        "paid",
        "staff",
        "No-show",
        starts_at,
    )
    assert event.staff_user == desk


@pytest.mark.parametrize(
    "status",
    [Reservation.Status.PENDING, Reservation.Status.CANCELLED],
)
def test_only_a_paid_booking_has_an_attendance(status):
    slot = TimeSlotFactory(starts_at=(timezone.now() - timedelta(minutes=5)).replace(microsecond=0))
    fields = {"cancelled_at": timezone.now(), "cancellation_reason": "staff"}
    reservation = ReservationFactory(
        time_slot=slot, status=status, **(fields if status == "cancelled" else {})
    )

    with pytest.raises(errors.NotPaid):
        reservation_attendance_set(
            reservation=reservation, attendance=Attendance.CHECKED_IN, actor=None
        )

    assert unchanged(reservation)


def test_the_decision_is_made_on_the_row_not_on_a_stale_copy(booking):
    stale = Reservation.objects.get(pk=booking.pk)
    Reservation.objects.filter(pk=booking.pk).update(
        status=Reservation.Status.CANCELLED,
        cancelled_at=timezone.now(),
        cancellation_reason="staff",
    )

    with pytest.raises(errors.NotPaid):
        reservation_attendance_set(
            reservation=stale,
            attendance=Attendance.NO_SHOW,
            actor=None,
            now=booking.time_slot.starts_at,
        )

    assert unchanged(booking)


def test_the_same_mark_twice_is_refused_and_recorded_once(booking):
    now = booking.time_slot.starts_at
    reservation_attendance_set(
        reservation=booking, attendance=Attendance.CHECKED_IN, actor=None, now=now
    )

    with pytest.raises(errors.AttendanceUnchanged) as refused:
        reservation_attendance_set(
            reservation=booking,
            attendance=Attendance.CHECKED_IN,
            actor=None,
            now=now + timedelta(minutes=1),
        )

    assert refused.value.message == "This booking is already marked checked in."
    booking.refresh_from_db()
    assert booking.attendance_at == now
    assert ReservationEvent.objects.filter(reservation=booking).count() == 1


def test_another_mark_is_a_programming_error(booking):
    with pytest.raises(ValueError):
        reservation_attendance_set(reservation=booking, attendance="late", actor=None)
    assert unchanged(booking)


def _paid(starts_in: timedelta) -> Reservation:
    reservation = reserve(TimeSlotFactory(starts_at=timezone.now() + starts_in))
    payment_confirm_price(reservation=reservation, reference="PAY-A", source="customer")
    reservation.refresh_from_db()
    return reservation


def test_a_checked_in_booking_moved_to_another_game_is_not_checked_in_there(settings):
    settings.CUSTOMER_RESCHEDULE_HOURS = 0  # a venue that lets parties move up to the start
    soon = _paid(starts_in=timedelta(minutes=30))
    tomorrow = TimeSlotFactory(
        room=soon.time_slot.room, starts_at=timezone.now() + timedelta(days=1)
    )
    reservation_attendance_set(reservation=soon, attendance="checked_in", actor=None)

    changes.reservation_move(
        reservation=Reservation.objects.get(pk=soon.pk), time_slot_id=tomorrow.pk
    )

    soon.refresh_from_db()
    assert (soon.time_slot_id, soon.attendance, soon.attendance_at) == (tomorrow.pk, "", None)


def test_a_party_checked_in_cannot_cancel_for_a_refund(settings):
    settings.CUSTOMER_CANCEL_HOURS = 0  # a venue that lets parties cancel up to the start
    booking = _paid(starts_in=timedelta(minutes=30))
    reservation_attendance_set(reservation=booking, attendance="checked_in", actor=None)

    with pytest.raises(errors.TooLateToCancel):
        booking_cancel_by_customer(reservation=Reservation.objects.get(pk=booking.pk))

    booking.refresh_from_db()
    assert (booking.status, booking.attendance) == ("paid", "checked_in")


def test_the_booking_page_offers_no_refund_to_a_party_already_checked_in(client, settings):
    settings.CUSTOMER_CANCEL_HOURS = 0
    booking = _paid(starts_in=timedelta(minutes=30))
    before = client.get(f"/reservations/{booking.token}/").content.decode()
    reservation_attendance_set(reservation=booking, attendance="checked_in", actor=None)

    after = client.get(f"/reservations/{booking.token}/").content.decode()

    assert "Cancel booking" in before
    assert "Cancel booking" not in after
