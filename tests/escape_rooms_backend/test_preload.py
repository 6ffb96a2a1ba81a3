"""
gunicorn --preload: the master loads the app, then forks the workers.

Nothing holding a thread or a connection may be made in the master, where
every worker would share it. With ``GUNICORN_CMD_ARGS=--preload`` (as
platforms set it) the product must work exactly as without it.
"""

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.reservations.models import Reservation, ReservationEvent

from ..conftest import PROJECT_DIR, database_url, wait_for
from ..factories import RoomFactory, TimeSlotFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(url: str, body: dict | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 (a local test server)
        url, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()[:300]


@pytest.fixture
def preloaded(job_store, tmp_path, request):
    """
    gunicorn with --preload from GUNICORN_CMD_ARGS, 3 workers, on this test's databases.

    ``@pytest.mark.gunicorn_args("--max-requests 5")`` adds to the arguments;
    ``--no-preload`` among them (not gunicorn's) leaves ``--preload`` out.
    """
    marker = request.node.get_closest_marker("gunicorn_args")
    extra = f" {marker.args[0]}" if marker else ""
    preload = "" if "--no-preload" in extra else "--preload "
    extra = extra.replace(" --no-preload", "")
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "--workers", "3"],
        cwd=PROJECT_DIR,
        env={
            **os.environ,
            "GUNICORN_CMD_ARGS": f"{preload}--bind 127.0.0.1:{port}{extra}",
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DATABASE_URL": database_url(),
            "SCHEDULER_JOBSTORE_URL": job_store.url,
            "SCHEDULER_POLL_SECONDS": "0.2",
            "MAX_PENDING_HOLDS_PER_ADDRESS": "1000",
            "RESERVATION_HOLD_SECONDS": "3",
        },
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    log = log_path.read_text
    try:
        assert wait_for(lambda: log().count("Booting worker") >= 3, timeout=30), log()
        assert wait_for(lambda: "This process is the runner" in log(), timeout=30), log()
        yield f"http://127.0.0.1:{port}", log
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_forty_concurrent_reservations_through_preloaded_workers_all_succeed(preloaded):
    base, log = preloaded
    room = RoomFactory(max_players=6)
    slots = [TimeSlotFactory(room=room) for _ in range(40)]

    def reserve(n: int) -> tuple[int, object]:
        return call(
            f"{base}/api/reservations/",
            {
                "slot_id": slots[n].pk,
                "customer_name": f"Party {n}",
                "customer_email": f"p{n}@example.com",
                "party_size": 3,
            },
        )

    def rooms(_: int) -> tuple[int, object]:
        return call(f"{base}/api/rooms/")

    with ThreadPoolExecutor(max_workers=16) as pool:
        made = list(pool.map(reserve, range(40)))
        listed = list(pool.map(rooms, range(40)))

    assert Counter(status for status, _ in made) == Counter({201: 40}), made
    assert len({body["token"] for _, body in made}) == Reservation.objects.count() == 40
    # Every answer is this request's own: no row of another process's query.
    assert {body[0]["slug"] for _, body in listed} == {room.slug}, listed[:3]
    assert {status for status, _ in listed} == {200}
    assert "Loaded by gunicorn's master (--preload)" in log()
    assert log().count("This process is the runner") == 1
    assert "Traceback" not in log(), log()


def test_a_hold_made_through_a_preloaded_worker_expires_by_its_job(preloaded):
    base, log = preloaded
    slot = TimeSlotFactory(starts_at=timezone.now() + timedelta(days=1))
    party = {"customer_name": "Pre", "customer_email": "pre@example.com", "party_size": 3}

    status, body = call(f"{base}/api/reservations/", {"slot_id": slot.pk, **party})

    assert status == 201, body
    reservation = Reservation.objects.get(token=body["token"])
    held = Reservation.objects.filter(pk=reservation.pk, status="pending")
    assert wait_for(lambda: not held.exists(), timeout=6), log()
    expiry = ReservationEvent.objects.get(reservation=reservation, to_status="cancelled")
    assert expiry.cause == ReservationEvent.Cause.EXPIRY_JOB
    assert expiry.lateness_seconds < 1.0


@pytest.mark.gunicorn_args("--max-requests 4")
def test_workers_recycled_every_few_requests_hand_their_due_jobs_on(preloaded):
    """A retiring runner stops its scheduler before its thread pools go: no job is lost."""
    base, log = preloaded
    room = RoomFactory(max_players=6)
    slots = [TimeSlotFactory(room=room) for _ in range(24)]
    party = {"customer_name": "Recycled", "party_size": 3}

    for n, slot in enumerate(slots):  # 24 requests: every worker retires at least once
        status, body = call(
            f"{base}/api/reservations/",
            {"slot_id": slot.pk, "customer_email": f"r{n}@example.com", **party},
        )
        assert status == 201, body

    held = Reservation.objects.filter(status="pending")
    assert wait_for(lambda: not held.exists(), timeout=15), log()
    assert "after interpreter shutdown" not in log()
    assert "Error submitting job" not in log()


@pytest.mark.gunicorn_args("--no-preload")
def test_without_preload_each_worker_loads_the_app_and_one_runs_the_jobs(preloaded):
    """The same server as it is usually run: the master loads nothing, the workers compete."""
    base, log = preloaded
    slot = TimeSlotFactory(starts_at=timezone.now() + timedelta(days=1))
    party = {"customer_name": "Plain", "customer_email": "plain@example.com", "party_size": 3}

    status, body = call(f"{base}/api/reservations/", {"slot_id": slot.pk, **party})

    assert status == 201, body
    held = Reservation.objects.filter(token=body["token"], status="pending")
    assert wait_for(lambda: not held.exists(), timeout=6), log()
    assert "Loaded by gunicorn's master" not in log()
    assert log().count("This process is the runner") == 1
