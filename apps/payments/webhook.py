"""
The payment provider's webhook: ``POST /api/payments/webhook/``.

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
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .services import payment_confirm

BAD_SIGNATURE = "The signature is missing, malformed, stale or wrong."
BAD_EVENT = "The event is not a payment confirmation this endpoint understands."


def sign(body: bytes, timestamp: int, secret: str) -> str:
    """The ``X-Signature`` header value for ``body`` at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def signature_valid(header: str, body: bytes, *, secret: str, now: float) -> bool:
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > settings.PAYMENT_WEBHOOK_TOLERANCE_SECONDS:
        return False
    expected = sign(body, timestamp, secret).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


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
            raise ValueError(event["type"])
        amount = Decimal(str(event["amount"]))
        token = str(event["reservation"])
        reference = str(event["payment_reference"])[:100]
        currency = str(event["currency"])[:3]
        event_id = str(event["id"])[:100]
        if not reference or not amount.is_finite() or abs(amount) >= 10**8:
            raise ValueError("empty reference or unusable amount")
    except (ValueError, KeyError, TypeError, InvalidOperation):
        return _error(400, "bad_event", BAD_EVENT)
    confirmation = payment_confirm(
        reservation_token=token,
        reference=reference,
        amount=amount,
        currency=currency,
        source="webhook",
        event_id=event_id,
    )
    payment = confirmation.payment
    return JsonResponse(
        {
            "outcome": payment.outcome,
            "reason": payment.reason,
            "payment_reference": payment.reference,
            "replayed": not confirmation.created,
        }
    )
