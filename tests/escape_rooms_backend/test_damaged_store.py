"""
A SQLite job store damaged by a crash: moved aside, rebuilt, and swept meanwhile.

The store is a cache of the reservations' deadlines. A runner that finds its
file unreadable keeps it for inspection under another name, starts an empty
one, rebuilds every pending deadline's job from the database, and its sweep
runs whatever state the store is in.
"""

import logging
import os
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation
from escape_rooms_backend import scheduler, timeline
from escape_rooms_backend.jobstore import JobStoreDamaged, check

from ..conftest import wait_for
from ..factories import ReservationFactory, TimeSlotFactory, reserve

pytestmark = [pytest.mark.usefixtures("hold_end_only"), pytest.mark.django_db(transaction=True)]

PAGE = 4096


def damage(path: Path, how: str) -> None:
    """Damage the store's file as a crash would: cut mid-page, or a page overwritten."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every job in the main file
    size = path.stat().st_size
    assert size > 8 * PAGE, "too few jobs to damage the middle of the file"
    if how == "truncated":
        os.truncate(path, size // 2 + 100)
    else:
        with path.open("r+b") as file:
            file.seek(2 * PAGE)
            file.write(b"\xde\xad" * (PAGE // 2))


def aside(path: Path) -> list[Path]:
    """The main files set aside (each may have its -wal and -shm beside it)."""
    found = path.parent.glob(f"{path.name}.damaged-*")
    return sorted(p for p in found if not p.name.endswith(("-wal", "-shm")))


def pending(**filters) -> int:
    return Reservation.objects.filter(status=Reservation.Status.PENDING, **filters).count()


@pytest.fixture
def store_with_jobs(job_store):
    """200 holds for later with their jobs, 31 lapsed while no runner ran; then no scheduler."""
    job_store.create()
    later = [reserve(TimeSlotFactory(), customer_email=f"l{n}@example.com") for n in range(200)]
    lapsed = [
        ReservationFactory(expires_at=timezone.now() - timedelta(seconds=30)) for _ in range(31)
    ]
    assert {HOLD_END.job_id(r.pk) for r in later} <= set(job_store.jobs())
    scheduler.stop_scheduler()
    return later, lapsed


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_a_runner_starting_on_a_damaged_store_replaces_it_and_rebuilds_every_job(
    job_store, store_with_jobs, how, caplog
):
    later, lapsed = store_with_jobs
    damage(job_store.path, how)
    with pytest.raises(JobStoreDamaged):
        check(scheduler.get_scheduler()._lookup_jobstore("default"))
    scheduler.stop_scheduler()

    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    started = time.monotonic()
    scheduler.start_scheduler()

    # Swept: every lapsed hold released, whatever the store held.
    assert wait_for(lambda: pending(expires_at__lte=timezone.now()) == 0, timeout=5)
    swept = time.monotonic() - started
    # Rebuilt: every hold still running has its job again, in a fresh file.
    wanted = {HOLD_END.job_id(r.pk) for r in later}
    assert wait_for(lambda: wanted <= set(job_store.jobs()), timeout=5), len(job_store.jobs())
    rebuilt = time.monotonic() - started
    print(f"\n{how}: 31 lapsed holds released {swept:.2f} s, 200 jobs rebuilt {rebuilt:.2f} s")
    (kept,) = aside(job_store.path)
    assert f"The job store {job_store.path} is damaged" in caplog.text
    assert f"moved it aside to {kept}" in caplog.text
    assert kept.stat().st_size > 0  # kept for inspection
    check(scheduler.get_scheduler()._lookup_jobstore("default"))  # the new one is sound


def test_a_store_damaged_under_a_running_runner_is_replaced_at_its_next_sweep(
    job_store, store_with_jobs, caplog, settings
):
    settings.SCHEDULER_SWEEP_SECONDS = 1
    later, _ = store_with_jobs
    scheduler.start_scheduler()
    wanted = {HOLD_END.job_id(r.pk) for r in later}
    assert wait_for(lambda: wanted <= set(job_store.jobs()), timeout=5)
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")

    damage(job_store.path, "truncated")

    assert wait_for(lambda: aside(job_store.path), timeout=5), caplog.text
    assert wait_for(lambda: wanted <= set(job_store.jobs()), timeout=5)
    soon = reserve(TimeSlotFactory(), hold_seconds=1, customer_email="soon@example.com")
    assert wait_for(lambda: pending(pk=soon.pk) == 0, timeout=4)  # by its job, on time
    assert soon.events.last().cause == "expiry_job"


def test_web_processes_write_to_the_new_file_not_the_one_set_aside(job_store, store_with_jobs):
    web = timeline._store()  # this process's pooled connections to the old file
    assert web.get_next_run_time() is not None
    runner_view = scheduler.get_scheduler()._lookup_jobstore("default")
    runner_view.replace_damaged("as the runner of another process found")

    made = reserve(TimeSlotFactory(), customer_email="after@example.com")

    assert HOLD_END.job_id(made.pk) in job_store.jobs()
    (kept,) = aside(job_store.path)
    with sqlite3.connect(kept) as db:
        ids = {row[0] for row in db.execute("SELECT id FROM apscheduler_jobs")}
    assert HOLD_END.job_id(made.pk) not in ids


def test_health_and_status_name_the_damaged_job_store(client, job_store, store_with_jobs):
    damage(job_store.path, "overwritten")

    health = client.get("/healthz")
    out = []
    with pytest.raises(Exception, match="job store cannot be read"):
        call_command("scheduler_status", stdout=_Lines(out))

    assert health.status_code == 503
    assert health.json()["checks"]["job_store"] == "error: JobStoreDamaged"
    assert f"job store failing: JobStoreDamaged: the job store {job_store.path} is damaged" in (
        "".join(out)
    )


class _Lines:
    def __init__(self, out: list[str]) -> None:
        self.out = out

    def write(self, text: str, *args, **kwargs) -> None:
        self.out.append(text)

    def flush(self) -> None:
        pass


def test_a_store_deleted_under_the_runner_and_made_anew_empty_is_rebuilt(
    job_store, store_with_jobs, caplog
):
    """Deleted while running (docs say: stop every process first), then a new empty file."""
    later, _ = store_with_jobs
    scheduler.start_scheduler()
    wanted = {HOLD_END.job_id(r.pk) for r in later}
    assert wait_for(lambda: wanted <= set(job_store.jobs()), timeout=5)

    job_store.delete()
    sqlite3.connect(job_store.path).close()  # a process's next connection makes an empty file

    assert wait_for(lambda: wanted <= set(job_store.jobs()), timeout=10), caplog.text
    assert "no table apscheduler_jobs" in caplog.text or "no such table" in caplog.text
    soon = reserve(TimeSlotFactory(), hold_seconds=1, customer_email="soon@example.com")
    assert wait_for(lambda: pending(pk=soon.pk) == 0, timeout=4)
    assert soon.events.last().cause == "expiry_job"
