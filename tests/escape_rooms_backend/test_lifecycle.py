"""
This process's scheduler: where it starts, how it starts and stops, its heartbeat.

The background scheduler starts in the web server only, once, unless in
worker mode; importing Django starts nothing and loads no scheduler.
"""

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from apps.operations.models import SchedulerHeartbeat
from apps.reservations.models import Reservation
from escape_rooms_backend import lifecycle, scheduler
from escape_rooms_backend.compat import Scheduler
from escape_rooms_backend.lifecycle import StopSignals, record_heartbeat
from escape_rooms_backend.runner import Runner
from escape_rooms_backend.signals import scheduler_heartbeat

from ..conftest import wait_for
from ..factories import ReservationFactory
from .conftest import PROJECT_DIR, job_from_another_process

REPORT_STATE = (
    "from escape_rooms_backend.lifecycle import process; "
    "print('STATE', process.scheduler.state if process.scheduler else 'none')"
)


def _env(tmp_path, **extra) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SCHEDULER_JOBSTORE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def run_python(code: str, env: dict) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_web_server_entry_point_starts_the_scheduler(tmp_path):
    out = run_python(
        f"import config.wsgi; {REPORT_STATE}", _env(tmp_path, SCHEDULER_WORKER_MODE="false")
    )

    assert "STATE 1" in out  # APScheduler's STATE_RUNNING


def test_worker_mode_keeps_the_web_process_from_running_jobs(tmp_path):
    out = run_python(
        f"import config.wsgi; {REPORT_STATE}", _env(tmp_path, SCHEDULER_WORKER_MODE="true")
    )

    # Paused: it writes jobs, its store opened before the first request; it runs none.
    assert "STATE 2" in out  # APScheduler's STATE_PAUSED


def test_management_commands_start_no_scheduler(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", REPORT_STATE],
        cwd=PROJECT_DIR,
        env=_env(tmp_path, SCHEDULER_WORKER_MODE="false"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert "STATE none" in result.stdout, result.stderr


def test_setting_django_up_loads_no_apscheduler_or_sqlalchemy():
    # migrate, shell and every other command pay for no scheduler; the
    # suite's own database (SQLite or PostgreSQL) decides the settings' path.
    code = (
        "import sys, django; django.setup(); "
        "print(sorted(m for m in sys.modules if m.startswith(('apscheduler', 'sqlalchemy'))))"
    )

    out = run_python(code, {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"})

    assert out.strip() == "[]"


@pytest.mark.integration
def test_runserver_starts_one_scheduler_in_the_reloaders_child(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / "runserver.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}"],
            cwd=PROJECT_DIR,
            env=_env(tmp_path, SCHEDULER_WORKER_MODE="false"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so the reloader's child goes down with it
        )
    try:
        serving = wait_for(
            lambda: "Quit the server" in log_path.read_text(), timeout=30, interval=0.1
        )
        assert serving, log_path.read_text()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)

    starts = re.findall(r"scheduler Scheduler started", log_path.read_text())
    assert len(starts) == 1, log_path.read_text()


@pytest.mark.django_db(transaction=True)
def test_a_running_scheduler_beats_on_start_sweep_and_stop(job_store):
    scheduler.start_scheduler()
    beat = SchedulerHeartbeat.objects.get()
    assert (beat.role, beat.stopped_at) == ("runner", None)

    scheduler.sweep()
    beat.refresh_from_db()
    assert beat.last_sweep_cancelled == 0 and beat.last_sweep_at is not None

    scheduler.stop_scheduler()
    beat.refresh_from_db()
    assert beat.stopped_at is not None


@pytest.mark.django_db
def test_a_failing_heartbeat_receiver_is_logged_not_raised(caplog):
    def broken(sender, **fields):
        raise RuntimeError("no room for heartbeats")

    scheduler_heartbeat.connect(broken, dispatch_uid="test_broken_heartbeat")
    try:
        record_heartbeat(sweep_cancelled=3)
    finally:
        scheduler_heartbeat.disconnect(dispatch_uid="test_broken_heartbeat")

    failure = next(r for r in caplog.records if "Could not record the scheduler heartbeat" in r.msg)
    assert failure.levelname == "ERROR"
    assert str(failure.exc_info[1]) == "no room for heartbeats"
    # The other receivers still ran: the operations app recorded the beat.
    assert SchedulerHeartbeat.objects.get().last_sweep_cancelled == 3


def test_stop_signals_ask_the_worker_to_stop_instead_of_killing_it(caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop = StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.event.wait(2)
        os.kill(os.getpid(), signal.SIGINT)
        stop.wait()  # returns at once: the event is set
    finally:
        stop.restore()

    assert {sig: signal.getsignal(sig) for sig in previous} == previous
    assert caplog.messages == [
        "Received SIGTERM, stopping the scheduler",
        "Received SIGINT again; still stopping",
    ]


@pytest.mark.django_db(transaction=True)
def test_a_busy_job_store_at_start_is_tried_again(monkeypatch, caplog):
    real_start = Scheduler.start
    tries = []

    def start(self, *args, **kwargs):
        tries.append(kwargs)
        if len(tries) == 1:
            raise OperationalError("database is locked")
        return real_start(self, *args, **kwargs)

    monkeypatch.setattr(Scheduler, "start", start)

    started = scheduler.start_scheduler()

    assert started.running
    assert tries == [{"paused": True}] * 2
    assert "Job store busy at start; trying again (1/5)" in caplog.messages


def test_a_worker_that_cannot_start_says_why_and_gives_the_signals_back(monkeypatch, caplog):
    previous = signal.getsignal(signal.SIGTERM)

    def refuse(self):
        raise RuntimeError("the runner lock is unreachable")

    monkeypatch.setattr(Runner, "start", refuse)

    with pytest.raises(RuntimeError, match="the runner lock is unreachable"):
        scheduler.start_scheduler(blocking=True)

    assert "Scheduler failed to start" in caplog.messages
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_runner_polling_rarely_still_looks_for_new_jobs_within_the_notify_horizon(
    settings, monkeypatch
):
    # Only jobs due within NOTIFY_HORIZON_SECONDS are announced: the runner
    # must look at the store at least that often, whatever the poll setting.
    settings.SCHEDULER_POLL_SECONDS = 600
    settings.SCHEDULER_SWEEP_SECONDS = 3600
    monkeypatch.setattr(lifecycle, "NOTIFY_HORIZON_SECONDS", 0.2)
    runner = scheduler.start_scheduler()
    time.sleep(0.3)  # let the runner finish its first pass and go to sleep
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=0.8))
    with job_from_another_process(reservation, settings.SCHEDULER_CONFIG):
        cancelled = wait_for(
            lambda: Reservation.objects.get(pk=reservation.pk).status == "cancelled", timeout=3
        )

    assert runner.running
    assert cancelled
    reservation.refresh_from_db()
    assert (reservation.cancelled_at - reservation.expires_at).total_seconds() < 1.0


def test_a_job_store_that_cannot_be_opened_fails_the_start_loudly_and_a_later_start_works(
    job_store, caplog
):
    unopenable = {
        "apscheduler.jobstores.default": {
            "type": "sqlalchemy",
            "url": "sqlite:////proc/1/no/jobs.sqlite3",
        }
    }
    previous = signal.getsignal(signal.SIGTERM)

    with pytest.raises(OSError):
        scheduler.start_scheduler(blocking=True, config=unopenable)

    assert "Scheduler failed to start" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is previous  # the worker's handlers were put back
    started = scheduler.start_scheduler()  # the settings' store: this one competes and runs
    assert wait_for(lambda: lifecycle.process.runner is not None, timeout=5)
    assert wait_for(lambda: lifecycle.process.runner.is_runner, timeout=5)
    assert started.running
