"""
Stripe, through the official library: PaymentIntents with manual capture.

Settings: ``STRIPE_SECRET_KEY``; ``STRIPE_API_BASE`` (Stripe's own by
default; the tests point it at a local stand-in); ``STRIPE_TIMEOUT_SECONDS``
for each request. The library retries nothing here: the callers retry on
their own schedule, and every request that makes something carries an
idempotency key.
"""

from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings

from . import IntentState, ProviderRefused, ProviderUnavailable, major_units, minor_units


class StripeProvider:
    name = "stripe"
    authorises = True

    def _client(self) -> stripe.StripeClient:
        return stripe.StripeClient(
            settings.STRIPE_SECRET_KEY,
            base_addresses={"api": settings.STRIPE_API_BASE},
            http_client=stripe.RequestsClient(timeout=settings.STRIPE_TIMEOUT_SECONDS),
            max_network_retries=0,
        )

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise ProviderUnavailable(str(exc)) from exc
        except stripe.StripeError as exc:
            if exc.http_status is None or exc.http_status >= 500:
                raise ProviderUnavailable(str(exc)) from exc
            raise ProviderRefused(str(exc)) from exc

    def create(
        self, *, amount: Decimal, currency: str, reservation: str, idempotency_key: str
    ) -> IntentState:
        intent = self._call(
            self._client().v1.payment_intents.create,
            params={
                "amount": minor_units(amount, currency),
                "currency": currency.lower(),
                "capture_method": "manual",
                "payment_method_types": ["card"],
                "metadata": {"reservation": reservation},
            },
            options={"idempotency_key": idempotency_key},
        )
        return _state(intent)

    def retrieve(self, intent_id: str) -> IntentState:
        client = self._client()
        intent = self._call(client.v1.payment_intents.retrieve, intent_id)
        return _state(intent, captured=self._captured(client, intent))

    def confirm(self, intent_id: str, payment_method: str) -> IntentState:
        # Two requests, as the local stand-in needs; Stripe takes them too.
        client = self._client()
        self._call(
            client.v1.payment_intents.update, intent_id, params={"payment_method": payment_method}
        )
        return _state(self._call(client.v1.payment_intents.confirm, intent_id))

    def capture(self, intent_id: str) -> IntentState:
        # No idempotency key: a second capture is refused by Stripe itself,
        # and a key would replay a server error for a day.
        client = self._client()
        intent = self._call(client.v1.payment_intents.capture, intent_id)
        return _state(intent, captured=self._captured(client, intent))

    def cancel(self, intent_id: str) -> IntentState:
        return _state(self._call(self._client().v1.payment_intents.cancel, intent_id))

    def refund(self, intent_id: str, *, idempotency_key: str) -> str:
        refund = self._call(
            self._client().v1.refunds.create,
            params={"payment_intent": intent_id},
            options={"idempotency_key": idempotency_key},
        )
        return str(refund.id)

    def _captured(self, client: stripe.StripeClient, intent: Any) -> bool:
        # A PaymentIntent's own amount_received is not sent by every
        # implementation of the API; its latest charge says what was taken.
        charge = intent.to_dict().get("latest_charge")
        if not charge:
            return False
        if isinstance(charge, str):
            charge = self._call(client.v1.charges.retrieve, charge).to_dict()
        return bool(charge.get("captured")) and charge.get("status") == "succeeded"


def _state(found: Any, *, captured: bool = False) -> IntentState:
    intent = found.to_dict()
    currency = str(intent["currency"]).upper()
    metadata = intent.get("metadata") or {}
    return IntentState(
        id=str(intent["id"]),
        status=str(intent["status"]),
        amount=major_units(int(intent["amount"]), currency),
        currency=currency,
        client_secret=str(intent.get("client_secret") or ""),
        captured=captured,
        reservation=str(metadata.get("reservation", "")),
    )
