"""
The payment providers' webhooks.

``POST /api/payments/stripe/webhook/`` takes Stripe's events, verified with
the library's signature check (``Stripe-Signature``, ``STRIPE_WEBHOOK_SECRET``,
its tolerance). Events arrive late, twice and out of order: on any
``payment_intent.*`` event the PaymentIntent is read back from Stripe and
settled by its status there (``services.payment_settle``), so the event's
own content decides nothing. ``charge.refunded`` and
``charge.dispute.created`` flag the booking for staff. Any other correctly
signed event is acknowledged with 200: a provider retries a refusal for days
and then disables the endpoint.

``POST /api/payments/webhook/`` is the generic webhook of a provider that
confirms payments at once.

The header ``X-Signature: t=<unix seconds>,v1=<hex>`` carries
HMAC-SHA256(``PAYMENT_WEBHOOK_SECRET``, ``"<t>." + raw body``). It is compared in
constant time and refused when ``t`` is more than
``PAYMENT_WEBHOOK_TOLERANCE_SECONDS`` (300) away from now, so that a captured
request cannot be replayed later. docs/payments.md shows how to sign one.
"""

import hashlib
import hmac
import json
import time
from decimal import Decimal, DecimalException

import stripe
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from apps.reservations.errors import PaymentReferenceConflict

from .models import Payment
from .providers import ProviderRefused, ProviderUnavailable, major_units
from .services import payment_confirm, payment_flag, payment_settle_intent

BAD_SIGNATURE = "The signature is missing, malformed, stale or wrong."
BAD_EVENT = "The payment confirmation is malformed."


def sign(body: bytes, timestamp: int, secret: str) -> str:
    """The ``X-Signature`` header value for ``body`` at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def signature_valid(header: str, body: bytes, *, secret: str, now: float) -> bool:
    """
    Check ``t=<unix seconds>,v1=<hex>[,v1=<hex>...]``: any ``v1`` may match.

    More than one ``v1`` lets a provider sign with an old and a new secret
    while rotating. Hex is compared case-insensitively, in constant time.
    """
    timestamps, signatures = [], []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value.lower())
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not signatures:
        return False
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > settings.PAYMENT_WEBHOOK_TOLERANCE_SECONDS:
        return False
    expected = sign(body, timestamp, secret).split("v1=", 1)[1]
    return any(given.isascii() and hmac.compare_digest(expected, given) for given in signatures)


CENT = Decimal("0.01")


def _text(event: dict, key: str, max_length: int) -> str:
    """A non-empty string field of at most ``max_length`` characters, or ValueError."""
    value = event[key]
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise ValueError(key)
    return value


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@csrf_exempt  # authenticated by its signature, not a browser session
@require_POST
def payment_webhook(request: HttpRequest) -> JsonResponse:
    body = request.body
    if not signature_valid(
        request.headers.get("X-Signature", ""),
        body,
        secret=settings.PAYMENT_WEBHOOK_SECRET,
        now=time.time(),
    ):
        return _error(400, "bad_signature", BAD_SIGNATURE)
    try:
        event = json.loads(body)
        if event["type"] != "payment.succeeded":
            # Signed by the provider: acknowledged, so that it is not sent
            # again for days, and the endpoint not disabled with the events
            # that matter.
            _text(event, "type", 100)
            return JsonResponse({"received": True, "handled": False})
        token, reference, currency, event_id = (
            _text(event, "reservation", 100),
            _text(event, "payment_reference", 100),
            _text(event, "currency", 3),
            _text(event, "id", 100),
        )
        amount = Decimal(str(event["amount"]))
        # Money: positive, whole cents, and within the database's 10 digits.
        if not (amount.is_finite() and 0 < amount < 10**8 and amount == amount.quantize(CENT)):
            raise ValueError("unusable amount")
        if len(currency) != 3 or not currency.isalpha():
            raise ValueError("currency is not an ISO 4217 code")
    except (ValueError, KeyError, TypeError, AttributeError, DecimalException):
        return _error(400, "bad_event", BAD_EVENT)
    try:
        confirmation = payment_confirm(
            reservation_token=token,
            reference=reference,
            amount=amount,
            currency=currency,
            source="webhook",
            event_id=event_id,
        )
    except PaymentReferenceConflict as conflict:
        return _error(409, conflict.code, conflict.message)
    payment = confirmation.payment
    return JsonResponse(
        {
            "outcome": payment.outcome,
            "reason": payment.reason,
            "payment_reference": payment.reference,
            "replayed": not confirmation.created,
        }
    )


@csrf_exempt  # authenticated by its signature, not a browser session
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    if not settings.STRIPE_WEBHOOK_SECRET:
        # An empty secret would accept anyone's signature.
        return _error(404, "not_found", "Stripe is not configured here.")
    try:
        event = stripe.Webhook.construct_event(
            request.body,
            request.headers.get("Stripe-Signature", ""),
            settings.STRIPE_WEBHOOK_SECRET,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
        )
        fields = event.to_dict()
        kind = str(fields["type"])
        thing = fields["data"]["object"]
    except (ValueError, KeyError, TypeError, stripe.SignatureVerificationError):
        return _error(400, "bad_signature", BAD_SIGNATURE)
    try:
        handled = _stripe_event(kind, thing)
    except ProviderUnavailable:
        # Stripe sends it again later; by then the API may answer.
        return _error(503, "payment_provider_unavailable", "Stripe's API did not answer.")
    except ProviderRefused:
        handled = False  # an intent Stripe's API does not know: nothing of ours
    return JsonResponse({"received": True, "handled": handled})


def _stripe_event(kind: str, thing: object) -> bool:
    if not isinstance(thing, dict):
        return False  # signed, yet not an object Stripe sends: nothing to act on
    if kind.startswith("payment_intent."):
        intent_id = thing.get("id")
        if not isinstance(intent_id, str) or not intent_id:
            return False
        return payment_settle_intent(intent_id) is not None
    if kind == "charge.refunded":
        refunded = _money(thing.get("amount_refunded"), thing.get("currency"))
        return payment_flag(
            intent_id=str(thing.get("payment_intent") or ""),
            flag=Payment.Flag.REFUNDED_AT_PROVIDER,
            detail=f"charge {thing.get('id')}: {refunded} refunded",
        )
    if kind == "charge.dispute.created":
        return payment_flag(
            intent_id=str(thing.get("payment_intent") or ""),
            flag=Payment.Flag.DISPUTED,
            detail=f"dispute {thing.get('id')} ({thing.get('reason', '')})",
        )
    return False


def _money(amount: object, currency: object) -> str:
    if not isinstance(amount, int) or not isinstance(currency, str):
        return "an amount"
    return f"{major_units(amount, currency)} {currency.upper()}"
