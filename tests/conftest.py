import sqlite3
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection
from sqlalchemy.engine import make_url

from apps.reservations.errors import ReservationError
from escape_rooms_backend import deadlines
from escape_rooms_backend import scheduler as scheduler_module

from .factories import TimeSlotFactory


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
