"""
Messages on the timeline, with a running scheduler, real time and a real SMTP server.

Holds of a few seconds; every wait polls with a deadline.
"""

import time

import icalendar
import pytest

from apps.messaging.models import Message
from apps.payments.services import payment_confirm_price
from apps.reservations import services as reservations
from apps.reservations.models import Reservation
from escape_rooms_backend.scheduler import start_scheduler

from ..conftest import MailServer, arrival, subjects, wait_for
from ..factories import reserve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

HOLD = 6  # seconds
LEAD = 3  # the reminder, seconds before the hold ends


@pytest.fixture
def timeline(settings, mail_server):
    """The scheduler running in this process, reminders ``LEAD`` seconds before a hold ends."""
    settings.HOLD_REMINDER_SECONDS = LEAD
    settings.RESERVATION_HOLD_SECONDS = HOLD
    start_scheduler()
    return mail_server


def test_reserving_then_paying_sends_the_hold_then_the_confirmation_with_an_ics(timeline):
    reservation = reserve(customer_email="ada@example.com", hold_seconds=1800)
    assert wait_for(lambda: timeline.to("ada@example.com"), timeout=5)
    payment_confirm_price(reservation=reservation, reference="PAY-1", source="customer")

    assert wait_for(lambda: len(timeline.to("ada@example.com")) == 2, timeout=5)
    placed, confirmed = timeline.to("ada@example.com")
    slot = reservation.time_slot
    assert placed["Subject"].startswith(f"Held for you: {slot.room.name}")
    assert confirmed["Subject"].startswith(f"Booked: {slot.room.name}")
    assert confirmed.get_body(("plain",)) is not None and confirmed.get_body(("html",)) is not None
    [ics] = [part for part in confirmed.iter_attachments() if part.get_filename() == "booking.ics"]
    event = icalendar.Calendar.from_ical(ics.get_content()).walk("VEVENT")[0]
    assert (event["DTSTART"].dt, event["DTEND"].dt) == (slot.starts_at, slot.ends_at)


def test_an_unpaid_hold_gets_one_reminder_the_lead_before_its_end_then_one_lapsed(timeline):
    reservation = reserve(customer_email="bo@example.com", hold_seconds=HOLD)
    ends = reservation.expires_at.timestamp()

    assert wait_for(lambda: arrival(timeline, "bo@example.com", "Hold ended"), timeout=HOLD + 3)
    reminded = arrival(timeline, "bo@example.com", "Your hold ends")
    assert reminded is not None, subjects(timeline, "bo@example.com")
    assert 0 <= reminded - (ends - LEAD) < 1.0
    time.sleep(1)  # anything doubled would have come by now
    assert subjects(timeline, "bo@example.com") == [
        "Held for you",
        "Your hold ends at",
        "Hold ended, not booked",
    ]


def test_a_hold_paid_or_cancelled_before_the_lead_gets_no_reminder(timeline):
    paid = reserve(customer_email="cy@example.com", hold_seconds=HOLD)
    cancelled = reserve(customer_email="di@example.com", hold_seconds=HOLD)
    placed = lambda: timeline.to("cy@example.com") and timeline.to("di@example.com")  # noqa: E731
    assert wait_for(placed, timeout=3)
    payment_confirm_price(reservation=paid, reference="PAY-2", source="customer")
    reservations.reservation_cancel(reservation=cancelled)
    # Past the moment the reminders would have come, and the holds' ends.
    past_end = paid.expires_at.timestamp() + 1
    wait_for(lambda: time.time() >= past_end, timeout=HOLD + 2, interval=0.1)

    assert subjects(timeline, "cy@example.com") == ["Held for you", "Booked"]
    assert subjects(timeline, "di@example.com") == ["Held for you", "Cancelled"]
    assert not Message.objects.filter(kind=Message.Kind.REMINDER).exists()


def test_keeping_the_slot_moves_the_reminder_with_the_hold(timeline):
    reservation = reserve(customer_email="ed@example.com", hold_seconds=HOLD)
    first_due = reservation.expires_at.timestamp() - LEAD
    reservations.reservation_keep_slot(reservation=reservation)  # the hold now ends HOLD later
    moved_due = reservation.expires_at.timestamp() - LEAD

    assert wait_for(lambda: arrival(timeline, "ed@example.com", "Your hold ends"), timeout=2 * HOLD)
    reminded = arrival(timeline, "ed@example.com", "Your hold ends")
    assert reminded - first_due > HOLD - 1
    assert 0 <= reminded - moved_due < 1.0
    payment_confirm_price(reservation=reservation, reference="PAY-3", source="customer")
    assert wait_for(lambda: len(timeline.to("ed@example.com")) == 3, timeout=5)
    assert subjects(timeline, "ed@example.com") == ["Held for you", "Your hold ends at", "Booked"]


def test_with_the_mail_server_down_while_holds_lapse_every_message_arrives_once_it_is_back(
    start_worker, settings
):
    server = MailServer()  # not started: down
    worker_settings = {
        "EMAIL_URL": server.url,
        "MESSAGE_RETRY_SECONDS": "0.5",
        "MESSAGE_RETRY_MAX_SECONDS": "1",
        "EMAIL_TIMEOUT": "2",
    }
    worker = start_worker(**worker_settings)
    held = [reserve(customer_email=f"guest{i}@example.com", hold_seconds=1) for i in range(10)]
    expired = lambda: not Reservation.objects.filter(status=Reservation.Status.PENDING).exists()  # noqa: E731
    assert wait_for(expired, timeout=5)
    assert wait_for(lambda: worker.log().count("mail server is unreachable") >= 2, timeout=5)
    # Nothing lost while it is down: every message waits (10 held, 10 lapsed).
    assert Message.objects.filter(status=Message.Status.PENDING).count() == 20

    # The runner restarts while the server is down: nothing changes.
    worker.terminate()
    worker.wait(timeout=10)
    restarted = start_worker(**worker_settings)
    server.start()
    try:
        back = time.monotonic()
        assert wait_for(lambda: len(server.received) >= 10, timeout=10), restarted.log()
        delivered_in = time.monotonic() - back
        time.sleep(1)  # anything doubled would have come by now

        assert len(server.received) == 10
        for reservation in held:
            # The hold lapsed before its message went out: only the lapse is news.
            assert subjects(server, reservation.customer_email) == ["Hold ended, not booked"]
        sent = Message.objects.filter(status=Message.Status.SENT)
        assert {m["Message-ID"] for m in server.received} == set(
            sent.values_list("message_id", flat=True)
        )
        assert Message.objects.filter(status=Message.Status.SKIPPED).count() == 10  # held
        assert not Message.objects.filter(status=Message.Status.PENDING).exists()
        print(f"delivered 10 of 10 in {delivered_in:.2f} s after the server came back")
    finally:
        server.stop()


def test_a_slow_mail_server_never_holds_an_expiry_back(timeline):
    # Each message takes the server 2.5 s while customers keep reserving: the
    # deliveries wait on it in threads of their own, and the hold still ends
    # on time.
    timeline.delay = 2.5
    first = reserve(customer_email="first@example.com", hold_seconds=2)
    for i in range(30):
        reserve(customer_email=f"busy{i}@example.com", hold_seconds=60)
        time.sleep(0.05)

    assert wait_for(lambda: released(first), timeout=5)
    assert 0 <= (first.cancelled_at - first.expires_at).total_seconds() < 0.5
    assert Message.objects.filter(status=Message.Status.PENDING).count() > 20  # the server's pace


def released(reservation: Reservation) -> bool:
    reservation.refresh_from_db()
    return reservation.status == Reservation.Status.CANCELLED
