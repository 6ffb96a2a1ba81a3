"""Settings for production: only hardens what ``base`` sets."""

from .base import *  # noqa: F403
from .base import env

DEBUG = False
# No default: a missing key must stop the process at start, not weaken it.
SECRET_KEY = env("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
PAYMENT_WEBHOOK_SECRET = env("PAYMENT_WEBHOOK_SECRET")  # no default: refuse to start
if PAYMENT_PROVIDER == "stripe":  # noqa: F405
    # No defaults: a venue taking money must not start without its keys.
    STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY")
    STRIPE_PUBLISHABLE_KEY = env("STRIPE_PUBLISHABLE_KEY")
    STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET")

SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60)
SECURE_CONTENT_TYPE_NOSNIFF = True

# Static files from the app server itself, after `manage.py collectstatic`.
MIDDLEWARE = [  # noqa: F405
    MIDDLEWARE[0],  # noqa: F405  SecurityMiddleware first
    "whitenoise.middleware.WhiteNoiseMiddleware",
    *MIDDLEWARE[1:],  # noqa: F405
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Messages go to customers: no console default, and links must name the public site.
vars().update(env.email_url("EMAIL_URL"))
SITE_URL = env("SITE_URL")
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL")
