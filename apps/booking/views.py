"""
The customer's booking pages: interfaces over the reservation services.

Each view parses its input, calls one service and presents the result; the
rules (who may book, pay, cancel or keep a slot, and until when) live in
``apps.reservations.services``, and those of "find my booking" (who is sent
which links, how often) in ``apps.messaging.services``.
"""

import contextlib
import re
import secrets
import uuid
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from apps.messaging.services import FIND_BOOKING_SENT, TooManyRequests, bookings_link_request
from apps.payments.models import ProviderPayment
from apps.payments.services import (
    booking_cancel_by_customer,
    payment_confirm_price,
    provider_authorises,
)
from apps.reservations import changes, errors, offers, services, waitlist
from apps.reservations.models import Reservation, WaitingEntry
from apps.reservations.selectors import reservation_by_token, waiting_entry_by_token
from apps.rooms.models import SLOT_KEY_FORMAT, Room, TimeSlot
from apps.rooms.selectors import room_list_active, timeslot_list_for_day, venue_day_bounds
from config.client_address import client_address

from .forms import FindBookingForm, ReserveForm

DAYS_SHOWN = 14
SLOT_KEY_PATTERN = re.compile(r"[0-9]{8}T[0-9]{6}Z", re.ASCII)
SESSION_KEY = "booking_reservations"
ISSUED_KEYS = "booking_form_keys"
REMEMBERED = 10
REMEMBERED_KEYS = 20
SLOT_PASSED_MESSAGE = "This time has already started or can no longer be booked; pick another."
SLOT_CLOSED_MESSAGE = "The venue is closed at this time; pick another."
OUT_OF_RANGE_MESSAGE = "Pick a day within the next two weeks."
SLOT_TAKEN_MESSAGE = "Sorry, this slot was just taken by someone else. Here are the current slots."
SLOT_FREE_MESSAGE = "Good news: no one holds this time any more. Reserve it now."
LEFT_MESSAGE = "You have left the waiting list."
MOVED_MESSAGE = "Your booking is moved to {when}. We have emailed you the new time."
CANCELLED_PAID_MESSAGE = "Your booking is cancelled. Your payment will be refunded in full."
WAITING_KEY = "booking_waiting"
PARTY_FIELDS = ("customer_name", "customer_email", "customer_phone", "party_size")


def slot_key(slot: TimeSlot) -> str:
    """The slot's start in UTC, its public name in URLs (no sequential ids in public)."""
    return slot.key


def _slot_from_key(room: Room, key: str) -> TimeSlot:
    if not SLOT_KEY_PATTERN.fullmatch(key):
        raise Http404
    try:
        starts_at = datetime.strptime(key, SLOT_KEY_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise Http404 from None
    # Within the second: a start with microseconds has the same key.
    slots = TimeSlot.objects.select_related("room").filter(
        room=room, starts_at__gte=starts_at, starts_at__lt=starts_at + timedelta(seconds=1)
    )
    slot = slots.first()
    if slot is None:
        raise Http404
    return slot


def _reservation(token: str) -> Reservation:
    reservation = reservation_by_token(token)
    if reservation is None:
        raise Http404
    return reservation


def _room_url(room: Room, day: date | None = None) -> str:
    url = reverse("booking:room", args=[room.slug])
    return f"{url}?date={day.isoformat()}" if day else url


def rooms(request: HttpRequest) -> HttpResponse:
    return render(request, "booking/rooms.html", {"rooms": room_list_active()})


def room(request: HttpRequest, slug: str) -> HttpResponse:
    room = get_object_or_404(room_list_active(), slug=slug)
    now = timezone.now()
    today = timezone.localdate(now)
    days = [today + timedelta(days=offset) for offset in range(DAYS_SHOWN)]
    try:
        day = date.fromisoformat(request.GET["date"]) if "date" in request.GET else None
    except ValueError:
        day = today - timedelta(days=1)  # not a date: out of range below
    if day is None:
        day = _first_day_with_room(room, days, now)
    if day not in days:
        messages.info(request, OUT_OF_RANGE_MESSAGE)
        return redirect(_room_url(room))
    start, end = venue_day_bounds(day)
    # A lapsed hold that parties wait for goes to the first of them now, not
    # when its job runs: the page shows the offer.
    waitlist.waiting_lists_refresh(
        TimeSlot.objects.filter(room=room, starts_at__gte=start, starts_at__lt=end).values_list(
            "pk", flat=True
        ),
        now=now,
    )
    slots = list(timeslot_list_for_day(room=room, day=day, now=now))
    holders = {
        r.time_slot_id: r for r in Reservation.objects.holding(now).filter(time_slot__in=slots)
    }
    rows = []
    for slot in slots:
        holder = holders.get(slot.pk)
        held_until = None
        if slot.available:  # type: ignore[attr-defined]  # annotated by with_availability
            state = "available"
        elif slot.starts_at <= now:
            state = "started"
        elif slot.closed:  # type: ignore[attr-defined]  # annotated by with_availability
            state = "closed"
        elif holder is None or holder.is_offer and holder.status == Reservation.Status.PENDING:
            state = "offered"  # or about to be: a lapsed hold that parties wait for
        elif holder.status == Reservation.Status.PENDING:
            state, held_until = "held", holder.expires_at
        else:
            state = "booked"
        rows.append({"slot": slot, "state": state, "key": slot_key(slot), "held_until": held_until})
    return render(
        request,
        "booking/room.html",
        {"room": room, "days": days, "day": day, "rows": rows, "now": now},
    )


def _first_day_with_room(room: Room, days: list[date], now: datetime) -> date:
    """The first of ``days`` with a free slot, so that the page opens on something to book."""
    first, _ = venue_day_bounds(days[0])
    _, last = venue_day_bounds(days[-1])
    starts_at = (
        TimeSlot.objects.with_availability(now)
        .filter(room=room, available=True, starts_at__gte=first, starts_at__lt=last)
        .order_by("starts_at")
        .values_list("starts_at", flat=True)
        .first()
    )
    return days[0] if starts_at is None else timezone.localdate(starts_at)


@require_http_methods(["GET", "POST"])
@never_cache
def reserve(request: HttpRequest, slug: str, key: str) -> HttpResponse:
    room = get_object_or_404(room_list_active(), slug=slug)
    slot = _slot_from_key(room, key)
    local_day = timezone.localdate(slot.starts_at)
    if request.method == "POST":
        form = ReserveForm(request.POST, room=room)
        if form.is_valid():
            data = form.cleaned_data
            try:
                reservation = services.reservation_create(
                    time_slot_id=slot.pk,
                    request_key=_issued_key(request, data["request_key"]),
                    client_address=client_address(request),
                    **_party(data),
                )
            except errors.InvalidReservation as invalid:
                _add_errors(form, invalid)
            except errors.SlotNotFound:
                raise Http404 from None
            except errors.SlotClosed:
                messages.error(request, SLOT_CLOSED_MESSAGE)
                return redirect(_room_url(room, local_day))
            except errors.TooManyHolds as refused:
                form.add_error(None, refused.message)
                response = render(
                    request,
                    "booking/reserve.html",
                    {"room": room, "slot": slot, "form": form, "back": _room_url(room, local_day)},
                    status=429,
                )
                response["Retry-After"] = str(refused.retry_after)
                return response
            except errors.SlotUnavailable:
                messages.error(request, SLOT_PASSED_MESSAGE)
                return redirect(_room_url(room, local_day))
            except errors.SlotTaken:
                return _taken(request, room, slot)
            else:
                _remember(request, reservation)
                return redirect("booking:reservation", token=reservation.token)
    else:
        now = timezone.now()
        if slot.starts_at <= now:
            messages.error(request, SLOT_PASSED_MESSAGE)
            return redirect(_room_url(room, local_day))
        shown = TimeSlot.objects.with_availability(now).get(pk=slot.pk)
        if shown.closed:  # annotated by with_availability
            messages.error(request, SLOT_CLOSED_MESSAGE)
            return redirect(_room_url(room, local_day))
        if not shown.available:
            return _taken(request, room, slot)
        form = ReserveForm(room=room, initial={"request_key": _issue_key(request)})
    return render(
        request,
        "booking/reserve.html",
        {"room": room, "slot": slot, "form": form, "back": _room_url(room, local_day)},
        status=400 if form.errors else 200,
    )


def _taken(request: HttpRequest, room: Room, slot: TimeSlot) -> HttpResponse:
    """The slot is held: by this browser (show its hold), or by someone else (say so)."""
    mine = Reservation.objects.holding(timezone.now()).filter(
        time_slot=slot, token__in=request.session.get(SESSION_KEY, [])
    )
    if (own := mine.first()) is not None:
        messages.info(request, "This slot is already yours.")
        return redirect("booking:reservation", token=own.token)
    messages.error(request, SLOT_TAKEN_MESSAGE)
    return redirect(_room_url(room, timezone.localdate(slot.starts_at)))


def _party(data: dict) -> dict:
    """Who reserves or waits, from the form: the fields the services take about the party."""
    return {name: data[name] for name in PARTY_FIELDS}


def _add_errors(form: ReserveForm, invalid: errors.InvalidReservation) -> None:
    for field, problems in invalid.fields.items():
        for problem in problems:
            form.add_error(field if field in form.fields else None, problem)


def _issue_key(request: HttpRequest) -> str:
    """A submission key for a new form, remembered as issued to this browser."""
    key = str(uuid.uuid4())
    issued = [key, *request.session.get(ISSUED_KEYS, [])][:REMEMBERED_KEYS]
    request.session[ISSUED_KEYS] = issued
    return key


def _issued_key(request: HttpRequest, key: str) -> uuid.UUID | None:
    """The form's key if this browser was given it; otherwise none (a new submission)."""
    if key not in request.session.get(ISSUED_KEYS, []):
        return None
    return uuid.UUID(key)


def _remember(request: HttpRequest, reservation: Reservation) -> None:
    """Keep this browser's latest reservations in its session (tokens only)."""
    tokens = [str(reservation.token), *request.session.get(SESSION_KEY, [])]
    request.session[SESSION_KEY] = list(dict.fromkeys(tokens))[:REMEMBERED]


@never_cache
def reservation(request: HttpRequest, token: str) -> HttpResponse:
    reservation = _reservation(token)
    now = timezone.now()
    status = reservation.current_status(now)
    reason = reservation.current_cancellation_reason(now)
    slot = reservation.time_slot
    return render(
        request,
        "booking/reservation.html",
        {
            "reservation": reservation,
            "slot": slot,
            "room": slot.room,
            "status": status,
            "reason": reason,
            "seconds_left": reservation.seconds_left(now),
            "warn_seconds": 5 * 60,
            "extensions_left": 0
            if reservation.is_offer
            else max(0, settings.RESERVATION_MAX_EXTENSIONS - reservation.extensions),
            "hold_length": _duration(settings.RESERVATION_HOLD_SECONDS),
            "room_url": _room_url(slot.room, timezone.localdate(slot.starts_at)),
            "card_payment": _card_payment() if status == Reservation.Status.PENDING else None,
            "cancel_until": services.cancel_deadline(slot.starts_at),
            "move_until": changes.move_deadline(slot.starts_at),
            "can_cancel_paid": status == Reservation.Status.PAID
            and services.customer_may_cancel_paid(
                starts_at=slot.starts_at, attendance=reservation.attendance, now=now
            ),
            "can_move": status in (Reservation.Status.PENDING, Reservation.Status.PAID)
            and not (status == Reservation.Status.PENDING and reservation.is_offer)
            and now <= changes.move_deadline(slot.starts_at),
            "slot_offered": status == Reservation.Status.CANCELLED
            and offers.slot_gone_to_waiting_list(slot.pk, now=now, other_than=reservation.pk),
            "refund_by_provider": reservation.paid_at is not None
            and _taken_by_provider(reservation),
        },
    )


def _taken_by_provider(reservation: Reservation) -> bool:
    """Whether a provider took the booking's money (and so refunds it), not the venue's staff."""
    captured = ProviderPayment.Outcome.CAPTURED
    return ProviderPayment.objects.filter(reservation=reservation, outcome=captured).exists()


def _card_payment() -> dict | None:
    """What the page needs to take a card through the provider, or ``None`` (simulated)."""
    if not provider_authorises():
        return None
    return {"publishable_key": settings.STRIPE_PUBLISHABLE_KEY, "js_url": settings.STRIPE_JS_URL}


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min"


def _act(request: HttpRequest, token: str, change, done: str) -> HttpResponse:
    reservation = _reservation(token)
    try:
        change(reservation)
    except errors.ReservationError as refused:
        messages.error(request, refused.message)
    else:
        if done:
            messages.success(request, done)
    return redirect("booking:reservation", token=reservation.token)


@require_POST
def pay(request: HttpRequest, token: str) -> HttpResponse:
    # Stands in for a payment provider: the customer starts paying (the
    # payment window), then the provider confirms the price at once.
    def simulated_payment(reservation: Reservation) -> None:
        if reservation.status == Reservation.Status.PENDING:
            # A lapsed hold refuses the checkout; a late payment may still apply.
            with contextlib.suppress(errors.HoldExpired):
                services.reservation_checkout(reservation=reservation)
        payment_confirm_price(
            reservation=reservation,
            reference=f"SIM-{secrets.token_hex(6).upper()}",
            source="customer",
        )

    return _act(request, token, simulated_payment, "")


@require_POST
def cancel(request: HttpRequest, token: str) -> HttpResponse:
    # A hold, or a paid booking with its refund: the service tells them apart.
    paid = _reservation(token).status == Reservation.Status.PAID
    return _act(
        request,
        token,
        lambda r: booking_cancel_by_customer(reservation=r),
        CANCELLED_PAID_MESSAGE if paid else "",
    )


@require_http_methods(["GET", "POST"])
@never_cache
def move(request: HttpRequest, token: str) -> HttpResponse:
    """
    Change time: the room's free slots of a day (GET), then move to the one chosen (POST).

    The POST names the slot by its key (``slot``); the rules are
    ``changes.reservation_move``'s.
    """
    reservation = _reservation(token)
    room = reservation.time_slot.room
    if request.method == "POST":
        key = request.POST.get("slot", "")
        try:
            target = _slot_from_key(room, key)
        except Http404:
            messages.error(request, SLOT_PASSED_MESSAGE)
            return redirect("booking:move", token=reservation.token)
        try:
            changes.reservation_move(reservation=reservation, time_slot_id=target.pk)
        except (errors.SlotTaken, errors.SlotUnavailable) as refused:
            messages.error(request, refused.message)
            target_day = timezone.localdate(target.starts_at).isoformat()
            url = reverse("booking:move", args=[reservation.token])
            return redirect(f"{url}?date={target_day}")
        except errors.ReservationError as refused:
            messages.error(request, refused.message)
            return redirect("booking:reservation", token=reservation.token)
        messages.success(request, MOVED_MESSAGE.format(when=_venue_time(target.starts_at)))
        return redirect("booking:reservation", token=reservation.token)
    now = timezone.now()
    if reservation.current_status(now) == Reservation.Status.CANCELLED:
        return redirect("booking:reservation", token=reservation.token)  # nothing to move
    today = timezone.localdate(now)
    days = [today + timedelta(days=offset) for offset in range(DAYS_SHOWN)]
    booked_day = timezone.localdate(reservation.time_slot.starts_at)
    try:
        day = date.fromisoformat(request.GET["date"]) if "date" in request.GET else booked_day
    except ValueError:
        day = booked_day
    if day not in days:
        day = today
    slots = [
        slot
        for slot in timeslot_list_for_day(room=room, day=day, now=now)
        # Available: not started, not held, not closed (with_availability).
        if slot.available  # type: ignore[attr-defined]
        and slot.pk != reservation.time_slot_id
    ]
    return render(
        request,
        "booking/move.html",
        {
            "reservation": reservation,
            "room": room,
            "slot": reservation.time_slot,
            "days": days,
            "day": day,
            "slots": slots,
            "move_until": changes.move_deadline(reservation.time_slot.starts_at),
            "too_late": now > changes.move_deadline(reservation.time_slot.starts_at),
        },
    )


def _venue_time(at: datetime) -> str:
    at = timezone.localtime(at)
    return f"{at:%A} {at.day} {at:%B %Y}, {at:%H:%M} {at.tzname()}"


@require_POST
def keep(request: HttpRequest, token: str) -> HttpResponse:
    return _act(
        request,
        token,
        lambda r: services.reservation_keep_slot(reservation=r),
        "Your slot is held for longer.",
    )


@require_http_methods(["GET", "POST"])
@never_cache
def find(request: HttpRequest) -> HttpResponse:
    """
    Find my booking: send an address the links to its current bookings.

    Every accepted address gets the same answer, known or not; the message
    is sent only if it has bookings (decided when it is delivered).
    """
    if request.method == "POST":
        form = FindBookingForm(request.POST)
        if form.is_valid():
            try:
                bookings_link_request(
                    email=form.cleaned_data["email"], client_address=client_address(request)
                )
            except TooManyRequests as refused:
                form.add_error(None, refused.message)
                response = render(request, "booking/find.html", {"form": form}, status=429)
                response["Retry-After"] = str(refused.retry_after)
                return response
            messages.success(request, FIND_BOOKING_SENT)
            return redirect("booking:find")
    else:
        form = FindBookingForm()
    return render(request, "booking/find.html", {"form": form}, status=400 if form.errors else 200)


# ---------------------------------------------------------------------------
# The waiting list
# ---------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@never_cache
def wait(request: HttpRequest, slug: str, key: str) -> HttpResponse:
    """Join a held or booked slot's waiting list."""
    room = get_object_or_404(room_list_active(), slug=slug)
    slot = _slot_from_key(room, key)
    local_day = timezone.localdate(slot.starts_at)
    status = 200
    if request.method == "POST":
        form = ReserveForm(request.POST, room=room)
        if form.is_valid():
            data = form.cleaned_data
            try:
                entry = waitlist.waiting_join(
                    time_slot_id=slot.pk,
                    request_key=_issued_key(request, data["request_key"]),
                    client_address=client_address(request),
                    **_party(data),
                )
            except errors.InvalidReservation as invalid:
                _add_errors(form, invalid)
            except errors.SlotNotFound:
                raise Http404 from None
            except errors.SlotClosed:
                messages.error(request, SLOT_CLOSED_MESSAGE)
                return redirect(_room_url(room, local_day))
            except errors.SlotUnavailable:
                messages.error(request, SLOT_PASSED_MESSAGE)
                return redirect(_room_url(room, local_day))
            except errors.SlotAvailable:
                messages.success(request, SLOT_FREE_MESSAGE)
                return redirect("booking:reserve", slug=room.slug, key=slot.key)
            except (errors.AlreadyWaiting, errors.AlreadyHolding, errors.TooManyWaiting) as refused:
                form.add_error(None, refused.message)
                status = refused.status
            else:
                tokens = [str(entry.token), *request.session.get(WAITING_KEY, [])]
                request.session[WAITING_KEY] = list(dict.fromkeys(tokens))[:REMEMBERED]
                return redirect("booking:waiting", token=entry.token)
    else:
        now = timezone.now()
        if slot.starts_at <= now:
            messages.error(request, SLOT_PASSED_MESSAGE)
            return redirect(_room_url(room, local_day))
        shown = TimeSlot.objects.with_availability(now).get(pk=slot.pk)
        if shown.closed:  # annotated by with_availability
            messages.error(request, SLOT_CLOSED_MESSAGE)
            return redirect(_room_url(room, local_day))
        if shown.available:
            messages.success(request, SLOT_FREE_MESSAGE)
            return redirect("booking:reserve", slug=room.slug, key=slot.key)
        form = ReserveForm(room=room, initial={"request_key": _issue_key(request)})
    return render(
        request,
        "booking/wait.html",
        {
            "room": room,
            "slot": slot,
            "form": form,
            "back": _room_url(room, local_day),
            "offer_length": _duration(settings.WAITLIST_OFFER_SECONDS),
        },
        status=400 if status == 200 and form.errors else status,
    )


def _waiting_entry(token: str) -> WaitingEntry:
    entry = waiting_entry_by_token(token)
    if entry is None:
        raise Http404
    return entry


@never_cache
def waiting(request: HttpRequest, token: str) -> HttpResponse:
    """A party's place on a waiting list: its number, or its offer; and the way out."""
    entry = _waiting_entry(token)
    if waitlist.waiting_lists_refresh([entry.time_slot_id]):
        entry = _waiting_entry(token)
    slot = entry.time_slot
    return render(
        request,
        "booking/waiting.html",
        {
            "entry": entry,
            # An offer that lapsed reads as ended before its job has run.
            "status": entry.current_status(timezone.now()),
            "slot": slot,
            "room": slot.room,
            "place": offers.waiting_place(entry),
            "offer": entry.offer,
            "offer_length": _duration(settings.WAITLIST_OFFER_SECONDS),
            "room_url": _room_url(slot.room, timezone.localdate(slot.starts_at)),
            "slot_offered": offers.slot_gone_to_waiting_list(
                slot.pk, now=timezone.now(), other_than=entry.offer_id
            ),
            "slot_closed": TimeSlot.objects.filter(pk=slot.pk).closed().exists(),
        },
    )


@require_POST
def waiting_leave(request: HttpRequest, token: str) -> HttpResponse:
    entry = _waiting_entry(token)
    try:
        waitlist.waiting_leave(entry=entry)
    except errors.ReservationError as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, LEFT_MESSAGE)
    return redirect("booking:waiting", token=entry.token)
