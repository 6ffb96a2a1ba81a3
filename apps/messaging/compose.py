"""
A queued message as an email: subject, plain text, HTML and attachments.

Rendered when it is sent, from the reservation as it then stands, every time
in the venue's zone (``TIME_ZONE``), named. A message the reservation no
longer needs (the hold placed, when it has been paid since) renders as
``None``: the outbox marks it skipped.
"""

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import icalendar  # type: ignore[import-untyped]  # ships no type hints
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from apps.payments.models import Payment, ProviderPayment
from apps.reservations import offers
from apps.reservations.models import Reservation, ReservationEvent, WaitingEntry
from apps.reservations.selectors import reservation_moves
from apps.rooms.models import TimeSlot

from .models import Message

Kind = Message.Kind
Status = Reservation.Status
Reason = Reservation.CancellationReason
Entry = WaitingEntry.Status

# Short subjects that name the room and the time: "{room}, {when}".
SUBJECTS = {
    Kind.HOLD_PLACED: "Held for you: {room}, {when}",
    Kind.REMINDER: "Your hold ends at {ends}: {room}, {when}",
    Kind.CONFIRMED: "Booked: {room}, {when}",
    Kind.HOLD_LAPSED: "Hold ended, not booked: {room}, {when}",
    Kind.CANCELLED: "Cancelled: {room}, {when}",
    Kind.REFUND_DUE: "Your payment will be refunded: {room}, {when}",
    Kind.BOOKINGS: "Your bookings at {venue}",
    Kind.WAITING: "On the waiting list: {room}, {when}",
    Kind.OFFER: "Yours if you pay by {ends}: {room}, {when}",
    Kind.SLOT_BOOKED: "Booked by another party: {room}, {when}",
    Kind.SLOT_FREE: "Free now, first come first served: {room}, {when}",
    Kind.SLOT_CLOSED: "Closed at this time: {room}, {when}",
    Kind.MOVED: "Moved to {when}: {room}",
}
OFFER_LAPSED_SUBJECT = "Offer ended, not booked: {room}, {when}"
# A hold (or an offer) ended because the venue closed the room then.
CLOSED_SUBJECT = "Closed at this time, not booked: {room}, {when}"
ICS_NAME = "booking.ics"


def absolute(path: str) -> str:
    """``path`` on the public site (``SITE_URL``): links in messages leave the site."""
    return urljoin(settings.SITE_URL, path)


def local(at: datetime) -> datetime:
    return timezone.localtime(at)


def when(at: datetime) -> str:
    """``Fri 4 Dec 2026, 19:00 CET``: in the venue's zone, named, even in the hour clocks repeat."""
    at = local(at)
    return f"{at:%a} {at.day} {at:%b %Y}, {clock(at)}"


def clock(at: datetime) -> str:
    """``19:00 CET``, in the venue's zone."""
    at = local(at)
    return f"{at:%H:%M} {at.tzname()}"


def duration(seconds: int) -> str:
    """A length of time in words: ``45 seconds``, ``15 minutes``, ``1 minute 30 seconds``."""
    minutes, seconds = divmod(seconds, 60)
    parts = [
        f"{n} {unit}{'' if n == 1 else 's'}"
        for n, unit in ((minutes, "minute"), (seconds, "second"))
        if n
    ]
    return " ".join(parts) or "0 seconds"


def message_email(message: Message, now: datetime | None = None) -> EmailMultiAlternatives | None:
    """
    Render ``message`` as of ``now`` (default: the clock), or ``None`` when no longer needed.

    Raises what the templates raise; the outbox counts that as a failed attempt.
    """
    now = now or timezone.now()
    if message.kind == Kind.BOOKINGS:
        return _bookings_email(message, now)
    if message.waiting_entry is not None:
        return _waiting_email(message, message.waiting_entry, now)
    reservation = message.reservation
    if reservation is None or not _still_needed(message, reservation, now):
        return None
    slot = reservation.time_slot
    context = _reservation_context(message, reservation, slot, now)
    subject = SUBJECTS[Kind(message.kind)]
    if message.kind == Kind.HOLD_LAPSED and reservation.is_offer:
        subject = OFFER_LAPSED_SUBJECT
    if message.kind == Kind.CANCELLED and reservation.cancellation_reason == Reason.CLOSED:
        subject = CLOSED_SUBJECT
    subject = subject.format(**context["subject"])
    email = _email(message, subject, reservation.customer_email, context)
    if message.kind in (Kind.CONFIRMED, Kind.MOVED):
        email.attach(ICS_NAME, booking_ics(reservation), "text/calendar; method=PUBLISH")
    return email


def _still_needed(message: Message, reservation: Reservation, now: datetime) -> bool:
    holding = reservation.status == Status.PENDING and reservation.expires_at > now
    if message.kind in (Kind.HOLD_PLACED, Kind.OFFER):
        return holding
    if message.kind == Kind.REMINDER:
        # For the hold end it was queued for: a hold kept longer has its own.
        ends = parse_datetime(message.context.get("expires_at", ""))
        return holding and ends == reservation.expires_at
    if message.kind == Kind.CONFIRMED:
        return reservation.status == Status.PAID
    if message.kind == Kind.HOLD_LAPSED:
        # Paid late meanwhile: the confirmation says all there is to say.
        return reservation.status != Status.PAID
    if message.kind == Kind.MOVED:
        # Still on the time it was moved to: a later move has its own message.
        on_it = reservation.time_slot_id == message.context.get("to_slot")
        return on_it and (holding or reservation.status == Status.PAID)
    return True


def _reservation_context(
    message: Message, reservation: Reservation, slot: TimeSlot, now: datetime
) -> dict[str, Any]:
    room = slot.room
    page = absolute(reverse("booking:reservation", args=[reservation.token]))
    slot_offered = offers.slot_gone_to_waiting_list(slot.pk, now=now, other_than=reservation.pk)
    holders = Reservation.objects.holding(now).filter(time_slot=slot).exclude(pk=reservation.pk)
    slot_free = (
        slot.starts_at > now and room.is_active and not slot_offered and not holders.exists()
    )
    day = local(slot.starts_at).date().isoformat()
    return {
        "message": message,
        "reservation": reservation,
        # Frozen when the slot was held: what the customer pays, whatever the room's price now.
        "price": f"{reservation.price} {reservation.currency}",
        "room": room,
        "slot": slot,
        "venue_name": settings.VENUE_NAME,
        "venue_address": settings.VENUE_ADDRESS,
        "zone": timezone.get_current_timezone_name(),
        "starts": when(slot.starts_at),
        "ends_time": clock(slot.ends_at),
        "hold_ends": when(reservation.expires_at),
        "hold_ends_time": clock(reservation.expires_at),
        "page_url": page,
        "paid_late": (
            reservation.paid_at is not None and reservation.paid_at > reservation.expires_at
        ),
        "slot_free": slot_free,
        "slot_offered": slot_offered,
        "rebook_url": absolute(reverse("booking:reserve", args=[room.slug, slot.key])),
        "room_url": absolute(f"{reverse('booking:room', args=[room.slug])}?date={day}"),
        "refund": message.context,
        "closure_reason": _closure_reason(reservation),
        "refund_payment": _refund_of(reservation),
        "moved_from": _moved_from(message),
        "subject": {
            "room": room.name,
            "when": when(slot.starts_at),
            "ends": clock(reservation.expires_at),
            "venue": settings.VENUE_NAME,
        },
    }


def _closure_reason(reservation: Reservation) -> str:
    """Why the venue closed the slot, for a hold a closure ended: its event's detail."""
    if reservation.cancellation_reason != Reason.CLOSED:
        return ""
    event = reservation.events.filter(cause=ReservationEvent.Cause.CLOSURE).last()
    return event.detail if event is not None else ""


def _refund_of(reservation: Reservation) -> dict[str, Any] | None:
    """The refund of a paid booking that was cancelled: amount, and whether a provider makes it."""
    if reservation.status != Status.CANCELLED or reservation.paid_at is None:
        return None
    payment = (
        Payment.objects.filter(reservation=reservation, refund_requested_at__isnull=False)
        .order_by("-refund_requested_at")
        .first()
    )
    if payment is None:
        return None
    return {
        "amount": payment.amount,
        "currency": payment.currency,
        "by_provider": ProviderPayment.objects.filter(payment=payment).exists(),
    }


def _moved_from(message: Message) -> str:
    at = parse_datetime(message.context.get("from", "")) if message.kind == Kind.MOVED else None
    return when(at) if at is not None else ""


def _waiting_email(
    message: Message, entry: WaitingEntry, now: datetime
) -> EmailMultiAlternatives | None:
    slot = entry.time_slot
    if message.kind in (Kind.WAITING, Kind.SLOT_BOOKED) and entry.status != Entry.WAITING:
        return None  # offered since, or left: what they were to be told has passed
    if message.kind in (Kind.SLOT_FREE, Kind.SLOT_CLOSED) and slot.starts_at <= now:
        return None
    room = slot.room
    context = {
        "message": message,
        "entry": entry,
        "place": offers.waiting_place(entry),
        "room": room,
        "slot": slot,
        "reservation": entry,  # the slot's table reads the party size from it
        # Not held yet: the room's price for the party now; an offer freezes it.
        "price": f"{room.price_for(entry.party_size)} {room.currency}",
        "venue_name": settings.VENUE_NAME,
        "venue_address": settings.VENUE_ADDRESS,
        "zone": timezone.get_current_timezone_name(),
        "starts": when(slot.starts_at),
        "ends_time": clock(slot.ends_at),
        "offer_length": duration(settings.WAITLIST_OFFER_SECONDS),
        "entry_url": absolute(reverse("booking:waiting", args=[entry.token])),
        "reserve_url": absolute(reverse("booking:reserve", args=[room.slug, slot.key])),
        "room_url": absolute(
            f"{reverse('booking:room', args=[room.slug])}?date={local(slot.starts_at).date()}"
        ),
        "closure_reason": message.context.get("reason", ""),
    }
    subject = SUBJECTS[Kind(message.kind)].format(room=room.name, when=when(slot.starts_at))
    return _email(message, subject, entry.customer_email, context)


def _bookings_email(message: Message, now: datetime) -> EmailMultiAlternatives | None:
    current = list(
        Reservation.objects.holding(now)
        .filter(customer_email__iexact=message.to_email, time_slot__starts_at__gt=now)
        .select_related("time_slot__room")
        .order_by("time_slot__starts_at")
    )
    if not current:
        return None  # nothing to tell; the request's answer was the same
    bookings = [
        {
            "room": r.time_slot.room.name,
            "starts": when(r.time_slot.starts_at),
            "status": r.get_status_display(),
            "url": absolute(reverse("booking:reservation", args=[r.token])),
        }
        for r in current
    ]
    context = {
        "message": message,
        "bookings": bookings,
        "venue_name": settings.VENUE_NAME,
        "venue_address": settings.VENUE_ADDRESS,
        "zone": timezone.get_current_timezone_name(),
    }
    subject = SUBJECTS[Kind.BOOKINGS].format(venue=settings.VENUE_NAME)
    return _email(message, subject, message.to_email, context)


def _email(
    message: Message, subject: str, to: str, context: dict[str, Any]
) -> EmailMultiAlternatives:
    template = f"messaging/{message.kind}"
    email = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string(f"{template}.txt", context),
        to=[to],
        headers={"Message-ID": message.message_id},
    )
    email.attach_alternative(render_to_string(f"{template}.html", context), "text/html")
    return email


def booking_ics(reservation: Reservation) -> bytes:
    """
    The booking as an iCalendar file: one event in the venue's zone, with its ``VTIMEZONE``.

    The UID is stable per reservation, so a calendar that imports it twice
    keeps one event; its ``SEQUENCE`` counts the moves to another time, so
    the file of a move replaces the one before.
    """
    slot = reservation.time_slot
    calendar = icalendar.Calendar()
    calendar.add("prodid", f"-//{settings.VENUE_NAME}//escape-rooms//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "PUBLISH")
    event = icalendar.Event()
    event.add("uid", f"reservation-{reservation.token}@{_uid_domain()}")
    # Each move is a new version of the one event: calendars replace the older.
    event.add("sequence", reservation_moves(reservation.pk))
    event.add("dtstamp", timezone.now())
    event.add("dtstart", ics_time(slot.starts_at))
    event.add("dtend", ics_time(slot.ends_at))
    event.add("summary", f"{slot.room.name} at {settings.VENUE_NAME}")
    event.add("location", f"{settings.VENUE_NAME}, {settings.VENUE_ADDRESS}")
    event.add(
        "description",
        f"Party of {reservation.party_size}. Your booking: "
        + absolute(reverse("booking:reservation", args=[reservation.token])),
    )
    calendar.add_component(event)
    calendar.add_missing_timezones()
    return calendar.to_ical()


def ics_time(at: datetime) -> datetime:
    """
    ``at`` as the ``.ics`` writes it: venue time with its ``TZID``, or UTC where that cannot say it.

    iCalendar reads a local time that the clocks repeat as its first
    occurrence: a time in the second one (``fold=1``) is written in UTC.
    """
    venue = local(at)
    if venue.fold and venue.replace(fold=0).utcoffset() != venue.utcoffset():
        return at.astimezone(UTC)
    return venue


def _uid_domain() -> str:
    return urlsplit(settings.SITE_URL).hostname or "localhost"
