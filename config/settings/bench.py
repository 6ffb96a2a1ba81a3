"""
Settings for the benchmarks (``scripts/bench``): the base settings with the
per-customer hold limits lifted, since every benchmark request comes from one
address. ``scripts/bench/run.py`` sets ``DATABASE_URL`` to a throwaway database.
"""

from .base import *  # noqa: F403

DEBUG = False
SECRET_KEY = "bench-only-secret-key"  # noqa: S105 (benchmarks only, never deployed)
# The reserve phase sets the production limits back (its requests come from
# as many addresses as customers, through a trusted proxy).
MAX_PENDING_HOLDS_PER_EMAIL = env.int("MAX_PENDING_HOLDS_PER_EMAIL", default=10**9)  # noqa: F405
MAX_PENDING_HOLDS_PER_ADDRESS = env.int("MAX_PENDING_HOLDS_PER_ADDRESS", default=10**9)  # noqa: F405
MAX_WAITING_PER_EMAIL = 10**9
# Messages are queued, claimed and marked as in production, and handed to a
# mail server that takes them at once: the benchmarks measure the product,
# not a mail server, and print no 10,000 messages.
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
