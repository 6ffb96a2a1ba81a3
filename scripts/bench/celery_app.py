"""
The alternative a user would pick instead of APScheduler: one Celery task per
reservation with an ETA at its ``expires_at``, on the local Redis. Bench only.

    celery -A scripts.bench.celery_app worker -P threads -c 4

The task calls the same service as our expiry job, so the phases compare the
schedulers, not the expiry.
"""

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.bench")
django.setup()

app = Celery(
    "escape_rooms_bench",
    broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
)
app.conf.update(
    # One queue per benchmark run, so that two runs on one Redis stay apart.
    task_default_queue=os.environ.get("BENCH_CELERY_QUEUE", "escape_rooms_bench"),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.expire_reservation", ignore_result=True)
def expire_reservation(reservation_id: int) -> None:
    """Expire one reservation at its ETA: ``reservation_expire``, as our job does."""
    from django.db import close_old_connections

    from apps.reservations.services import reservation_expire

    close_old_connections()
    try:
        reservation_expire(reservation_id=reservation_id)
    finally:
        close_old_connections()
