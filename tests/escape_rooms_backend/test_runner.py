"""
One runner per job store, standbys that take over, every expiry exactly once.

Real worker processes (``manage.py start_scheduler``) against one job store:
the per-test SQLite file (file lock, polling) on SQLite runs, PostgreSQL
itself (advisory lock, LISTEN/NOTIFY) on PostgreSQL runs.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection
from sqlalchemy import create_engine, text

from apps.reservations.models import Reservation, ReservationEvent
from escape_rooms_backend import scheduler as scheduler_module
from escape_rooms_backend.runner import AdvisoryLock, FileLock

from ..conftest import PROJECT_DIR, database_url, wait_for
from ..factories import RoomFactory, TimeSlotFactory, reserve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def postgres_store_url() -> str:
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    host = db["HOST"] or "localhost"
    return f"postgresql+psycopg://{credentials}@{host}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def store_url(job_store, settings):
    """The job store every process shares: PostgreSQL's own on PostgreSQL runs."""
    if connection.vendor != "postgresql":
        yield job_store.url
        return
    url = postgres_store_url()
    settings.SCHEDULER_CONFIG = {
        **settings.SCHEDULER_CONFIG,
        "apscheduler.jobstores.default": {"type": "sqlalchemy", "url": url},
    }
    scheduler_module.stop_scheduler()
    yield url
    scheduler_module.stop_scheduler()
    engine = create_engine(url)
    with engine.begin() as db:
        db.execute(text("DELETE FROM apscheduler_jobs"))
    engine.dispose()


class Workers:
    def __init__(self, store_url: str, tmp_path: Path, **env: str) -> None:
        self.store_url = store_url
        self.tmp_path = tmp_path
        self.env = env
        self.processes: list[subprocess.Popen] = []

    def start(self, count: int) -> None:
        for index in range(len(self.processes), len(self.processes) + count):
            log = (self.tmp_path / f"worker-{index}.log").open("w")
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "start_scheduler"],
                    cwd=PROJECT_DIR,
                    env={
                        **os.environ,
                        "DJANGO_SETTINGS_MODULE": "config.settings.local",
                        "DATABASE_URL": database_url(),
                        "SCHEDULER_JOBSTORE_URL": self.store_url,
                        "SCHEDULER_WORKER_MODE": "true",
                        "SCHEDULER_POLL_SECONDS": "0.2",
                        "PYTHONUNBUFFERED": "1",
                        **self.env,
                    },
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        assert wait_for(
            lambda: all("Scheduler started" in self.log(i) for i in range(len(self.processes))),
            timeout=30,
            interval=0.1,
        ), self.logs()

    def log(self, index: int) -> str:
        return (self.tmp_path / f"worker-{index}.log").read_text()

    def logs(self) -> str:
        return "\n".join(self.log(i) for i in range(len(self.processes)))

    def runners(self) -> list[int]:
        return [
            i
            for i, p in enumerate(self.processes)
            if p.poll() is None and "This process is the runner" in self.log(i)
        ]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def workers(store_url, tmp_path):
    created = []

    def make(**env) -> Workers:
        group = Workers(store_url, tmp_path, **env)
        created.append(group)
        return group

    yield make
    for group in created:
        group.stop()


def expiries() -> Counter[int]:
    return Counter(
        ReservationEvent.objects.filter(
            to_status="cancelled", detail="", lateness_seconds__isnull=False
        ).values_list("reservation_id", flat=True)
    )


def test_three_schedulers_on_one_store_expire_each_hold_exactly_once_and_on_time(workers):
    group = workers()
    group.start(3)
    assert wait_for(lambda: len(group.runners()) == 1, timeout=10), group.logs()
    room = RoomFactory(max_players=6)
    count = 300
    reservations = [
        reserve(TimeSlotFactory(room=room), hold_seconds=3 + 10 * index / count)
        for index in range(count)
    ]

    done = wait_for(
        lambda: (
            not Reservation.objects.filter(
                pk__in=[r.pk for r in reservations], status="pending"
            ).exists()
        ),
        timeout=30,
        interval=0.5,
    )

    assert done, group.logs()
    once = expiries()
    assert set(once) == {r.pk for r in reservations}
    assert max(once.values()) == 1, "a hold was expired twice"
    late = sorted(
        ReservationEvent.objects.filter(
            reservation__in=reservations, lateness_seconds__isnull=False
        ).values_list("lateness_seconds", flat=True)
    )
    p50, worst = late[count // 2] * 1000, late[-1] * 1000
    print(f"\n{count} holds, 3 schedulers: lateness p50 {p50:.1f} ms, max {worst:.1f} ms")
    assert late[-1] < 1.0
    assert len(group.runners()) == 1


def test_a_standby_takes_over_when_the_runner_is_killed(workers):
    group = workers(SCHEDULER_FAILOVER_SECONDS="3")
    group.start(2)
    assert wait_for(lambda: len(group.runners()) == 1, timeout=10), group.logs()
    runner = group.runners()[0]
    room = RoomFactory(max_players=6)
    reservations = [
        reserve(TimeSlotFactory(room=room), hold_seconds=1 + index / 10) for index in range(30)
    ]
    # Kill it while holds are falling due: some expired by it, the rest left.
    assert wait_for(lambda: Reservation.objects.filter(status="cancelled").count() >= 3, timeout=5)

    group.processes[runner].kill()  # kill -9: no clean stop, the lock goes with the process
    group.processes[runner].wait()
    killed = time.monotonic()
    standby = 1 - runner
    assert wait_for(lambda: "This process is the runner" in group.log(standby), timeout=10)
    takeover = time.monotonic() - killed

    done = wait_for(
        lambda: (
            not Reservation.objects.filter(
                pk__in=[r.pk for r in reservations], status="pending"
            ).exists()
        ),
        timeout=15,
        interval=0.2,
    )
    assert done, group.logs()
    once = expiries()
    assert all(once[r.pk] == 1 for r in reservations)
    worst = max(
        ReservationEvent.objects.filter(
            reservation__in=reservations, lateness_seconds__isnull=False
        ).values_list("lateness_seconds", flat=True)
    )
    print(f"\nfailover: standby took over {takeover:.2f} s after kill -9 (limit 3 s)")
    print(f"worst lateness {worst:.3f} s")
    assert takeover <= 3.0
    assert worst < 3 + 1.5


def test_the_file_lock_admits_one_holder(tmp_path):
    first, second = FileLock(tmp_path / "jobs.runner.lock"), FileLock(tmp_path / "jobs.runner.lock")

    assert first.try_acquire() is True
    assert second.try_acquire() is False
    first.release()
    assert second.try_acquire() is True
    second.release()


def terminate_the_holder(key: int) -> None:
    """End the PostgreSQL session that holds the advisory lock ``key`` in this database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, classid::bigint, objid::bigint FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        holders = [
            pid
            for pid, high, low in cursor.fetchall()
            if int.from_bytes(((high << 32) | low).to_bytes(8, "big"), "big", signed=True) == key
        ]
        assert len(holders) == 1, holders
        cursor.execute("SELECT pg_terminate_backend(%s)", holders)


@pytest.mark.postgres
def test_the_advisory_lock_admits_one_holder_and_frees_with_its_connection():
    if connection.vendor != "postgresql":
        pytest.fail("run with DATABASE_URL=postgres://... (make test-postgres)")
    url = postgres_store_url()
    first, second = AdvisoryLock(url), AdvisoryLock(url)

    assert first.try_acquire() is True
    assert second.try_acquire() is False
    terminate_the_holder(first.key)  # the holder's connection dies
    assert first.held() is False
    assert second.try_acquire() is True
    second.release()


@pytest.mark.postgres
def test_on_postgres_a_job_written_elsewhere_fires_on_time_without_polling(workers):
    if connection.vendor != "postgresql":
        pytest.fail("run with DATABASE_URL=postgres://... (make test-postgres)")
    group = workers(SCHEDULER_POLL_SECONDS="600")  # only NOTIFY can wake it in time
    group.start(1)
    assert wait_for(lambda: len(group.runners()) == 1, timeout=10), group.logs()
    reservation = reserve(TimeSlotFactory(), hold_seconds=3)

    done = wait_for(
        lambda: Reservation.objects.get(pk=reservation.pk).status == "cancelled", timeout=6
    )

    assert done, group.logs()
    event = ReservationEvent.objects.get(reservation=reservation, lateness_seconds__isnull=False)
    print(f"\nNOTIFY-woken expiry: {event.lateness_seconds * 1000:.1f} ms after expires_at")
    assert event.lateness_seconds < 1.0


@pytest.mark.postgres
def test_on_postgres_a_hold_made_through_gunicorn_expires_within_a_second(store_url, tmp_path):
    if connection.vendor != "postgresql":
        pytest.fail("run with DATABASE_URL=postgres://... (make test-postgres)")
    import json
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    slot = TimeSlotFactory(room=RoomFactory(max_players=6))
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "config/gunicorn.conf.py",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
        ],
        cwd=PROJECT_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DATABASE_URL": database_url(),
            "SCHEDULER_JOBSTORE_URL": store_url,
            "SCHEDULER_POLL_SECONDS": "600",  # NOTIFY, not polling, must wake the runner
            "RESERVATION_HOLD_SECONDS": "3",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        logs = lambda: (tmp_path / "gunicorn.log").read_text()  # noqa: E731
        assert wait_for(lambda: "This process is the runner" in logs(), timeout=30), logs()
        body = json.dumps(
            {
                "slot_id": slot.pk,
                "customer_name": "Guni Corn",
                "customer_email": "g@example.com",
                "party_size": 3,
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/reservations/",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        token = json.loads(urllib.request.urlopen(request, timeout=10).read())["token"]  # noqa: S310
        reservation = Reservation.objects.get(token=token)

        assert wait_for(
            lambda: Reservation.objects.get(pk=reservation.pk).status == "cancelled", timeout=8
        ), logs()
        event = ReservationEvent.objects.get(
            reservation=reservation, lateness_seconds__isnull=False
        )
        late_ms = event.lateness_seconds * 1000
        print(f"\ngunicorn (2 workers) on PostgreSQL: released {late_ms:.1f} ms late")
        assert event.lateness_seconds < 1.0
        assert logs().count("This process is the runner") == 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_the_advisory_lock_key_names_the_database_not_the_url_spelling():
    spellings = [
        "postgresql+psycopg://postgres@127.0.0.1:5432/venue",
        "postgresql+psycopg://postgres@localhost/venue?sslmode=prefer",
        "postgresql+psycopg://other:secret@db.internal:5432/venue",
    ]

    assert len({AdvisoryLock(url).key for url in spellings}) == 1
    assert (
        AdvisoryLock("postgresql+psycopg://postgres@127.0.0.1/other").key
        != AdvisoryLock(spellings[0]).key
    )


def test_a_deleted_lock_file_is_a_lost_lock_not_a_second_runner(tmp_path):
    path = tmp_path / "jobs.runner.lock"
    first, second = FileLock(path), FileLock(path)
    assert first.try_acquire() is True

    path.unlink()  # a clean-up script, a deploy

    assert second.try_acquire() is True  # a new file, free
    assert first.held() is False  # ... so the old holder knows it lost


def test_a_runner_that_cannot_start_running_gives_the_lock_back(tmp_path):
    from escape_rooms_backend.runner import Runner

    lock = FileLock(tmp_path / "jobs.runner.lock")
    calls = []

    def on_runner():
        calls.append("runner")
        if len(calls) == 1:
            raise RuntimeError("database is locked")

    runner = Runner(
        lock, interval=60, on_runner=on_runner, on_standby=lambda: calls.append("standby")
    )

    runner.check()
    assert (runner.is_runner, lock.held()) == (False, False)
    other = FileLock(tmp_path / "jobs.runner.lock")
    assert other.try_acquire() is True  # free for others
    runner.check()
    assert runner.is_runner is False  # the other holder keeps it
    other.release()
    runner.check()
    assert (runner.is_runner, calls) == (True, ["runner", "standby", "runner"])
