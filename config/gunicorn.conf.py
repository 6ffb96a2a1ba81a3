"""
gunicorn for the production stack: ``gunicorn -c config/gunicorn.conf.py``.

Each worker loads ``config.wsgi``, so each offers a background scheduler; the
runner lock (``escape_rooms_backend.runner``) lets exactly one of them, or a
``manage.py start_scheduler`` worker, run the jobs. With
``SCHEDULER_WORKER_MODE=true`` the web workers only write jobs.

The counters of ``/metrics`` that the web workers keep (the reserve
outcomes) are shared through files in ``PROMETHEUS_MULTIPROC_DIR`` (default
``var/prometheus``; its ``*.db`` files are deleted when gunicorn starts): any
worker that answers a scrape then reports every worker's counts.
"""

import os
from pathlib import Path

PROMETHEUS_DIR = Path(
    os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", str(Path(__file__).resolve().parent.parent / "var/prometheus")
    )
)

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
wsgi_app = "config.wsgi:application"
# Not needed; with --preload (GUNICORN_CMD_ARGS) each worker starts its own
# scheduler after the fork (apps.reservations.apps.start_background_scheduler).
preload_app = False
timeout = 30
graceful_timeout = 30
accesslog = "-"
errorlog = "-"


def on_starting(server) -> None:
    # Counts of an earlier run would be added to this one's. Only the
    # library's own files: the folder may be shared with something else.
    PROMETHEUS_DIR.mkdir(parents=True, exist_ok=True)
    for counts in PROMETHEUS_DIR.glob("*.db"):
        counts.unlink(missing_ok=True)


def worker_exit(server, worker) -> None:
    # In the worker, before the interpreter shuts its thread pools down (an
    # atexit handler would come too late: the scheduler, still running, would
    # hand due jobs to pools that refuse them, and APScheduler deletes a date
    # job whose submission failed). Running jobs finish; due ones stay stored.
    from escape_rooms_backend.scheduler import stop_scheduler

    stop_scheduler()


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
