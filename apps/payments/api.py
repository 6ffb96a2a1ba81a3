"""
Paying at the provider through the JSON API (``PAYMENT_PROVIDER=stripe``).

``POST /api/reservations/<token>/payment/`` starts paying and returns the
PaymentIntent's client secret for Stripe.js; ``POST .../payment/check/``
asks the provider and settles the payment (after Stripe.js confirmed it;
the webhook and the hold's deadline do the same on their own).
"""

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from django.conf import settings
from django.http import Http404
from django.utils import timezone
from ninja import Field, Router, Schema
from ninja.decorators import decorate_view
from pydantic import ConfigDict, StringConstraints

from apps.idempotency.services import OPENAPI_EXTRA as IDEMPOTENT
from apps.idempotency.services import idempotent
from apps.reservations.errors import PaymentNotStarted
from apps.reservations.models import Reservation
from apps.reservations.selectors import reservation_by_token
from config.api_errors import ErrorOut

from . import services
from .models import ProviderPayment

router = Router(tags=["payments"])


class PaymentOut(Schema):
    provider: str
    payment_intent: str = Field(..., description="The provider's id (Stripe: pi_...).")
    client_secret: str = Field(..., description="For Stripe.js's confirmCardPayment.")
    publishable_key: str
    js_url: str = Field(..., description="Where the page loads Stripe.js from.")
    amount: Decimal
    currency: str
    status: str = Field(..., description="The provider's status, as last read.")
    outcome: str = Field(..., description="'' while open; captured or voided.")
    reason: str
    reservation_status: Reservation.Status
    checked_at: datetime | None


def payment_out(row: ProviderPayment) -> dict:
    reservation = Reservation.objects.get(pk=row.reservation_id)
    return {
        "provider": row.provider,
        "payment_intent": row.provider_id or "",
        "client_secret": row.client_secret,
        "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
        "js_url": settings.STRIPE_JS_URL,
        "amount": row.amount,
        "currency": row.currency,
        "status": row.status,
        "outcome": row.outcome,
        "reason": row.reason,
        "reservation_status": reservation.current_status(timezone.now()),
        "checked_at": row.checked_at,
    }


def _get(token: str) -> Reservation:
    reservation = reservation_by_token(token)
    if reservation is None:
        raise Http404
    return reservation


@router.post(
    "/reservations/{token}/payment/",
    response={200: PaymentOut, 404: ErrorOut, 409: ErrorOut, 503: ErrorOut},
    summary="Start paying at the provider: the PaymentIntent's client secret, made once",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def start_payment(request, token: str):
    """
    Make the reservation's PaymentIntent (manual capture) or return the one made before.

    The hold lasts at least PAYMENT_WINDOW_SECONDS more, once. Confirm it
    with Stripe.js (``confirmCardPayment``), then call ``payment/check/``.
    409 ``payment_confirmed_at_once`` with the simulated provider (use
    ``pay``), ``hold_expired``, ``already_paid``, ``already_cancelled``;
    503 ``payment_provider_unavailable`` (nothing was charged).
    """
    return payment_out(services.payment_start(reservation=_get(token)))


class AuthoriseIn(Schema):
    model_config = ConfigDict(strict=True, extra="forbid")

    payment_method: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=3, max_length=100)
    ] = Field(..., description="A payment method Stripe.js made from the card (pm_...).")


@router.post(
    "/reservations/{token}/payment/authorise/",
    response={
        200: PaymentOut,
        400: ErrorOut,
        402: ErrorOut,
        404: ErrorOut,
        409: ErrorOut,
        503: ErrorOut,
    },
    summary="Confirm the PaymentIntent with a card on the server, then settle it",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def authorise_payment(request, token: str, payload: AuthoriseIn):
    """
    Confirm the reservation's PaymentIntent with ``payment_method``; authorised, it is captured.

    ``status`` ``requires_action``: the customer's bank wants them to confirm
    (3-D Secure): pass ``client_secret`` to Stripe.js's
    ``confirmCardPayment``, then call ``payment/check/``. 402
    ``card_declined``; 409 ``payment_not_started``; 503
    ``payment_provider_unavailable``.
    """
    return payment_out(
        services.payment_authorise(reservation=_get(token), payment_method=payload.payment_method)
    )


@router.post(
    "/reservations/{token}/payment/check/",
    response={200: PaymentOut, 404: ErrorOut, 409: ErrorOut},
    summary="Ask the provider about the payment and settle it: captured, voided or still open",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent)
def check_payment(request, token: str):
    """
    Read the PaymentIntent back from the provider and act on it; idempotent.

    Authorised while the slot is still the customer's: captured, and the
    reservation paid. The provider unreachable: the payment is settled later
    on its own (``checked_at`` says when it was last read).
    409 ``payment_not_started``.
    """
    row = ProviderPayment.objects.filter(reservation=_get(token)).first()
    if row is None or not row.provider_id:
        raise PaymentNotStarted()
    return payment_out(services.payment_settle_quietly(row))
