import asyncio
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path

import pytest
import requests
import stripe
from aiosmtpd.controller import Controller
from django.core.management import CommandError, call_command
from django.db import connection
from sqlalchemy.engine import make_url

from apps.reservations.errors import ReservationError
from escape_rooms_backend import deadlines
from escape_rooms_backend import scheduler as scheduler_module

from .factories import TimeSlotFactory

PROJECT_DIR = Path(__file__).resolve().parents[1]


class JobStore:
    """A test's own SQLite job store, read directly (not through APScheduler)."""

    def __init__(self, url: str):
        self.url = url
        self.path = Path(make_url(url).database)

    def create(self) -> None:
        """Create the store, as any process that writes a job does first."""
        scheduler_module.stop_scheduler()
        scheduler_module.get_scheduler().start(paused=True)

    def delete(self) -> None:
        """Delete the store as an operator would: the file with its WAL and shared-memory files."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def jobs(self) -> dict[str, datetime]:
        """Job id -> next run time, as committed to the store file."""
        if not self.path.exists():
            return {}
        with sqlite3.connect(self.path) as db:
            try:
                rows = db.execute("SELECT id, next_run_time FROM apscheduler_jobs").fetchall()
            except sqlite3.OperationalError:  # no table yet: nothing was ever stored
                return {}
        return {job_id: datetime.fromtimestamp(ts, UTC) for job_id, ts in rows}


@pytest.fixture(autouse=True)
def job_store(tmp_path, settings) -> JobStore:
    """Point the scheduler at a fresh job store; stop whatever scheduler the test started."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    settings.SCHEDULER_JOBSTORE_URL = url
    settings.SCHEDULER_CONFIG = {
        **settings.SCHEDULER_CONFIG,
        "apscheduler.jobstores.default": {"type": "sqlalchemy", "url": url},
    }
    scheduler_module.stop_scheduler()
    yield JobStore(url)
    scheduler_module.stop_scheduler()


@pytest.fixture
def slot(db):
    return TimeSlotFactory()


def wait_for(predicate, *, timeout: float, interval: float = 0.02):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def database_url() -> str:
    """A DATABASE_URL for a subprocess to reach this test run's database."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


def run_together(*actions) -> Counter:
    """Start every action at the same moment in its own thread; count what each returned."""
    barrier = threading.Barrier(len(actions))
    results: list[str] = []

    def run(action):
        try:
            barrier.wait()
            results.append(action())
        except ReservationError as refused:
            results.append(refused.code)
        except Exception as error:  # a thread that failed says how, for the assertion
            results.append(type(error).__name__)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == len(actions), "a thread died or hung"
    return Counter(results)


@pytest.fixture(autouse=True)
def deadline_kinds():
    """Give each test the registry of deadline kinds it started with, whatever it registers."""
    saved = deadlines.kinds()
    yield
    for kind in deadlines.kinds():
        deadlines.unregister(kind.name)
    for kind in saved:
        deadlines.register(kind)


@pytest.fixture
def hold_end_only():
    """
    The hold's end alone on the timeline: no reminder or delivery jobs, no messages queued.

    For the tests of the expiry engine that compare the whole job store.
    """
    from django.db.models.signals import post_save

    from apps.messaging import receivers
    from apps.payments.models import Payment
    from apps.reservations.models import Reservation
    from apps.reservations.signals import reservations_changed

    for kind in deadlines.kinds():
        if kind.name != deadlines.EXPIRY:
            deadlines.unregister(kind.name)
    reservations_changed.disconnect(sender=Reservation, dispatch_uid="reservation_messages")
    post_save.disconnect(sender=Payment, dispatch_uid="payment_messages")
    yield
    reservations_changed.connect(
        receivers.messages_for_reservations, sender=Reservation, dispatch_uid="reservation_messages"
    )
    post_save.connect(
        receivers.messages_for_payment, sender=Payment, dispatch_uid="payment_messages"
    )


@pytest.fixture
def start_worker(job_store, tmp_path):
    """
    Start ``manage.py start_scheduler`` on the test database and this test's job store.

    ``start(NAME=value, ...)`` adds settings to its environment. Each call
    starts one more and returns its ``Popen`` once it has started, with
    ``log()`` reading what it printed. Those still running at the end are
    killed.
    """
    started: list[subprocess.Popen] = []

    def start(**environ: str) -> subprocess.Popen:
        log_path = tmp_path / f"worker-{len(started)}.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DATABASE_URL": database_url(),
            "SCHEDULER_JOBSTORE_URL": job_store.url,
            "SCHEDULER_WORKER_MODE": "true",
            "SCHEDULER_POLL_SECONDS": "0.2",
            "PYTHONUNBUFFERED": "1",
            **environ,
        }
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "start_scheduler"],
                cwd=PROJECT_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process.log = log_path.read_text
        started.append(process)
        assert wait_for(lambda: "Scheduler started" in process.log(), timeout=20), process.log()
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def reconcile_command(*args) -> tuple[int, str]:
    """Run ``reconcile_expiry_jobs`` with ``args``: its exit code and what it printed."""
    out = StringIO()
    try:
        call_command("reconcile_expiry_jobs", *args, stdout=out)
    except CommandError as error:
        return error.returncode, out.getvalue()
    return 0, out.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MailServer:
    """
    A real SMTP server (aiosmtpd) on a free local port, and the messages it accepted.

    ``stop()`` and ``start()`` take it down and bring it back on the same
    port; ``refusing = True`` answers every message with a temporary failure;
    ``delay`` makes it slow.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[EmailMessage] = []
        self.refusing = False
        self.delay = 0.0  # seconds it takes to answer each message
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.refusing:
            return "451 4.3.0 Try again later"
        message = message_from_bytes(envelope.content, policy=policy.default)
        message.arrived_at = time.time()  # when the server took it, epoch seconds
        self.received.append(message)
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.received if m["To"] == address]


def subjects(server: MailServer, address: str) -> list[str]:
    """Each message to ``address`` as it arrived, by its subject: the words before the room."""
    return [
        re.sub(r" [0-9:]+ [A-Z+0-9-]+$", "", m["Subject"].split(": ")[0])
        for m in server.to(address)
    ]


def arrival(server: MailServer, address: str, prefix: str) -> float | None:
    """When the first message to ``address`` whose subject starts with ``prefix`` arrived."""
    for message in server.to(address):
        if message["Subject"].startswith(prefix):
            return message.arrived_at
    return None


@pytest.fixture
def mail_server(settings):
    """A running SMTP server that this process's Django sends through."""
    server = MailServer()
    server.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = server.port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    yield server
    server.stop()


# localstripe keeps its whole state in /tmp/localstripe.pickle: a fixed path
# (not the temp folder of TMPDIR) that every instance on the machine reads at
# start and rewrites after each change. This stand-in for `python -m
# localstripe` keeps it in a file of this test run's own instead, and listens
# on 127.0.0.1 only (localstripe itself binds every interface, IPv6 included).
# Its events leave about 1 s after the change, to the webhooks registered by
# then: a flush also drops those not yet sent, so that no test receives the
# events of the one before.
LOCALSTRIPE_MAIN = """
import asyncio
import logging
import pickle
import sys

from aiohttp import web
from localstripe import resources, server, webhooks

state, port = sys.argv[1], int(sys.argv[2])


def load(store):
    try:
        with open(state, "rb") as file:
            saved = pickle.load(file)
    except FileNotFoundError:
        return
    store.clear()
    store.update(saved)


def dump(store):
    with open(state, "wb") as file:
        pickle.dump(dict(store), file, protocol=pickle.HIGHEST_PROTOCOL)


unsent = set()


def schedule_webhook(event):
    sending = asyncio.ensure_future(webhooks._send_webhook(event))
    unsent.add(sending)
    sending.add_done_callback(unsent.discard)


def clear(store):
    for sending in list(unsent):
        sending.cancel()
    dict.clear(store)


resources.Store.try_load_from_disk = load
resources.Store.dump_to_disk = dump
resources.Store.clear = clear
resources.schedule_webhook = schedule_webhook
resources.store.try_load_from_disk()
log = logging.getLogger("aiohttp.access")  # also where it says how each webhook went
log.setLevel(logging.DEBUG)
log.addHandler(logging.StreamHandler())
web.run_app(server.app, host="127.0.0.1", port=port, access_log=log, print=None)
"""


def stripe_client(api_base: str, *, timeout: float = 10) -> stripe.StripeClient:
    """A Stripe client for ``api_base``: no retries, ``timeout`` seconds a request."""
    return stripe.StripeClient(
        api_key="sk_test_x",
        base_addresses={"api": api_base},
        http_client=stripe.RequestsClient(timeout=timeout),
        max_network_retries=0,
    )


class LocalStripe:
    """
    localstripe (a stateful fake Stripe) in a subprocess on a free local port.

    ``client`` is a ``stripe.StripeClient`` for it (no global ``stripe``
    setting is touched). ``stop()`` and ``start()`` take it down and bring it
    back on the same port: what it held survives (it is saved after every
    change), the webhooks given to ``webhook()`` are registered again, and
    events not yet delivered when it stopped (they leave about 1 s after the
    change) are lost.
    """

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.state = directory / "localstripe.pickle"
        self.log_path = directory / "localstripe.log"
        self.client = stripe_client(self.api_base)
        self.webhooks: dict[str, dict] = {}  # id -> what was registered
        self._process: subprocess.Popen | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def js_url(self) -> str:
        """Its stand-in for Stripe.js (``Stripe(key)``, a fake card element)."""
        return f"{self.api_base}/js.stripe.com/v3/"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _answers(self) -> bool:
        try:
            return requests.get(self.js_url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def _config(self, method: str, path: str, json: dict | None = None) -> None:
        response = requests.request(method, f"{self.api_base}/_config/{path}", json=json, timeout=5)
        response.raise_for_status()

    def start(self) -> None:
        with self.log_path.open("a") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-c", LOCALSTRIPE_MAIN, str(self.state), str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while not self._answers():
            assert self._process.poll() is None, f"localstripe exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"localstripe did not answer:\n{self.log()}"
            time.sleep(0.05)
        for webhook_id, fields in self.webhooks.items():
            self._config("POST", f"webhooks/{webhook_id}", fields)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def flush(self) -> None:
        """Forget every object, event not yet sent and webhook (none receives anything more)."""
        self._config("DELETE", "data")
        # localstripe cannot delete a webhook: one that takes no event is as good.
        for webhook_id in self.webhooks:
            self._config(
                "POST", f"webhooks/{webhook_id}", {**self.webhooks[webhook_id], "events": []}
            )
        self.webhooks.clear()

    def webhook(self, url: str, secret: str, events: list[str] | None = None) -> str:
        """POST each event (or those of ``events``) to ``url``, signed with ``secret``; its id."""
        webhook_id = f"wh_{len(self.webhooks) + 1}"
        fields = {
            "url": url,
            "secret": secret,
            **({"events": events} if events is not None else {}),
        }
        self._config("POST", f"webhooks/{webhook_id}", fields)
        self.webhooks[webhook_id] = fields
        return webhook_id

    def authorise(
        self, payment_intent_id: str, card: str = "4242424242424242"
    ) -> stripe.PaymentIntent:
        """Pay with ``card`` as a customer would: a manual-capture intent then requires capture."""
        payment_method = self.client.v1.payment_methods.create(
            {
                "type": "card",
                "card": {"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            }
        )
        self.client.v1.payment_intents.update(
            payment_intent_id, {"payment_method": payment_method.id}
        )
        return self.client.v1.payment_intents.confirm(payment_intent_id)


@pytest.fixture(scope="session")
def localstripe_server(tmp_path_factory):
    """One localstripe for the whole run, with its state in a folder of the run's own."""
    server = LocalStripe(tmp_path_factory.mktemp("localstripe"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def localstripe(localstripe_server) -> LocalStripe:
    """The run's localstripe, running and empty: no object, no webhook."""
    if not localstripe_server.running:  # a test that stopped it failed before starting it
        localstripe_server.start()
    localstripe_server.flush()
    return localstripe_server


class HangingServer:
    """A TCP server on a free local port that accepts connections and never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.connections: list[socket.socket] = []  # accepted, never answered
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                accepted, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections.append(accepted)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for accepted in self.connections:
            accepted.close()


@pytest.fixture
def hanging_server():
    """A server that takes each request and never answers: a provider that hangs."""
    server = HangingServer()
    yield server
    server.close()


@pytest.fixture
def closed_url():
    """
    ``http://127.0.0.1:PORT`` where nothing listens: every connection is refused.

    The port stays bound (not listening) until the test ends, so that nothing
    else can start listening on it meanwhile.
    """
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{placeholder.getsockname()[1]}"


class _FormFields(HTMLParser):
    """The named fields of one ``<form id=...>`` and the values a browser would submit."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.data: dict[str, list[str]] = {}
        self._inside = False
        self._select: str | None = None
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {key: value or "" for key, value in attrs}
        if tag == "form":
            self._inside = attr.get("id") == self.form_id
        name = attr.get("name")
        if not self._inside:
            return
        if tag == "input" and name and attr.get("type") not in ("submit", "button", "file"):
            if attr.get("type") not in ("checkbox", "radio") or "checked" in attr:
                self.data.setdefault(name, []).append(attr.get("value", "on"))
        elif tag == "select" and name:
            self._select = name
            self.data.setdefault(name, [])
        elif tag == "option" and self._select and "selected" in attr:
            self.data[self._select].append(attr.get("value", ""))
        elif tag == "textarea" and name:
            self._textarea, self._text = name, []

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            # A browser drops the newline that follows the opening tag.
            self.data[self._textarea] = ["".join(self._text).removeprefix("\n")]
            self._textarea = None


def form_fields(html: str, form_id: str) -> dict[str, list[str]]:
    """
    What a browser would submit, unchanged, from the page's form ``form_id``.

    Change some fields, then post them back: an admin change page saved as
    staff would save it (its inlines' management forms included), whatever
    fields the page has.
    """
    parser = _FormFields(form_id)
    parser.feed(html)
    return parser.data
