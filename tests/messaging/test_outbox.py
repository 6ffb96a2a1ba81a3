"""
The outbox: what each change queues in its own transaction, what it reads, how it is delivered.

Delivery goes through a real SMTP server (``mail_server``) where it matters.
Time is injected (``now``) wherever the clock decides; the real-time wiring
with a running scheduler is in ``test_delivery.py``.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import icalendar
import pytest
from django.core import mail
from django.core.mail.backends.smtp import EmailBackend
from django.db import transaction
from django.utils import timezone

from apps.messaging import compose, services
from apps.messaging.deadlines import (
    delivery_sweep,
    reminder_due_at,
    reminder_scheduled,
    reminder_sweep,
)
from apps.messaging.models import Message
from apps.payments.models import Payment
from apps.payments.services import payment_confirm
from apps.reservations import services as reservations
from apps.reservations.models import Reservation

from ..factories import TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db

Kind = Message.Kind
Status = Message.Status


def kinds(reservation: Reservation) -> list[str]:
    return list(
        Message.objects.filter(reservation=reservation)
        .order_by("pk")
        .values_list("kind", flat=True)
    )


def deliver(now: datetime | None = None) -> services.Delivered:
    return services.messages_deliver(now=now)


# ---------------------------------------------------------------------------
# What each change queues
# ---------------------------------------------------------------------------


def test_each_change_of_a_reservation_queues_its_message_once():
    held = reserve()
    reservations.reservation_keep_slot(reservation=held)  # changed again: nothing new
    reservations.reservation_pay(reservation=held, payment_reference="PAY-1")
    cancelled = reserve()
    reservations.reservation_cancel(reservation=cancelled)

    assert kinds(held) == [Kind.HOLD_PLACED, Kind.CONFIRMED]
    assert kinds(cancelled) == [Kind.HOLD_PLACED, Kind.CANCELLED]


def test_a_bulk_expiry_queues_a_lapsed_message_for_each_hold_in_its_transaction():
    now = timezone.now()
    lapsed = [reserve(now=now - timedelta(minutes=31)) for _ in range(3)]

    reservations.lapsed_holds_release(cause="sweep", now=now)

    assert [kinds(r) for r in lapsed] == [[Kind.HOLD_PLACED, Kind.HOLD_LAPSED]] * 3


def test_a_change_that_rolls_back_leaves_no_message():
    slot = TimeSlotFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        reserve(slot)
        raise RuntimeError("the request failed after the hold was made")

    assert not Message.objects.exists()


def test_a_refused_payment_tells_its_customer_and_an_unknown_one_writes_to_nobody():
    reservation = reserve()
    reservations.reservation_cancel(reservation=reservation)

    payment_confirm(
        reservation_token=str(reservation.token),
        reference="PAY-LATE",
        amount=reservation.time_slot.room.price,
        currency="EUR",
        source="webhook",
    )
    payment_confirm(
        reservation_token="no-such-token",
        reference="PAY-STRAY",
        amount=Decimal("1.00"),
        currency="EUR",
        source="webhook",
    )

    refund = Message.objects.get(kind=Kind.REFUND_DUE)
    assert refund.reservation == reservation
    assert refund.context["reason"] == Payment.Reason.CANCELLED
    assert Message.objects.filter(kind=Kind.REFUND_DUE).count() == 1


def test_a_payment_applied_late_confirms_the_booking_and_says_it_came_late():
    now = timezone.now()
    reservation = reserve(now=now - timedelta(minutes=31))
    reservations.lapsed_holds_release(cause="sweep", now=now)

    confirmation = payment_confirm(
        reservation_token=str(reservation.token),
        reference="PAY-LATE-OK",
        amount=reservation.time_slot.room.price,
        currency="EUR",
        source="webhook",
        now=now,
    )

    assert confirmation.payment.outcome == Payment.Outcome.APPLIED_LATE
    assert kinds(reservation) == [Kind.HOLD_PLACED, Kind.HOLD_LAPSED, Kind.CONFIRMED]
    deliver()
    # The lapse is old news once the booking is confirmed: only the confirmation goes.
    [email] = mail.outbox
    assert email.subject.startswith("Booked:")
    assert "arrived after your hold had ended, but the time was still free" in email.body


# ---------------------------------------------------------------------------
# What the customer reads
# ---------------------------------------------------------------------------


def test_the_confirmation_has_text_html_and_an_ics_of_the_slot_in_the_venue_zone(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    reservation = reserve()
    reservations.reservation_pay(reservation=reservation, payment_reference="PAY-2")
    message = Message.objects.get(reservation=reservation, kind=Kind.CONFIRMED)
    slot = reservation.time_slot

    email = compose.message_email(message)

    local = timezone.localtime(slot.starts_at)
    assert email.subject == f"Booked: {slot.room.name}, {compose.when(slot.starts_at)}"
    assert f"{local:%H:%M}" in email.subject
    assert "Europe/Berlin" in email.body
    assert email.alternatives[0].mimetype == "text/html"
    assert email.extra_headers["Message-ID"] == message.message_id
    [(name, ics, mimetype)] = email.attachments
    assert (name, mimetype) == ("booking.ics", "text/calendar; method=PUBLISH")
    event = icalendar.Calendar.from_ical(ics).walk("VEVENT")[0]
    assert event["DTSTART"].dt == slot.starts_at
    assert event["DTEND"].dt == slot.ends_at
    assert event["DTSTART"].params["TZID"] == "Europe/Berlin"
    assert str(event["UID"]) == f"reservation-{reservation.token}@127.0.0.1"
    assert slot.room.name in str(event["SUMMARY"])
    assert settings.VENUE_ADDRESS in str(event["LOCATION"])
    assert "BEGIN:VTIMEZONE" in ics


def test_times_across_a_daylight_saving_change_read_in_the_venue_zone(settings):
    # Berlin springs forward at 02:00 on 28 March 2027: a hold placed at
    # 01:50 (CET) for 30 minutes ends at 03:20 (CEST).
    settings.TIME_ZONE = "Europe/Berlin"
    placed = datetime(2027, 3, 28, 0, 50, tzinfo=UTC)  # 01:50 CET
    slot = TimeSlotFactory(starts_at=datetime(2027, 3, 28, 8, 0, tzinfo=UTC))  # 10:00 CEST
    reservation = reserve(slot, now=placed)
    message = Message.objects.get(reservation=reservation, kind=Kind.HOLD_PLACED)

    email = compose.message_email(message, now=placed + timedelta(minutes=1))

    assert "until Sun 28 Mar 2027, 03:20 CEST:" in email.body  # placed at 01:50 CET
    assert "Sun 28 Mar 2027, 10:00 CEST to 11:00 CEST" in email.body
    assert "All times are Europe/Berlin time." in email.body
    assert email.subject.endswith("Sun 28 Mar 2027, 10:00 CEST")


def test_a_lapsed_hold_links_to_its_slot_while_free_and_to_the_room_once_taken():
    now = timezone.now()
    reservation = reserve(now=now - timedelta(minutes=31))
    reservations.lapsed_holds_release(cause="sweep", now=now)
    message = Message.objects.get(reservation=reservation, kind=Kind.HOLD_LAPSED)
    slot = reservation.time_slot

    free = compose.message_email(message, now=now)
    reserve(slot, customer_email="someone.else@example.com", now=now)
    taken = compose.message_email(message, now=now)

    assert f"/rooms/{slot.room.slug}/{slot.key}/reserve/" in free.body
    assert "still free" in free.body
    assert "Someone else has booked this time" in taken.body
    assert f"/rooms/{slot.room.slug}/?date=" in taken.body


def test_a_message_no_longer_needed_is_skipped_not_sent():
    reservation = reserve()
    reservations.reservation_pay(reservation=reservation, payment_reference="PAY-3")

    result = deliver()

    assert (result.sent, result.skipped) == (1, 1)
    assert [m.subject.split(":")[0] for m in mail.outbox] == ["Booked"]
    placed = Message.objects.get(reservation=reservation, kind=Kind.HOLD_PLACED)
    assert placed.status == Status.SKIPPED


# ---------------------------------------------------------------------------
# The reminder, a deadline kind
# ---------------------------------------------------------------------------


def test_the_reminder_falls_due_the_lead_before_the_hold_ends_and_not_for_short_holds(settings):
    settings.HOLD_REMINDER_SECONDS = 600
    now = timezone.now()
    usual = reserve(now=now, hold_seconds=1800)
    short = reserve(now=now, hold_seconds=500)  # shorter than the lead
    hasty = reserve(now=now, hold_seconds=800)  # the reminder 200 s after placing

    assert reminder_due_at(usual) == usual.expires_at - timedelta(seconds=600)
    assert reminder_due_at(short) is None
    assert reminder_due_at(hasty) is None
    reservations.reservation_pay(reservation=usual, payment_reference="PAY-4")
    assert reminder_due_at(usual) is None


def test_the_sweep_queues_each_due_reminder_once_and_the_reconcile_stops_needing_it(settings):
    settings.HOLD_REMINDER_SECONDS = 600
    placed = timezone.now() - timedelta(minutes=25)
    reservation = reserve(now=placed, hold_seconds=1800)  # reminder due 5 minutes ago
    later = reserve(hold_seconds=1800)  # reminder in 20 minutes
    assert dict(reminder_scheduled()).keys() == {reservation.pk, later.pk}

    assert reminder_sweep(None, "sweep") == 1
    assert reminder_sweep(None, "sweep") == 0

    assert kinds(reservation) == [Kind.HOLD_PLACED, Kind.REMINDER]
    assert dict(reminder_scheduled()).keys() == {later.pk}
    deliver()
    [reminder] = [m for m in mail.outbox if m.subject.startswith("Your hold ends")]
    assert f"/reservations/{reservation.token}/" in reminder.body


def test_a_reminder_for_a_hold_kept_longer_is_skipped_and_the_new_end_gets_its_own(settings):
    settings.HOLD_REMINDER_SECONDS = 600
    reservation = reserve(now=timezone.now() - timedelta(minutes=25), hold_seconds=1800)
    reminder_sweep(None, "sweep")
    reservations.reservation_keep_slot(reservation=reservation)

    deliver()

    stale = Message.objects.get(reservation=reservation, kind=Kind.REMINDER)
    assert stale.status == Status.SKIPPED
    assert [due for pk, due in reminder_scheduled() if pk == reservation.pk] == [
        reservation.expires_at - timedelta(seconds=600)
    ]


# ---------------------------------------------------------------------------
# Delivery through a real SMTP server
# ---------------------------------------------------------------------------


def test_messages_reach_the_server_once_with_their_message_id(mail_server):
    reservation = reserve()
    reservations.reservation_pay(reservation=reservation, payment_reference="PAY-5")

    first = deliver()
    again = deliver()

    assert (first.sent, again.handled) == (1, 0)
    [received] = mail_server.received
    confirmed = Message.objects.get(kind=Kind.CONFIRMED)
    assert received["Message-ID"] == confirmed.message_id
    assert received["To"] == reservation.customer_email
    assert confirmed.status == Status.SENT and confirmed.to_email == reservation.customer_email


def test_a_server_that_is_down_delays_every_due_message_and_loses_none(mail_server, settings):
    settings.MESSAGE_RETRY_SECONDS = 10
    mail_server.stop()
    held = [reserve() for _ in range(3)]
    now = timezone.now()

    down = deliver(now)

    assert (down.sent, down.retrying) == (0, 1)  # one attempt tells: the rest wait untried
    waiting = Message.objects.filter(status=Status.PENDING)
    assert waiting.count() == 3
    assert {m.next_attempt_at for m in waiting} == {now + timedelta(seconds=10)}
    assert deliver(now + timedelta(seconds=5)).handled == 0
    mail_server.start()
    assert deliver(now + timedelta(seconds=10)).sent == 3
    assert sorted(m["To"] for m in mail_server.received) == sorted(r.customer_email for r in held)


def test_a_refused_message_is_tried_again_and_given_up_after_the_last_attempt(
    mail_server, settings
):
    settings.MESSAGE_RETRY_SECONDS = 1
    settings.MESSAGE_MAX_ATTEMPTS = 2
    mail_server.refusing = True
    reserve()
    now = timezone.now()

    assert deliver(now).retrying == 1
    assert deliver(now + timedelta(seconds=1)).failed == 1

    message = Message.objects.get()
    assert message.status == Status.FAILED
    assert "451" in message.last_error
    assert services.message_retry(message=message)
    mail_server.refusing = False
    assert deliver(now + timedelta(seconds=1)).sent == 1
    assert len(mail_server.received) == 1


class Crash(BaseException):
    """The process dies: nothing below the send gets to run."""


class CrashAfterSend(EmailBackend):
    """The server accepts the message, then the process dies before it is marked sent."""

    def send_messages(self, email_messages):
        super().send_messages(email_messages)
        raise Crash


def test_a_resend_after_a_crash_carries_the_same_message_id(mail_server, settings):
    settings.EMAIL_BACKEND = f"{__name__}.CrashAfterSend"
    reserve()
    now = timezone.now()
    with pytest.raises(Crash):
        deliver(now)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"

    assert deliver(now).handled == 0  # claimed: in flight, for all anyone knows
    lapse = now + timedelta(seconds=settings.MESSAGE_CLAIM_SECONDS)
    assert deliver(lapse).sent == 1

    first, resent = mail_server.received
    assert first["Message-ID"] == resent["Message-ID"] == Message.objects.get().message_id
    assert Message.objects.get().status == Status.SENT


class BrokenBackend(EmailBackend):
    """Django refuses the message before any server sees it."""

    def send_messages(self, email_messages):
        raise ValueError("Header values may not contain linefeed or carriage return characters")


def test_a_message_django_cannot_send_fails_alone_and_counts_its_attempts(settings, mail_server):
    settings.EMAIL_BACKEND = f"{__name__}.BrokenBackend"
    settings.MESSAGE_MAX_ATTEMPTS = 1
    reserve()

    result = deliver()

    assert result.failed == 1
    message = Message.objects.get()
    assert message.status == Status.FAILED
    assert "linefeed" in message.last_error
    assert message.claimed_until is None


def test_a_message_in_flight_is_not_retried_by_staff():
    reserve()
    message = Message.objects.get()
    now = timezone.now()
    Message.objects.filter(pk=message.pk).update(claimed_until=now + timedelta(seconds=60))

    assert not services.message_retry(message=message, now=now)
    assert services.message_retry(message=message, now=now + timedelta(seconds=61))


def test_with_the_benchmarks_switch_off_the_sweep_delivers_itself(settings):
    settings.SCHEDULER_EXPIRY_JOBS = False  # no jobs written, none would run
    reserve()

    assert delivery_sweep(None, "sweep") == 1

    assert [m.subject.split(":")[0] for m in mail.outbox] == ["Held for you"]
