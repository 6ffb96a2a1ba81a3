"""Settings for the test suite (pytest-django)."""

from .base import *  # noqa: F403
from .base import DATABASES, VAR_DIR

DEBUG = False
SECRET_KEY = "test-only-secret-key"  # noqa: S105 (tests only, never deployed)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Scheduler threads and worker subprocesses need a database they can all open:
# a file, never SQLite's shared in-memory database.
# A connection per request, as before CONN_MAX_AGE: scheduler and race threads
# would otherwise keep sessions open, and PostgreSQL refuses to drop the test
# database at the end of the run while they are.
DATABASES["default"]["CONN_MAX_AGE"] = 0
if "sqlite" in DATABASES["default"]["ENGINE"]:
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_db.sqlite3")}

# Each test points the scheduler at a job store of its own (tests/conftest.py).
SCHEDULER_JOBSTORE_URL = f"sqlite:///{VAR_DIR / 'test_jobs.sqlite3'}"
SCHEDULER_CONFIG = {  # noqa: F405
    **SCHEDULER_CONFIG,  # noqa: F405
    "apscheduler.jobstores.default": {"type": "sqlalchemy", "url": SCHEDULER_JOBSTORE_URL},
}
SCHEDULER_POLL_SECONDS = 0.2

# Let pytest's caplog see our log lines (it listens on the root logger).
LOGGING = {  # noqa: F405
    **LOGGING,  # noqa: F405
    "loggers": {
        "escape_rooms_backend": {"level": "DEBUG", "propagate": True},
        "apps": {"level": "DEBUG", "propagate": True},
        "apscheduler": {"level": "WARNING", "propagate": True},
    },
}

# Most tests book many holds for one customer from one address; the hold-limit
# tests set the real limits themselves.
MAX_PENDING_HOLDS_PER_EMAIL = 1000
MAX_PENDING_HOLDS_PER_ADDRESS = 1000
MAX_WAITING_PER_EMAIL = 1000
PAYMENT_WEBHOOK_SECRET = "test-webhook-secret"  # noqa: S105 (tests only)
