"""``manage.py scheduler_status`` and ``/healthz``: is a runner alive, what is in the store."""

import os
import socket
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.operations.models import SchedulerHeartbeat
from apps.operations.services import heartbeat_record
from apps.reservations.models import ReservationEvent
from escape_rooms_backend import scheduler

from ..factories import ReservationFactory, reserve

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hold_end_only")]


def status() -> dict[str, str]:
    """scheduler_status's lines, label -> value."""
    out = StringIO()
    call_command("scheduler_status", stdout=out)
    return {
        label: value.strip()
        for label, value in (line.split(":", 1) for line in out.getvalue().splitlines())
    }


def test_scheduler_status_shows_the_runner_jobs_per_kind_overdue_and_lateness(
    job_store, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first, _ = reserve(), reserve()
    heartbeat_record(started=True)
    heartbeat_record(sweep_cancelled=2)
    ReservationFactory(expires_at=timezone.now() - timedelta(minutes=3))
    ReservationEvent.objects.bulk_create(
        [
            ReservationEvent(
                reservation=ReservationFactory(
                    status="cancelled", cancelled_at=timezone.now(), cancellation_reason="expired"
                ),
                from_status="pending",
                to_status="cancelled",
                at=timezone.now(),
                cause="expiry_job",
                lateness_seconds=seconds,
            )
            for seconds in (0.002, 0.004, 0.010)
        ]
    )

    lines = status()

    assert lines["Scheduler"].startswith(f"running on {socket.gethostname()} pid {os.getpid()}")
    soonest = timezone.localtime(first.expires_at)
    assert lines["Deadline jobs"] == f"2 expiry; next due {soonest:%Y-%m-%d %H:%M:%S %Z}"
    assert lines["Overdue holds"] == "1, oldest 3 min past expires_at"
    assert "cancelled 2" in lines["Last sweep"]
    assert lines["Lateness (1 h)"] == "p50 4 ms, p95 10 ms, max 10 ms over 3 expiries"


def test_scheduler_status_fails_when_no_scheduler_is_running(job_store):
    job_store.create()
    out = StringIO()

    with pytest.raises(CommandError, match="No scheduler is running"):
        call_command("scheduler_status", stdout=out)

    assert "not running (no scheduler has ever reported)" in out.getvalue()


def test_healthz_is_200_with_a_fresh_heartbeat(client, job_store):
    job_store.create()
    heartbeat_record(started=True)

    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {
        "database": "ok",
        "job_store": "ok",
        "scheduler": "ok",
        "outbox": "ok",
    }
    assert body["heartbeat_age_seconds"] < 5


def test_healthz_is_503_without_a_heartbeat_or_with_a_stale_one(client, job_store, settings):
    job_store.create()
    assert client.get("/healthz").json()["checks"]["scheduler"] == "no heartbeat"
    assert client.get("/healthz").status_code == 503

    settings.SCHEDULER_SWEEP_SECONDS = 60
    heartbeat_record(started=True, now=timezone.now() - timedelta(seconds=121))

    response = client.get("/healthz")
    assert (response.status_code, response.json()["checks"]["scheduler"]) == (503, "stale")


def test_healthz_is_503_when_the_job_store_is_unreachable(client, settings, tmp_path):
    heartbeat_record(started=True)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    scheduler.stop_scheduler()
    settings.SCHEDULER_CONFIG = {
        **settings.SCHEDULER_CONFIG,
        "apscheduler.jobstores.default": {
            "type": "sqlalchemy",
            "url": f"sqlite:///{not_a_folder}/jobs.sqlite3",
        },
    }

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["checks"]["job_store"].startswith("error")


def test_healthz_is_503_when_the_database_is_unreachable(client, job_store, monkeypatch):
    from django.db import connections
    from django.db.utils import OperationalError

    def refuse(self, *args, **kwargs):
        raise OperationalError("the database is unreachable")

    monkeypatch.setattr(type(connections["default"]), "create_cursor", refuse)

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "error: OperationalError"


def test_status_and_health_never_create_a_missing_job_store(client, job_store):
    heartbeat_record(started=True)

    response = client.get("/healthz")
    out = StringIO()
    with pytest.raises(CommandError, match="job store cannot be read"):
        call_command("scheduler_status", stdout=out)

    assert response.status_code == 503
    assert response.json()["checks"]["job_store"] == "error: JobStoreMissing"
    assert "job store failing: JobStoreMissing" in out.getvalue()
    assert not job_store.path.exists()


def test_scheduler_status_warns_when_two_schedulers_run_on_one_store(job_store):
    job_store.create()
    now = timezone.now()
    for pid in (os.getpid(), os.getppid()):  # two live processes on this host
        SchedulerHeartbeat.objects.create(hostname=socket.gethostname(), pid=pid, beat_at=now)
    out = StringIO()

    call_command("scheduler_status", stdout=out)

    assert "Warning: 2 schedulers run jobs" in out.getvalue()


def test_status_and_health_name_the_runner_not_a_newer_standby(client, job_store):
    job_store.create()
    now = timezone.now()
    host = socket.gethostname()
    SchedulerHeartbeat.objects.create(hostname=host, pid=os.getpid(), role="runner", beat_at=now)
    SchedulerHeartbeat.objects.create(
        hostname=host, pid=os.getppid(), role="standby", beat_at=now + timedelta(seconds=1)
    )
    out = StringIO()

    call_command("scheduler_status", stdout=out)
    health = client.get("/healthz").json()

    assert f"running on {host} pid {os.getpid()}" in out.getvalue()
    assert f"Standbys:       {host} pid {os.getppid()}" in out.getvalue()
    assert (health["runner"], health["standbys"]) == (
        f"{host}:{os.getpid()}",
        [f"{host}:{os.getppid()}"],
    )
