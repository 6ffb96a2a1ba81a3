"""Where the background scheduler starts: in the web server only, once, unless in worker mode."""

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import wait_for

PROJECT_DIR = Path(__file__).resolve().parent.parent
REPORT_STATE = (
    "from escape_rooms_backend import scheduler; "
    "print('STATE', scheduler._scheduler.state if scheduler._scheduler else 'none')"
)


def run_python(code: str, tmp_path, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_DIR,
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _env(tmp_path, **extra) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SCHEDULER_JOBSTORE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def test_the_web_server_entry_point_starts_the_scheduler(tmp_path):
    out = run_python(f"import config.wsgi; {REPORT_STATE}", tmp_path, SCHEDULER_WORKER_MODE="false")

    assert "STATE 1" in out  # apscheduler's STATE_RUNNING


def test_worker_mode_keeps_the_web_process_from_running_jobs(tmp_path):
    out = run_python(f"import config.wsgi; {REPORT_STATE}", tmp_path, SCHEDULER_WORKER_MODE="true")

    assert "STATE none" in out


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
