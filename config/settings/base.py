"""
Settings shared by every environment.

Every value that differs between machines is read from the environment (or a
``.env`` file at the project root) with django-environ; ``.env.example`` lists
them all with their defaults.
"""

import ipaddress
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# GENERAL
# ------------------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="insecure-development-key-change-me")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
TIME_ZONE = env("TIME_ZONE", default="Europe/Berlin")
LANGUAGE_CODE = "en-us"
USE_I18N = True
USE_TZ = True
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# DATABASES
# ------------------------------------------------------------------------------
VAR_DIR.mkdir(exist_ok=True)
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
# Keep a connection for a minute rather than open one per request (a new
# PostgreSQL connection is a new server process: several milliseconds), and
# check it before reuse so that a database restart costs no failed request.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the scheduler's threads write concurrently: WAL lets
    # readers run beside a writer, IMMEDIATE takes the write lock when a
    # transaction begins (so no transaction fails half-way with "database is
    # locked"), and the timeout makes a writer wait its turn instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Django's backend, with the writers queued on a file lock: the busy
    # timeout's growing sleeps left a writer waiting up to a second while
    # others' short transactions came and went (config/sqlite/base.py).
    DATABASES["default"]["ENGINE"] = "config.sqlite"
# Behind a transaction-mode pooler (pgbouncer's pool_mode = transaction),
# consecutive transactions of one connection may run on different server
# sessions: "transaction" keeps Django to what survives that (no server-side
# cursors, no prepared statements, no startup options). What needs a session
# of its own (the runner lock, LISTEN) goes to DATABASE_DIRECT_URL, the server
# itself. Empty: no pooler, or one in session mode. See docs/deployment.md.
DATABASE_POOLER = env("DATABASE_POOLER", default="")
if DATABASE_POOLER not in ("", "transaction"):
    raise ImproperlyConfigured('DATABASE_POOLER must be "transaction" or empty.')
DATABASE_DIRECT_URL = env("DATABASE_DIRECT_URL", default="")
if DATABASE_POOLER:
    # A pooler in transaction mode refuses the startup parameter "options"
    # (or, told to ignore it, drops it silently): never send one through it.
    if "options" in DATABASES["default"].get("OPTIONS", {}) or env("PGOPTIONS", default=""):
        raise ImproperlyConfigured(
            'DATABASE_URL (or PGOPTIONS) sends a startup "options" parameter, which a '
            "transaction pooler refuses: set these on the role or the database instead "
            "(ALTER ROLE ... SET)."
        )
    # A named cursor lives in one server session; its next FETCH may reach another.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    # psycopg prepares a query run five times on its server session; the next
    # run may land on a session that never saw it.
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None

# APPS
# ------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "apps.idempotency",
    "apps.rooms",
    "apps.reservations",
    "apps.operations",
    "apps.booking",
    "apps.payments",
    "apps.messaging",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Outside CommonMiddleware: its redirects (a missing slash) get the header too.
    "config.middleware.ApiNoStoreMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.middleware.ApiErrorShapeMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# RESERVATIONS
# ------------------------------------------------------------------------------
# How long a pending reservation holds its time slot before it expires (seconds).
RESERVATION_HOLD_SECONDS = env.int("RESERVATION_HOLD_SECONDS", default=1800)
# How often a customer may "keep my slot" (extend the hold by one hold length).
RESERVATION_MAX_EXTENSIONS = env.int("RESERVATION_MAX_EXTENSIONS", default=2)
# How long a cache may keep the public room and slot lists (seconds); a slot
# list less, so that it never outlives a hold's end or a slot's start.
PUBLIC_LIST_MAX_AGE = env.int("PUBLIC_LIST_MAX_AGE", default=30)
# Against hoarding: pending holds at a time per email address and per client address.
MAX_PENDING_HOLDS_PER_EMAIL = env.int("MAX_PENDING_HOLDS_PER_EMAIL", default=2)
MAX_PENDING_HOLDS_PER_ADDRESS = env.int("MAX_PENDING_HOLDS_PER_ADDRESS", default=10)
# An IPv6 client is counted by its network of this many bits (a host is given a
# /64 and may use any address in it); an IPv4 client by its address.
HOLD_LIMIT_IPV6_PREFIX = env.int("HOLD_LIMIT_IPV6_PREFIX", default=64)
if not 0 <= HOLD_LIMIT_IPV6_PREFIX <= 128:
    raise ImproperlyConfigured("HOLD_LIMIT_IPV6_PREFIX must be between 0 and 128.")
# The waiting list: how long a waiting party's offer of a lapsed slot lasts
# (seconds; a slot starting sooner is not offered, it goes free for everyone),
# and, against hoarding, the places at a time per email address (per client
# address, MAX_PENDING_HOLDS_PER_ADDRESS).
WAITLIST_OFFER_SECONDS = env.int("WAITLIST_OFFER_SECONDS", default=900)
MAX_WAITING_PER_EMAIL = env.int("MAX_WAITING_PER_EMAIL", default=3)
# Customer changes: until how many hours before the game starts the customer
# may cancel a paid booking (refunded) and move a booking to another time.
CUSTOMER_CANCEL_HOURS = env.int("CUSTOMER_CANCEL_HOURS", default=48)
CUSTOMER_RESCHEDULE_HOURS = env.int("CUSTOMER_RESCHEDULE_HOURS", default=24)
# Proxies whose X-Forwarded-For is believed (addresses or networks, comma-separated).
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])

# IDEMPOTENCY
# ------------------------------------------------------------------------------
# An API client's Idempotency-Key is remembered this long from its first use
# (hours): a retry within it gets the first answer.
IDEMPOTENCY_KEY_HOURS = env.int("IDEMPOTENCY_KEY_HOURS", default=24)
# A retry while the key's first request still runs waits this long for its
# answer (seconds), then gets 409 idempotency_key_in_progress.
IDEMPOTENCY_WAIT_SECONDS = env.float("IDEMPOTENCY_WAIT_SECONDS", default=10.0)
# A request in progress longer than this is taken to have died, and a retry
# runs in its place (seconds; longer than any request, the payment provider's
# timeout included).
IDEMPOTENCY_STALE_SECONDS = env.int("IDEMPOTENCY_STALE_SECONDS", default=60)

# PAYMENTS
# ------------------------------------------------------------------------------
# HMAC-SHA256 key of the payment provider's webhook signatures.
PAYMENT_WEBHOOK_SECRET = env("PAYMENT_WEBHOOK_SECRET", default="dev-webhook-secret")
# A signature older or newer than this is refused (replay protection), seconds.
PAYMENT_WEBHOOK_TOLERANCE_SECONDS = 300
# Once a customer starts paying, the hold lasts at least this long, seconds.
PAYMENT_WINDOW_SECONDS = env.int("PAYMENT_WINDOW_SECONDS", default=300)
# Who takes the money: "simulated" (the Pay button confirms at once; no
# account needed) or "stripe" (authorised during the hold, captured once the
# slot is confirmed the customer's). docs/payments.md.
PAYMENT_PROVIDER = env("PAYMENT_PROVIDER", default="simulated")
if PAYMENT_PROVIDER not in ("simulated", "stripe"):
    raise ImproperlyConfigured(
        f"PAYMENT_PROVIDER is {PAYMENT_PROVIDER!r}: use 'simulated' or 'stripe'."
    )
# A payment processing or authorised at the provider when the hold ends keeps
# the slot this much longer at most, seconds.
PAYMENT_IN_FLIGHT_GRACE_SECONDS = env.int("PAYMENT_IN_FLIGHT_GRACE_SECONDS", default=120)
# The provider is asked this long before a hold with a payment started ends,
# so that its answer is in before the expiry, which never waits for it; seconds.
PAYMENT_CHECK_LEAD_SECONDS = env.float("PAYMENT_CHECK_LEAD_SECONDS", default=10)
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env("STRIPE_API_BASE", default="https://api.stripe.com")
STRIPE_JS_URL = env("STRIPE_JS_URL", default="https://js.stripe.com/v3/")
# Each request to Stripe gives up after this long (it is retried later), seconds.
STRIPE_TIMEOUT_SECONDS = env.float("STRIPE_TIMEOUT_SECONDS", default=10)
# The library's default tolerance for a webhook signature's age, seconds.
STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300

# THE VENUE AND ITS MESSAGES
# ------------------------------------------------------------------------------
# Named in every message and in the .ics attachment.
VENUE_NAME = env("VENUE_NAME", default="Escape Berlin")
VENUE_ADDRESS = env("VENUE_ADDRESS", default="Oranienstraße 1, 10999 Berlin")
# Links in messages leave the site: the address customers reach it at.
SITE_URL = env("SITE_URL", default="http://127.0.0.1:8000")
# Django's email framework, from one URL: smtp+tls://user:pass@host:587
# (STARTTLS), smtp+ssl://user:pass@host:465, consolemail:// (printed by the
# server); docs/messages.md.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default=f"{VENUE_NAME} <bookings@example.com>")
# Seconds the mail server may take to answer. Generous: a server that takes
# a message, then answers after the timeout, gets it again on the next try
# (SMTP allows it ten minutes); the deliveries wait in threads of their own.
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=60)
# The reminder comes this many seconds before a hold ends (0: no reminders).
HOLD_REMINDER_SECONDS = env.int("HOLD_REMINDER_SECONDS", default=600)
# A message the mail server refused is tried again after this many seconds,
# twice as long each time up to the maximum, and given up after so many tries
# (about a day); staff may retry it from the admin.
MESSAGE_RETRY_SECONDS = env.float("MESSAGE_RETRY_SECONDS", default=10.0)
MESSAGE_RETRY_MAX_SECONDS = env.float("MESSAGE_RETRY_MAX_SECONDS", default=3600.0)
MESSAGE_MAX_ATTEMPTS = env.int("MESSAGE_MAX_ATTEMPTS", default=30)
# A delivery in flight is another's to retry only after this many seconds:
# longer than a send can take (EMAIL_TIMEOUT for each step of the exchange).
MESSAGE_CLAIM_SECONDS = env.float("MESSAGE_CLAIM_SECONDS", default=300.0)
# "Find my booking": requests per email address, and per client address, an hour.
FIND_BOOKING_PER_HOUR = env.int("FIND_BOOKING_PER_HOUR", default=5)

# SCHEDULER
# ------------------------------------------------------------------------------
# The job store keeps one DateTrigger job per pending reservation plus the
# sweep. The default SQLite file is an absolute path computed from the project,
# so every process finds the same store whatever its working directory.
# On PostgreSQL the default is Django's own database (its own table), so that
# the runner lock, LISTEN/NOTIFY and the jobs share one server.
# Behind a pooler, the runner lock and LISTEN take DATABASE_DIRECT_URL: two
# session connections per scheduler process, straight to the server.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    from urllib.parse import quote, urlencode

    def _sqlalchemy_url(db: dict) -> str:
        # Spelled out rather than built with SQLAlchemy's URL: settings load in
        # every process (migrate, shell), which must not import SQLAlchemy for it.
        # Escapes the user and password; keeps options such as sslmode (psycopg
        # connection arguments such as prepare_threshold are no URL options).
        user = quote(db["USER"] or "", safe="")
        password = quote(str(db["PASSWORD"] or ""), safe="")
        login = f"{user}:{password}@" if user and password else (f"{user}@" if user else "")
        host = db["HOST"] or "localhost"
        host = f"[{host}]" if ":" in host else host
        options = {k: v for k, v in db.get("OPTIONS", {}).items() if k != "prepare_threshold"}
        query = urlencode(sorted((k, str(v)) for k, v in options.items()))
        return (
            f"postgresql+psycopg://{login}{host}:{int(db['PORT'] or 5432)}"
            f"/{quote(db['NAME'], safe='')}" + (f"?{query}" if query else "")
        )

    _default_jobstore = _sqlalchemy_url(DATABASES["default"])
    _default_direct = (
        _sqlalchemy_url(env.db_url_config(DATABASE_DIRECT_URL)) if DATABASE_DIRECT_URL else ""
    )
else:
    _default_jobstore = f"sqlite:///{VAR_DIR / 'jobs.sqlite3'}"
    _default_direct = ""
SCHEDULER_JOBSTORE_URL = env("SCHEDULER_JOBSTORE_URL", default=_default_jobstore)
# The session connections (runner lock, LISTEN) of a PostgreSQL job store;
# empty: the job store's own URL.
SCHEDULER_DIRECT_URL = env(
    "SCHEDULER_DIRECT_URL",
    default=_default_direct if _default_jobstore == SCHEDULER_JOBSTORE_URL else "",
)
if DATABASE_POOLER and SCHEDULER_JOBSTORE_URL.startswith("postgresql") and not SCHEDULER_DIRECT_URL:
    raise ImproperlyConfigured(
        'DATABASE_POOLER = "transaction" needs DATABASE_DIRECT_URL (or SCHEDULER_DIRECT_URL): '
        "the runner lock and LISTEN need a session of their own, straight to PostgreSQL."
    )
# The safety net: how often the sweep expires holds whose job was missed.
SCHEDULER_SWEEP_SECONDS = env.int("SCHEDULER_SWEEP_SECONDS", default=600)
# How often the runner's sweep also purges rows that only grow (expired sessions).
HOUSEKEEPING_SECONDS = env.int("HOUSEKEEPING_SECONDS", default=86400)
# How often a running scheduler looks for jobs that other processes wrote.
SCHEDULER_POLL_SECONDS = env.float("SCHEDULER_POLL_SECONDS", default=5.0)
# True: the web process only writes jobs; `manage.py start_scheduler` runs them.
SCHEDULER_WORKER_MODE = env.bool("SCHEDULER_WORKER_MODE", default=False)
# A standby takes over within this many seconds of the runner dying.
SCHEDULER_FAILOVER_SECONDS = env.float("SCHEDULER_FAILOVER_SECONDS", default=10.0)
# Seconds a job, the sweep or a heartbeat waits for a lock another transaction
# holds (a row on PostgreSQL, the database on SQLite) before it gives up and
# is tried again: a long transaction elsewhere never stalls the scheduler.
SCHEDULER_LOCK_TIMEOUT = env.float("SCHEDULER_LOCK_TIMEOUT", default=2.0)
# For the benchmarks only (scripts/bench): false writes no expiry jobs, so that
# the reserve path can be measured without them and the seed's poll-only
# design compared. Never in production: holds would then wait for the sweep.
SCHEDULER_EXPIRY_JOBS = env.bool("SCHEDULER_EXPIRY_JOBS", default=True)

SCHEDULER_CONFIG = {
    "apscheduler.jobstores.default": {
        "type": "sqlalchemy",
        "url": SCHEDULER_JOBSTORE_URL,
        # Through a transaction pooler, as Django's connections: no prepared statements.
        **(
            {"engine_options": {"connect_args": {"prepare_threshold": None}}}
            if DATABASE_POOLER and SCHEDULER_JOBSTORE_URL.startswith("postgresql")
            else {}
        ),
    },
    "apscheduler.executors.default": {
        "type": "threadpool",
        "max_workers": 20,
    },
    # Expiry jobs must run however late they are (APScheduler's default grace
    # of 1 s would silently drop a job missed during a restart), and a backlog
    # of one job runs once.
    "apscheduler.job_defaults.coalesce": True,
    "apscheduler.job_defaults.misfire_grace_time": None,
    "apscheduler.job_defaults.max_instances": 1,
    "apscheduler.timezone": "UTC",
}

# METRICS
# ------------------------------------------------------------------------------
# /metrics answers the operator's Prometheus only: a bearer token, networks
# (addresses or networks, comma-separated; behind TRUSTED_PROXIES the
# forwarded client's), or both, then both are required. Neither: 404.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=[])
try:
    for _network in METRICS_ALLOWED_NETWORKS:
        ipaddress.ip_network(_network.strip(), strict=False)
except ValueError as _error:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {_error}") from None
# The lateness histogram counts the releases of this many seconds before a scrape.
METRICS_LATENESS_WINDOW_SECONDS = env.int("METRICS_LATENESS_WINDOW_SECONDS", default=300)
# A hold pending this many seconds past its expires_at counts as overdue: its
# job releases it within milliseconds, the sweep within SCHEDULER_SWEEP_SECONDS.
METRICS_OVERDUE_SECONDS = env.float("METRICS_OVERDUE_SECONDS", default=5.0)

# LOGGING
# ------------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # The seed's format: "INFO 2025-08-21 06:20:10,066 scheduler Cancelled ..."
        "verbose": {
            "()": "config.log.Formatter",
            "format": "%(levelname)s %(asctime)s %(logger)s %(message)s",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "verbose"},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "escape_rooms_backend": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "apps": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "apscheduler": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # Django's own console handler prints only under DEBUG; one line each.
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
    },
}
