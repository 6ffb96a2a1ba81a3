import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from apscheduler.triggers.date import DateTrigger

from apps.reservations.deadlines import HOLD_END
from escape_rooms_backend import timeline
from escape_rooms_backend.lifecycle import build_scheduler

from ..conftest import database_url, wait_for

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def start_worker(job_store, tmp_path):
    """
    Start ``manage.py start_scheduler`` on the test database and this test's job store.

    Each call starts one more and returns its ``Popen`` once it has started,
    with ``log()`` reading what it printed. Those still running at the end
    are killed.
    """
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        log_path = tmp_path / f"worker-{len(started)}.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DATABASE_URL": database_url(),
            "SCHEDULER_JOBSTORE_URL": job_store.url,
            "SCHEDULER_WORKER_MODE": "true",
            "SCHEDULER_POLL_SECONDS": "0.2",
            "PYTHONUNBUFFERED": "1",
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


@contextlib.contextmanager
def job_from_another_process(reservation, config):
    """Write the hold's end job of ``reservation`` from a scheduler of another process's own."""
    other_process = build_scheduler(config)
    other_process.start(paused=True)
    other_process.add_job(
        timeline.JOB_FUNC,
        trigger=DateTrigger(run_date=reservation.expires_at),
        args=[HOLD_END.name, reservation.pk],
        id=HOLD_END.job_id(reservation.pk),
        misfire_grace_time=None,
    )
    try:
        yield
    finally:
        other_process.shutdown(wait=False)
