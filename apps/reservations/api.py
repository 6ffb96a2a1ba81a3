from datetime import datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.http import Http404
from django.utils import timezone
from ninja import Field, Router, Schema, Status
from ninja.decorators import decorate_view
from prometheus_client import Counter
from pydantic import AfterValidator, ConfigDict, StringConstraints

from apps.idempotency.services import OPENAPI_EXTRA as IDEMPOTENT
from apps.idempotency.services import idempotency_request_key, idempotent
from apps.payments.services import booking_cancel_by_customer, payment_confirm_price
from config.api_errors import ErrorOut
from config.client_address import client_address

from . import changes, errors, offers, services, waitlist
from .models import Reservation, WaitingEntry
from .selectors import reservation_by_token, waiting_entry_by_token
from .text import (
    NEEDS_A_LETTER,
    NO_CONTROL_CHARACTERS,
    has_a_letter_or_digit,
    has_control_characters,
)

router = Router(tags=["reservations"])

INVALID_EMAIL = "Enter a valid email address."

# /metrics: "201", or the refusal's code (slot_taken, too_many_holds, ...).
RESERVE_OUTCOMES = Counter(
    "escape_rooms_reserve_requests",
    "Reserve requests of the API (POST /api/reservations/) that reached the service, by "
    "outcome: 201 or the refusal's code.",
    ["code"],
)


def _printable(value: str) -> str:
    if has_control_characters(value):
        raise ValueError(NO_CONTROL_CHARACTERS)
    return value


def _legible(value: str) -> str:
    if not has_a_letter_or_digit(value):
        raise ValueError(NEEDS_A_LETTER)
    return value


def _valid_email(value: str) -> str:
    try:
        validate_email(value)
    except DjangoValidationError:
        raise ValueError(INVALID_EMAIL) from None
    return value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(_printable),
    AfterValidator(_legible),
]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=254),
    Field(json_schema_extra={"format": "email"}),
    AfterValidator(_valid_email),
]
Phone = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=32), AfterValidator(_printable)
]
PaymentReference = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)
]


class StrictIn(Schema):
    # JSON in, no guessing: "3" is not a number, true is not an id, and an
    # unknown field (a typo, or "status": "paid") is an error, not ignored.
    model_config = ConfigDict(strict=True, extra="forbid")


class ReservationIn(StrictIn):
    slot_id: int = Field(..., ge=1)
    customer_name: Name
    customer_email: Email
    customer_phone: Phone = ""
    party_size: int = Field(..., ge=1, le=100, description="Players; the room's limits apply.")


class MoveIn(StrictIn):
    slot_id: int = Field(..., ge=1, description="The time slot to move to, of the same room.")


class PayIn(StrictIn):
    payment_reference: PaymentReference


class RoomRef(Schema):
    slug: str
    name: str


class SlotRef(Schema):
    id: int
    starts_at: datetime
    ends_at: datetime
    room: RoomRef


class ReservationOut(Schema):
    token: UUID
    status: Reservation.Status
    cancellation_reason: str
    expires_at: datetime
    seconds_left: int = Field(..., description="Whole seconds left on the hold; 0 unless pending.")
    party_size: int
    price: Decimal = Field(
        ..., description="The price of the game, frozen when the slot was held: what is charged."
    )
    currency: str
    customer_name: str
    customer_email: str
    slot: SlotRef
    is_offer: bool = Field(..., description="Offered to a party from the slot's waiting list.")


def _slot_ref(slot) -> dict:
    return {
        "id": slot.pk,
        "starts_at": slot.starts_at,
        "ends_at": slot.ends_at,
        "room": {"slug": slot.room.slug, "name": slot.room.name},
    }


def reservation_out(reservation: Reservation, *, now: datetime) -> dict:
    """Present a reservation as of ``now``: a lapsed hold reads as cancelled (expired)."""
    slot = reservation.time_slot
    return {
        "token": reservation.token,
        "status": reservation.current_status(now),
        "cancellation_reason": reservation.current_cancellation_reason(now),
        "expires_at": reservation.expires_at,
        "seconds_left": reservation.seconds_left(now),
        "party_size": reservation.party_size,
        "price": reservation.price,
        "currency": reservation.currency,
        "customer_name": reservation.customer_name,
        "customer_email": reservation.customer_email,
        "slot": _slot_ref(slot),
        "is_offer": reservation.is_offer,
    }


def _party(payload: ReservationIn) -> dict:
    """Who reserves or waits: the fields the services take about the party."""
    return payload.dict(include={"customer_name", "customer_email", "customer_phone", "party_size"})


def _get(token: str) -> Reservation:
    """The reservation with this token; 404 for an unknown or malformed token alike."""
    reservation = reservation_by_token(token)
    if reservation is None:
        raise Http404
    return reservation


@router.post(
    "/reservations/",
    response={201: ReservationOut, 400: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut},
    summary="Reserve a time slot and hold it for payment",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def create_reservation(request, payload: ReservationIn):
    """
    201 with the reservation and its token. With an ``Idempotency-Key``, a
    retry (the 201 lost on the way) gets this 201 again, the same
    reservation; without one, it finds the slot taken by its own hold: 409
    ``slot_taken``.
    """
    try:
        reservation = services.reservation_create(
            time_slot_id=payload.slot_id,
            request_key=idempotency_request_key(request),
            client_address=client_address(request),
            **_party(payload),
        )
    except errors.ReservationError as refused:
        RESERVE_OUTCOMES.labels(code=refused.code).inc()
        raise
    RESERVE_OUTCOMES.labels(code="201").inc()
    return Status(201, reservation_out(reservation, now=timezone.now()))


@router.get(
    "/reservations/{token}/",
    response={200: ReservationOut, 404: ErrorOut},
    summary="Show a reservation",
)
def get_reservation(request, token: str):
    return reservation_out(_get(token), now=timezone.now())


@router.post(
    "/reservations/{token}/pay/",
    response={200: ReservationOut, 400: ErrorOut, 404: ErrorOut, 409: ErrorOut},
    summary="Confirm payment of a pending reservation",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def pay_reservation(request, token: str, payload: PayIn):
    """
    Stands in for a payment provider's confirmation of the reservation's price.

    Recorded as a payment like a webhook's: a hold that lapsed is still paid
    if its slot is free (``applied_late``); otherwise 409 and a refund is due.
    """
    payment_confirm_price(
        reservation=_get(token), reference=payload.payment_reference, source="customer"
    )
    return reservation_out(_get(token), now=timezone.now())


@router.post(
    "/reservations/{token}/checkout/",
    response={200: ReservationOut, 404: ErrorOut, 409: ErrorOut},
    summary="Start paying: the hold lasts at least PAYMENT_WINDOW_SECONDS more, once",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def checkout_reservation(request, token: str):
    reservation = services.reservation_checkout(reservation=_get(token))
    return reservation_out(reservation, now=timezone.now())


@router.post(
    "/reservations/{token}/cancel/",
    response={200: ReservationOut, 404: ErrorOut, 409: ErrorOut},
    summary="Cancel a pending reservation, or a paid booking with a refund",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def cancel_reservation(request, token: str):
    """
    A paid booking may be cancelled until CUSTOMER_CANCEL_HOURS before the
    game (409 ``too_late_to_cancel`` after): the payment is refunded through
    the provider that took it, or, for one no provider took, is due back
    from the venue's staff.
    """
    reservation = _get(token)
    booking_cancel_by_customer(reservation=reservation)
    return reservation_out(_get(token), now=timezone.now())


@router.post(
    "/reservations/{token}/move/",
    response={200: ReservationOut, 400: ErrorOut, 404: ErrorOut, 409: ErrorOut},
    summary="Move a pending or paid reservation to another free time slot of the same room",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def move_reservation(request, token: str, payload: MoveIn):
    """
    Until CUSTOMER_RESCHEDULE_HOURS before the game (409 ``too_late_to_change``
    after). The new slot is the reservation's before the old one is released;
    the price and, for a hold, its end stay (the end is cut to the new
    slot's start if that is sooner). 409 ``slot_taken`` (someone holds it,
    or it went to its waiting list), ``slot_unavailable`` (started, closed);
    400 for a slot of another room; 404 for an unknown slot.
    """
    changes.reservation_move(reservation=_get(token), time_slot_id=payload.slot_id)
    return reservation_out(_get(token), now=timezone.now())


# ---------------------------------------------------------------------------
# The waiting list
# ---------------------------------------------------------------------------


class WaitingIn(ReservationIn):
    pass


class OfferRef(Schema):
    token: UUID
    status: Reservation.Status
    expires_at: datetime
    seconds_left: int
    price: Decimal = Field(..., description="The price for the party when it was offered.")
    currency: str


class WaitingOut(Schema):
    token: UUID
    status: WaitingEntry.Status
    place: int | None = Field(
        ..., description="Place on the list (1: offered next) while waiting; otherwise null."
    )
    party_size: int
    customer_name: str
    customer_email: str
    slot: SlotRef
    offer: OfferRef | None = Field(
        ..., description="The reservation offered to this party, once it was: pay it to book."
    )


def waiting_out(entry: WaitingEntry, *, now: datetime) -> dict:
    """Present a place on a waiting list as of ``now``."""
    offer = entry.offer
    return {
        "token": entry.token,
        "status": entry.current_status(now),
        "place": offers.waiting_place(entry),
        "party_size": entry.party_size,
        "customer_name": entry.customer_name,
        "customer_email": entry.customer_email,
        "slot": _slot_ref(entry.time_slot),
        "offer": None
        if offer is None
        else {
            "token": offer.token,
            "status": offer.current_status(now),
            "expires_at": offer.expires_at,
            "seconds_left": offer.seconds_left(now),
            "price": offer.price,
            "currency": offer.currency,
        },
    }


def _get_entry(token: str) -> WaitingEntry:
    """The place with this token, its slot's lapsed hold handed over first; 404 if unknown."""
    entry = waiting_entry_by_token(token)
    if entry is None:
        raise Http404
    if waitlist.waiting_lists_refresh([entry.time_slot_id]):
        entry.refresh_from_db()
    return entry


@router.post(
    "/waitlist/",
    response={201: WaitingOut, 400: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut},
    summary="Join a held or booked time slot's waiting list",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def join_waitlist(request, payload: WaitingIn):
    """
    When the slot's hold lapses or its booking is cancelled, the first party
    waiting is offered it: a reservation held for WAITLIST_OFFER_SECONDS, to
    pay like any hold. 409 ``slot_available`` when no one holds the slot
    (reserve it instead), ``already_waiting`` when this email address waits
    for it already, ``already_holding`` when it holds or booked it; 429
    ``too_many_waiting`` past MAX_WAITING_PER_EMAIL places.
    """
    entry = waitlist.waiting_join(
        time_slot_id=payload.slot_id,
        request_key=idempotency_request_key(request),
        client_address=client_address(request),
        **_party(payload),
    )
    return Status(201, waiting_out(_get_entry(str(entry.token)), now=timezone.now()))


@router.get(
    "/waitlist/{token}/",
    response={200: WaitingOut, 404: ErrorOut},
    summary="Show a place on a waiting list",
)
def get_waiting(request, token: str):
    return waiting_out(_get_entry(token), now=timezone.now())


@router.post(
    "/waitlist/{token}/leave/",
    response={200: WaitingOut, 404: ErrorOut, 409: ErrorOut},
    summary="Leave a waiting list; an offer not yet paid passes to the next party",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def leave_waitlist(request, token: str):
    entry = waitlist.waiting_leave(entry=_get_entry(token))
    return waiting_out(entry, now=timezone.now())
