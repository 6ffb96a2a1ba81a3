"""``manage.py reconcile_expiry_jobs`` and ``scripts/reconcile.py``: report drift, repair it."""

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation, ReservationEvent
from escape_rooms_backend import scheduler, timeline

from ..conftest import PROJECT_DIR, database_url, reconcile_command
from ..factories import ReservationFactory, reserve

# The expiry engine's own jobs: the messages' kinds have tests of their own.
pytestmark = pytest.mark.usefixtures("hold_end_only")


@pytest.mark.django_db
def test_reconcile_reports_fixes_and_then_finds_every_kind_of_drift_gone(
    job_store, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        in_step = reserve()  # pending with its job: no drift
        mistimed = reserve()
        orphan = reserve()
    missing = ReservationFactory()  # written directly: pending, no job
    overdue = ReservationFactory(expires_at=timezone.now() - timedelta(minutes=5))
    Reservation.objects.filter(pk=mistimed.pk).update(
        expires_at=mistimed.expires_at + timedelta(minutes=7)
    )
    Reservation.objects.filter(pk=orphan.pk).update(status="paid", paid_at=timezone.now())
    timeline.deadline_schedule(HOLD_END, 987654, timezone.now() + timedelta(hours=1))

    code, report = reconcile_command("--json")
    found = {(d["kind"], d["reservation_id"]) for d in json.loads(report)["drift"]}

    assert code == 1
    assert found == {
        ("missing_job", missing.pk),
        ("overdue", overdue.pk),
        ("wrong_run_time", mistimed.pk),
        ("orphan_job", orphan.pk),
        ("orphan_job", 987654),
    }

    code, table = reconcile_command("--fix")

    assert code == 0, table
    assert "handled" in table and "removed the job" in table and "scheduled the job" in table
    overdue.refresh_from_db()
    assert (overdue.status, overdue.cancellation_reason) == ("cancelled", "expired")
    assert overdue.events.last().cause == ReservationEvent.Cause.RECONCILE
    assert job_store.jobs() == {
        HOLD_END.job_id(r.pk): Reservation.objects.get(pk=r.pk).expires_at
        for r in (in_step, missing, mistimed)
    }

    code, table = reconcile_command()
    assert (code, table.rstrip().endswith("consistent.")) == (0, True)


@pytest.mark.django_db
def test_the_json_report_names_each_drifts_deadline_job_and_times(job_store):
    missing = ReservationFactory()

    code, out = reconcile_command("--json")

    report = json.loads(out)
    assert code == 1
    assert (report["needed"], report["jobs"]) == ({"expiry": 1}, {"expiry": 0})
    assert (report["consistent"], report["fixed"]) == (False, False)
    assert report["drift"] == [
        {
            "deadline": "expiry",
            "kind": "missing_job",
            "reservation_id": missing.pk,
            "job_id": f"expire_reservation:{missing.pk}",
            "due_at": missing.expires_at.isoformat(),
            "run_time": None,
            "repaired": None,
            "action": "",
        }
    ]


@pytest.mark.django_db
def test_drift_that_could_not_be_repaired_fails_the_fix(job_store, monkeypatch):
    ReservationFactory()
    monkeypatch.setattr(timeline, "deadline_schedule", lambda *args, **kwargs: False)

    code, table = reconcile_command("--fix")

    assert code == 1
    assert "scheduled the job at its due time (failed; see the log)" in table


@pytest.mark.django_db
def test_an_unreachable_job_store_exits_2(settings, tmp_path):
    settings.SCHEDULER_CONFIG = {
        **settings.SCHEDULER_CONFIG,
        "apscheduler.jobstores.default": {
            "type": "sqlalchemy",
            "url": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        },
    }
    scheduler.stop_scheduler()

    code, _ = reconcile_command()

    assert code == 2


@pytest.mark.django_db(transaction=True)
def test_reconcile_repairs_a_deleted_job_store(job_store):
    reservations = [reserve() for _ in range(3)]
    scheduler.stop_scheduler()
    job_store.delete()

    code, table = reconcile_command()
    assert code == 1
    assert table.count("missing_job") == 3
    assert not job_store.path.exists(), "a report must not create the store"

    assert reconcile_command("--fix")[0] == 0
    assert set(job_store.jobs()) == {HOLD_END.job_id(r.pk) for r in reservations}


@pytest.mark.django_db(transaction=True)
def test_the_reconcile_script_is_the_same_command(job_store):
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
