"""Reconcile, heartbeat, scheduler_status, /healthz and generate_slots."""

import json
import subprocess
import sys
from datetime import date, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db.models.signals import post_save
from django.utils import timezone
from factory.django import mute_signals

from apps.operations.models import SchedulerHeartbeat
from apps.operations.services import heartbeat_record
from apps.reservations.models import Reservation, ReservationEvent
from apps.rooms.models import TimeSlot
from escape_rooms_backend import scheduler

from .conftest import database_url
from .factories import ReservationFactory, RoomFactory, reserve

PROJECT_DIR = Path(__file__).resolve().parent.parent


def reconcile(*args) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("reconcile_expiry_jobs", *args, stdout=out)
    except CommandError as error:
        return error.returncode, out.getvalue()
    return 0, out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_reconcile_reports_fixes_and_then_finds_every_kind_of_drift_gone(job_store):
    in_step = reserve()  # pending with its job: no drift
    with mute_signals(post_save):
        missing = ReservationFactory()  # pending, no job
        overdue = ReservationFactory(expires_at=timezone.now() - timedelta(minutes=5))
    mistimed = reserve()
    Reservation.objects.filter(pk=mistimed.pk).update(
        expires_at=mistimed.expires_at + timedelta(minutes=7)
    )
    orphan = reserve()
    Reservation.objects.filter(pk=orphan.pk).update(status="paid", paid_at=timezone.now())
    scheduler.schedule_reservation_expiry(
        Reservation(pk=987654, expires_at=timezone.now() + timedelta(hours=1))
    )

    code, report = reconcile("--json")
    found = {(d["kind"], d["reservation_id"]) for d in json.loads(report)["drift"]}

    assert code == 1
    assert found == {
        ("missing_job", missing.pk),
        ("overdue", overdue.pk),
        ("wrong_run_time", mistimed.pk),
        ("orphan_job", orphan.pk),
        ("orphan_job", 987654),
    }

    code, table = reconcile("--fix")

    assert code == 0, table
    assert "expired" in table and "removed the job" in table and "scheduled the job" in table
    overdue.refresh_from_db()
    assert (overdue.status, overdue.cancellation_reason) == ("cancelled", "expired")
    assert overdue.events.last().cause == ReservationEvent.Cause.RECONCILE
    assert job_store.jobs() == {
        scheduler.expiry_job_id(r.pk): Reservation.objects.get(pk=r.pk).expires_at
        for r in (in_step, missing, mistimed)
    }

    code, table = reconcile()
    assert (code, table.rstrip().endswith("consistent.")) == (0, True)


@pytest.mark.django_db(transaction=True)
def test_reconcile_repairs_a_deleted_job_store(job_store):
    reservations = [reserve() for _ in range(3)]
    scheduler.stop_scheduler()
    job_store.delete()

    code, table = reconcile()
    assert code == 1
    assert table.count("missing_job") == 3

    assert reconcile("--fix")[0] == 0
    assert set(job_store.jobs()) == {scheduler.expiry_job_id(r.pk) for r in reservations}


@pytest.mark.django_db(transaction=True)
def test_the_reconcile_script_is_the_same_command(job_store, tmp_path):

    reserve()
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url(),
        "SCHEDULER_JOBSTORE_URL": job_store.url,
    }
    scheduler.stop_scheduler()
    job_store.delete()

    found = subprocess.run(
        [sys.executable, "scripts/reconcile.py"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    fixed = subprocess.run(
        [sys.executable, "scripts/reconcile.py", "--fix"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
    )

    assert found.returncode == 1 and "missing_job" in found.stdout, found.stderr
    assert fixed.returncode == 0 and "scheduled the job" in fixed.stdout, fixed.stderr


@pytest.mark.django_db(transaction=True)
def test_a_running_scheduler_beats_on_start_sweep_and_stop(job_store):
    scheduler.start_scheduler()
    beat = SchedulerHeartbeat.objects.get()
    assert beat.stopped_at is None

    scheduler.sweep()
    beat.refresh_from_db()
    assert beat.last_sweep_cancelled == 0 and beat.last_sweep_at is not None

    scheduler.stop_scheduler()
    beat.refresh_from_db()
    assert beat.stopped_at is not None


@pytest.mark.django_db
def test_scheduler_status_shows_the_runner_jobs_overdue_and_lateness(job_store):
    job_store.create()
    heartbeat_record(started=True)
    heartbeat_record(sweep_cancelled=2)
    with mute_signals(post_save):
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
    out = StringIO()

    call_command("scheduler_status", stdout=out)

    lines = dict(line.split(":", 1) for line in out.getvalue().splitlines())
    assert lines["Scheduler"].strip().startswith("running on ")
    assert lines["Overdue holds"].strip() == "1, oldest 3 min past expires_at"
    assert "cancelled 2" in lines["Last sweep"]
    assert lines["Lateness (1 h)"].strip() == "p50 4 ms, p95 10 ms, max 10 ms over 3 expiries"


@pytest.mark.django_db
def test_healthz_is_200_with_a_fresh_heartbeat(client, job_store):
    job_store.create()
    heartbeat_record(started=True)

    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "job_store": "ok", "scheduler": "ok"}
    assert body["heartbeat_age_seconds"] < 5


@pytest.mark.django_db
def test_healthz_is_503_without_a_heartbeat_or_with_a_stale_one(client, job_store, settings):
    job_store.create()
    assert client.get("/healthz").json()["checks"]["scheduler"] == "no heartbeat"
    assert client.get("/healthz").status_code == 503

    settings.SCHEDULER_SWEEP_SECONDS = 60
    heartbeat_record(started=True, now=timezone.now() - timedelta(seconds=121))

    response = client.get("/healthz")
    assert (response.status_code, response.json()["checks"]["scheduler"]) == (503, "stale")


@pytest.mark.django_db
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


@pytest.mark.django_db
def test_healthz_is_503_when_the_database_is_unreachable(client, job_store, monkeypatch):
    from django.db import connections
    from django.db.utils import OperationalError

    def refuse(self, *args, **kwargs):
        raise OperationalError("the database is unreachable")

    monkeypatch.setattr(type(connections["default"]), "create_cursor", refuse)

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "error: OperationalError"


@pytest.mark.django_db
def test_generate_slots_keeps_venue_time_across_daylight_saving(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    room = RoomFactory(slug="tomb", duration_minutes=60)
    out = StringIO()

    # Berlin moves from UTC+1 to UTC+2 in the night of 28-29 March 2026.
    call_command(
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2026-03-28",
        "--to",
        "2026-03-29",
        "--times",
        "10:00,18:30",
        stdout=out,
    )

    starts = [
        timezone.localtime(s.starts_at)
        for s in TimeSlot.objects.filter(room=room).order_by("starts_at")
    ]
    assert [(s.date(), s.strftime("%H:%M"), s.utcoffset()) for s in starts] == [
        (date(2026, 3, 28), "10:00", timedelta(hours=1)),
        (date(2026, 3, 28), "18:30", timedelta(hours=1)),
        (date(2026, 3, 29), "10:00", timedelta(hours=2)),
        (date(2026, 3, 29), "18:30", timedelta(hours=2)),
    ]
    assert "Created 4 slots" in out.getvalue()


@pytest.mark.django_db
def test_generate_slots_skips_existing_and_dry_run_creates_nothing():
    RoomFactory(slug="tomb")
    args = [
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2030-01-01",
        "--to",
        "2030-01-03",
        "--times",
        "10:00",
    ]
    dry = StringIO()

    call_command(*args, "--dry-run", stdout=dry)
    assert "Would create 3 slots" in dry.getvalue()
    assert TimeSlot.objects.count() == 0

    call_command(*args, stdout=StringIO())
    again = StringIO()
    call_command(*args, stdout=again)
    assert TimeSlot.objects.count() == 3
    assert "Created 0 slots" in again.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--room", "nope", "--from", "2030-01-01", "--to", "2030-01-02", "--times", "10:00"],
            "No room",
        ),
        (
            ["--room", "tomb", "--from", "2030-01-05", "--to", "2030-01-02", "--times", "10:00"],
            "--to",
        ),
        (
            ["--room", "tomb", "--from", "2030-01-01", "--to", "2030-01-02", "--times", "ten"],
            "--times",
        ),
        (
            ["--room", "tomb", "--from", "someday", "--to", "2030-01-02", "--times", "10:00"],
            "--from",
        ),
    ],
)
def test_generate_slots_refuses_operator_mistakes(args, message):
    RoomFactory(slug="tomb")

    with pytest.raises(CommandError, match=message):
        call_command("generate_slots", *args)

    assert TimeSlot.objects.count() == 0


@pytest.mark.django_db
def test_generate_slots_reports_times_the_clocks_skip_and_measures_slots_in_real_time(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    room = RoomFactory(slug="tomb", duration_minutes=60)
    err = StringIO()

    # 26 March 2028: 02:00 -> 03:00 (02:30 does not exist). 29 October 2028: 03:00 -> 02:00.
    call_command(
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2028-03-26",
        "--to",
        "2028-03-26",
        "--times",
        "02:30,03:30",
        stdout=StringIO(),
        stderr=err,
    )
    call_command(
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2028-10-29",
        "--to",
        "2028-10-29",
        "--times",
        "02:30",
        stdout=StringIO(),
    )
    again = StringIO()
    call_command(
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2028-10-29",
        "--to",
        "2028-10-29",
        "--times",
        "02:30",
        stdout=again,
    )

    assert "Skipped 2028-03-26 02:30: the clocks skip that time" in err.getvalue()
    slots = list(TimeSlot.objects.filter(room=room).order_by("starts_at"))
    assert [(s.starts_at.isoformat(), s.ends_at - s.starts_at) for s in slots] == [
        ("2028-03-26T01:30:00+00:00", timedelta(hours=1)),  # 03:30 CEST
        ("2028-10-29T00:30:00+00:00", timedelta(hours=1)),  # the first 02:30, CEST
    ]
    assert "Created 0 slots for" in again.getvalue()


@pytest.mark.django_db
def test_status_and_health_never_create_a_missing_job_store(client, job_store):
    heartbeat_record(started=True)

    response = client.get("/healthz")
    out = StringIO()
    with pytest.raises(CommandError, match="job store cannot be read"):
        call_command("scheduler_status", stdout=out)

    assert response.status_code == 503
    assert response.json()["checks"]["job_store"] == "error: JobStoreMissing"
    assert not job_store.path.exists()


@pytest.mark.django_db
def test_scheduler_status_warns_when_two_schedulers_run_on_one_store(job_store):
    import os
    import socket

    job_store.create()
    now = timezone.now()
    for pid in (os.getpid(), os.getppid()):  # two live processes on this host
        SchedulerHeartbeat.objects.create(hostname=socket.gethostname(), pid=pid, beat_at=now)
    out = StringIO()

    call_command("scheduler_status", stdout=out)

    assert "Warning: 2 schedulers run jobs" in out.getvalue()


@pytest.mark.django_db
def test_generate_slots_never_overlaps_existing_slots_after_a_time_zone_change(settings):
    room = RoomFactory(slug="tomb", duration_minutes=75)
    args = ["generate_slots", "--room", "tomb", "--from", "2030-06-01", "--to", "2030-06-01"]
    call_command(*args, "--times", "10:00,12:00", stdout=StringIO())  # UTC
    settings.TIME_ZONE = "Europe/Berlin"  # 10:00 CEST is 08:00 UTC, 12:00 CEST 10:00 UTC
    out = StringIO()

    call_command(*args, "--times", "10:00,12:00,15:00", stdout=out)

    starts = sorted(s.starts_at.strftime("%H:%M") for s in TimeSlot.objects.filter(room=room))
    assert starts == ["08:00", "10:00", "12:00"]  # 15:00 CEST would overlap 12:00 UTC
    assert "Created 1 slots for" in out.getvalue()
    assert "1 already existed, 1 skipped as overlapping" in out.getvalue()


@pytest.mark.django_db
def test_status_and_health_name_the_runner_not_a_newer_standby(client, job_store):
    import os
    import socket

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
