import pytest

WEBHOOK_SECRET = "whsec_test_secret"


@pytest.fixture
def provider(localstripe, settings):
    """PAYMENT_PROVIDER=stripe, pointed at the tests' local Stripe."""
    settings.PAYMENT_PROVIDER = "stripe"
    settings.STRIPE_SECRET_KEY = "sk_test_local"
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_local"
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = localstripe.api_base
    settings.STRIPE_JS_URL = localstripe.js_url
    settings.STRIPE_TIMEOUT_SECONDS = 3
    return localstripe
