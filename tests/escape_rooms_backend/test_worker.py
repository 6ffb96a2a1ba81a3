"""``manage.py start_scheduler`` as a separate process, as in production worker mode."""

import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings

from apps.messaging.deadlines import DELIVERY, REMINDER
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation
from apps.reservations.services import reservation_create
from apps.rooms.models import TimeSlot

from ..conftest import database_url, wait_for
from ..factories import TimeSlotFactory
from .conftest import PROJECT_DIR

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture
def worker(start_worker):
    return start_worker()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_the_worker_expires_holds_from_other_processes_and_stops_cleanly(worker, stop_signal):
    slot = TimeSlotFactory()
    reservation = reservation_create(
        time_slot_id=slot.pk,
        customer_name="John Doe",
        customer_email="john@example.com",
        party_size=3,
        hold_seconds=1,
    )

    cancelled = wait_for(
        lambda: Reservation.objects.get(pk=reservation.pk).status == Reservation.Status.CANCELLED,
        timeout=4,
    )
    assert cancelled, worker.log()
    reservation.refresh_from_db()
    assert (reservation.cancelled_at - reservation.expires_at).total_seconds() < 1.0
    assert TimeSlot.objects.get(pk=slot.pk).status == TimeSlot.Status.ACTIVE

    worker.send_signal(stop_signal)
    assert worker.wait(timeout=15) == 0
    log = worker.log()
    assert f"scheduler Cancelled expired reservation {reservation.pk} for John Doe - " in log
    assert f"Received {stop_signal.name}, stopping the scheduler" in log
    assert "scheduler Scheduler stopped" in log
    assert "Scheduler worker stopped." in log


def test_a_job_written_by_a_shell_session_is_in_the_store_when_it_exits(job_store, tmp_path):
    slot = TimeSlotFactory()
    script = (
        "from apps.reservations.services import reservation_create; "
        f"r = reservation_create(time_slot_id={slot.pk}, customer_name='Shell', "
        "customer_email='shell@example.com', party_size=3); print('RESERVED', r.pk)"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": database_url(),
        "SCHEDULER_JOBSTORE_URL": job_store.url,
    }

    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    reservation = Reservation.objects.get(time_slot=slot)
    assert f"RESERVED {reservation.pk}" in result.stdout
    jobs = job_store.jobs()
    assert jobs.pop(HOLD_END.job_id(reservation.pk)) == reservation.expires_at
    lead = timedelta(seconds=settings.HOLD_REMINDER_SECONDS)
    assert jobs.pop(REMINDER.job_id(reservation.pk)) == reservation.expires_at - lead
    # The hold-placed message's delivery, due at once.
    [delivery] = jobs
    assert delivery.startswith(DELIVERY.job_prefix)
