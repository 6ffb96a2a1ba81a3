"""
Payment providers: the one small interface that the payment services call.

``provider()`` returns the one ``PAYMENT_PROVIDER`` names. A provider that
*authorises* (Stripe) takes money in two steps: an authorisation while the
hold runs, a capture once the slot is confirmed the customer's, or a void
(a cancelled authorisation: nothing was charged). The simulated provider
confirms a payment at once and authorises nothing. A third provider is one
module with a class of this shape, and a line in ``PROVIDERS``.

Every call goes over the network: never make one inside a database
transaction that holds a lock. Each raises ``ProviderUnavailable`` when the
provider cannot be reached or answers with a server error (try again
later), and ``ProviderRefused`` when it refuses the request itself.
"""

from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import import_module
from typing import Protocol

# ISO 4217 currencies whose amounts have no minor unit (Stripe's list).
# ... and those with three decimals, counted in thousandths.
THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()  # noqa: SIM905
)


class ProviderError(Exception):
    """A provider call failed; ``str()`` says why in the provider's words."""


class ProviderUnavailable(ProviderError):
    """Unreachable, too slow, or a server error: the same call may succeed later."""


class ProviderRefused(ProviderError):
    """The provider refused the request (a declined card, a bad state): retrying will not help."""


@dataclass(frozen=True)
class IntentState:
    """
    A payment at the provider as last read.

    ``status`` is Stripe's PaymentIntent status (``requires_payment_method``,
    ``requires_confirmation``, ``requires_action``, ``processing``,
    ``requires_capture``, ``succeeded`` or ``canceled``); ``amount`` is a
    Decimal in ``currency`` (upper case); ``captured`` whether money was
    taken; ``reservation`` the reservation token its metadata names.
    """

    id: str
    status: str
    amount: Decimal
    currency: str
    client_secret: str = ""
    captured: bool = False
    reservation: str = ""


class Provider(Protocol):
    name: str
    authorises: bool

    def create(
        self, *, amount: Decimal, currency: str, reservation: str, idempotency_key: str
    ) -> IntentState: ...

    def retrieve(self, intent_id: str) -> IntentState: ...

    def confirm(self, intent_id: str, payment_method: str) -> IntentState: ...

    def capture(self, intent_id: str) -> IntentState: ...

    def cancel(self, intent_id: str) -> IntentState: ...

    def refund(self, intent_id: str, *, idempotency_key: str) -> str: ...


PROVIDERS = {
    "simulated": "apps.payments.providers.simulated.SimulatedProvider",
    "stripe": "apps.payments.providers.stripe.StripeProvider",
}


@cache
def provider_named(name: str) -> Provider:
    """The provider called ``name`` (a key of ``PROVIDERS``); ``KeyError`` for an unknown one."""
    module, _, attribute = PROVIDERS[name].rpartition(".")
    return getattr(import_module(module), attribute)()


def provider() -> Provider:
    """The provider ``settings.PAYMENT_PROVIDER`` names: the one new payments go to."""
    from django.conf import settings

    return provider_named(settings.PAYMENT_PROVIDER)


def _exponent(currency: str) -> int:
    code = currency.upper()
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def minor_units(amount: Decimal, currency: str) -> int:
    """``amount`` in ``currency``'s smallest unit: 89.00 EUR → 8900, 10.000 KWD → 10000."""
    return int(amount.scaleb(_exponent(currency)))


def major_units(amount: int, currency: str) -> Decimal:
    """The inverse of ``minor_units``: 8900 EUR → Decimal("89.00")."""
    exponent = _exponent(currency)
    return Decimal(amount).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent))
