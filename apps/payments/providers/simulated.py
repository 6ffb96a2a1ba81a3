"""
The simulated provider: a payment is confirmed at once, nothing is authorised.

The default, so that ``make run`` works with no account: the *Pay* button
and the API's ``pay`` record a payment of the reservation's price straight away
(``payment_confirm_price``). It holds no money, so there is nothing to
capture or void, and a refund is only recorded.
"""

import secrets
from decimal import Decimal

from . import IntentState, ProviderRefused

NOTHING_AUTHORISED = "The simulated provider authorises nothing."


class SimulatedProvider:
    name = "simulated"
    authorises = False

    def create(
        self, *, amount: Decimal, currency: str, reservation: str, idempotency_key: str
    ) -> IntentState:
        raise ProviderRefused(NOTHING_AUTHORISED)

    def retrieve(self, intent_id: str) -> IntentState:
        raise ProviderRefused(NOTHING_AUTHORISED)

    def confirm(self, intent_id: str, payment_method: str) -> IntentState:
        raise ProviderRefused(NOTHING_AUTHORISED)

    def capture(self, intent_id: str) -> IntentState:
        raise ProviderRefused(NOTHING_AUTHORISED)

    def cancel(self, intent_id: str) -> IntentState:
        raise ProviderRefused(NOTHING_AUTHORISED)

    def refund(self, intent_id: str, *, idempotency_key: str) -> str:
        return f"SIM-REFUND-{secrets.token_hex(6).upper()}"
