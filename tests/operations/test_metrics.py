"""``/metrics``: who may read it, and the numbers it gives for a known state."""

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps.messaging.deadlines import DELIVERY
from apps.messaging.models import Message
from apps.operations.models import SchedulerHeartbeat
from apps.operations.services import heartbeat_record
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import reservation_create
from escape_rooms_backend import deadlines
from escape_rooms_backend.lifecycle import JobLateness

from ..conftest import PROJECT_DIR, database_url, free_port, wait_for
from ..factories import MessageFactory, ReservationFactory, TimeSlotFactory, reserve

TOKEN = "scraper-secret"  # noqa: S105 (a test's token)
BEARER = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
BEARER_HEADER = {"Authorization": f"Bearer {TOKEN}"}
JOB_LATENESS = "escape_rooms_deadline_job_lateness_seconds"


def samples(response) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from a scrape in the exposition format."""
    text = response.content.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape: dict, name: str, **labels: str) -> float | None:
    return scrape.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []


def scrape(client) -> dict:
    response = client.get("/metrics", **BEARER)
    assert response.status_code == 200, response.content
    return samples(response)


# ---------------------------------------------------------------------------
# Who may read it
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_are_off_without_a_token_or_networks(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = []

    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", **BEARER).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"],
    ids=["none", "wrong", "not-bearer", "empty", "longer"],
)
def test_a_missing_or_wrong_token_is_refused_without_numbers(client, token, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}

    response = client.get("/metrics", **headers)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"escape_rooms" not in response.content


@pytest.mark.django_db
def test_the_right_token_gets_every_number_in_the_exposition_format(client, token, job_store):
    job_store.create()

    response = client.get("/metrics", **BEARER)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "no-store" in response["Cache-Control"]
    families = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert {
        "escape_rooms_deadline_lateness_seconds",
        "escape_rooms_deadline_jobs",
        "escape_rooms_job_store_up",
        "escape_rooms_holds_pending",
        "escape_rooms_holds_overdue",
        "escape_rooms_holds_overdue_oldest_age_seconds",
        "escape_rooms_sweep_duration_seconds",
        "escape_rooms_runner_takeovers",
        "escape_rooms_scheduler_processes",
        "escape_rooms_runner_up",
        "escape_rooms_outbox_messages",
        "escape_rooms_outbox_oldest_due_age_seconds",
        "escape_rooms_outbox_oldest_pending_age_seconds",
    } <= families
    numbers = samples(response)
    # Every registered kind has its jobs counted, none yet.
    for kind in deadlines.kinds():
        assert value(numbers, "escape_rooms_deadline_jobs", kind=kind.name) == 0
    assert value(numbers, "escape_rooms_job_store_up") == 1


@pytest.mark.django_db
def test_an_allowed_network_reads_without_a_token_and_others_get_403(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "2001:db8::/32"]

    inside = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    inside_v6 = client.get("/metrics", REMOTE_ADDR="2001:db8::7")
    outside = client.get("/metrics", REMOTE_ADDR="192.0.2.1")

    assert inside.status_code == 200
    assert inside_v6.status_code == 200
    assert b"escape_rooms_holds_pending" in inside.content
    assert outside.status_code == 403
    assert b"escape_rooms" not in outside.content


@pytest.mark.django_db
def test_behind_a_trusted_proxy_the_forwarded_client_is_checked(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    settings.TRUSTED_PROXIES = ["127.0.0.1"]

    # The proxy itself is not in the list: only whom it forwards for counts.
    from_outside = client.get(
        "/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9"
    )
    from_inside = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.9.9.9")
    # A forwarded header from someone who is not a trusted proxy is ignored.
    forged = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="10.9.9.9")

    assert from_outside.status_code == 403
    assert from_inside.status_code == 200
    assert forged.status_code == 403


@pytest.mark.django_db
def test_with_both_a_token_and_networks_both_are_required(client, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]

    assert client.get("/metrics", REMOTE_ADDR="10.0.0.5", **BEARER).status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.5").status_code == 401
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.1", **BEARER).status_code == 403


# ---------------------------------------------------------------------------
# The numbers for a known state
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_scrape_counts_holds_jobs_outbox_and_the_runner(
    client, token, settings, hold_end_only, django_capture_on_commit_callbacks
):
    settings.METRICS_OVERDUE_SECONDS = 5
    now = timezone.now()
    # Two holds within their hold, each with its job in the store.
    with django_capture_on_commit_callbacks(execute=True):
        reserve()
        reserve()
    # Three lapsed a minute ago and not released; one lapsed just now (its job's, not overdue).
    for _ in range(3):
        ReservationFactory(expires_at=now - timedelta(minutes=1))
    ReservationFactory(expires_at=now - timedelta(seconds=1))
    ReservationFactory(status=Reservation.Status.PAID, paid_at=now, payment_reference="PAY-1")
    # The outbox: two due now (one failing), one waiting for a later attempt, one given up.
    MessageFactory(reservation=None, next_attempt_at=now - timedelta(seconds=30))
    MessageFactory(
        reservation=None,
        next_attempt_at=now - timedelta(seconds=5),
        attempts=1,
        last_error="451 greylisted",
    )
    MessageFactory(reservation=None, next_attempt_at=now + timedelta(minutes=5))
    MessageFactory(reservation=None, status=Message.Status.FAILED, attempts=12)
    # A live runner on this host (this process), a standby elsewhere, and the
    # counters of earlier processes.
    SchedulerHeartbeat.objects.create(
        hostname=socket.gethostname(),
        pid=os.getpid(),
        role="runner",
        beat_at=now - timedelta(seconds=3),
        last_sweep_at=now - timedelta(seconds=40),
        sweeps=4,
        sweep_seconds=0.5,
        takeovers=1,
    )
    SchedulerHeartbeat.objects.create(hostname="other-host", pid=1, role="standby", beat_at=now)
    SchedulerHeartbeat.objects.create(
        hostname="old-host",
        pid=2,
        role="runner",
        beat_at=now - timedelta(days=3),
        stopped_at=now - timedelta(days=3),
        last_sweep_at=now - timedelta(days=3),
        sweeps=2,
        sweep_seconds=0.25,
        takeovers=2,
    )

    numbers = scrape(client)

    assert value(numbers, "escape_rooms_holds_pending") == 6
    assert value(numbers, "escape_rooms_holds_overdue") == 3
    assert 60 <= value(numbers, "escape_rooms_holds_overdue_oldest_age_seconds") < 70
    assert value(numbers, "escape_rooms_deadline_jobs", kind="expiry") == 2
    assert value(numbers, "escape_rooms_outbox_messages", state="pending") == 3
    assert value(numbers, "escape_rooms_outbox_messages", state="due") == 2
    assert value(numbers, "escape_rooms_outbox_messages", state="failing") == 1
    assert value(numbers, "escape_rooms_outbox_messages", state="failed") == 1
    assert 30 <= value(numbers, "escape_rooms_outbox_oldest_due_age_seconds") < 40
    assert value(numbers, "escape_rooms_scheduler_processes", role="runner") == 1
    assert value(numbers, "escape_rooms_scheduler_processes", role="standby") == 1
    assert value(numbers, "escape_rooms_runner_up") == 1
    assert 3 <= value(numbers, "escape_rooms_runner_heartbeat_age_seconds") < 13
    assert value(numbers, "escape_rooms_sweep_duration_seconds_count") == 6
    assert value(numbers, "escape_rooms_sweep_duration_seconds_sum") == 0.75
    assert value(numbers, "escape_rooms_runner_takeovers_total") == 3
    last_sweep = value(numbers, "escape_rooms_sweep_last_success_timestamp_seconds")
    assert last_sweep == pytest.approx((now - timedelta(seconds=40)).timestamp(), abs=0.001)


@pytest.mark.django_db
def test_each_sweep_and_takeover_the_runner_records_adds_to_the_counters(client, token):
    heartbeat_record(started=True, role="runner", took_over=True)
    heartbeat_record(sweep_cancelled=3, sweep_seconds=0.25)
    heartbeat_record(role="runner")  # a beat between sweeps counts nothing
    heartbeat_record(sweep_cancelled=0, sweep_seconds=0.5)

    numbers = scrape(client)

    assert value(numbers, "escape_rooms_sweep_duration_seconds_count") == 2
    assert value(numbers, "escape_rooms_sweep_duration_seconds_sum") == 0.75
    assert value(numbers, "escape_rooms_runner_takeovers_total") == 1
    beat = SchedulerHeartbeat.objects.get()
    assert (beat.last_sweep_cancelled, beat.last_sweep_seconds) == (0, 0.5)


@pytest.mark.django_db
def test_the_runners_job_lateness_adds_up_by_kind(client, token):
    lateness = JobLateness()
    due = datetime.now(UTC)
    for job_id, late in [
        (HOLD_END.job_id(1), 0.002),
        (HOLD_END.job_id(2), 3.0),
        (DELIVERY.job_id(7), 0.2),
        ("cancel_expired_reservations", 50.0),  # the sweep: not a deadline
    ]:
        lateness.record(
            JobExecutionEvent(EVENT_JOB_EXECUTED, job_id, "default", due - timedelta(seconds=late))
        )
    heartbeat_record(role="runner", job_lateness=lateness.snapshot())
    # Another process, since stopped, ran one more expiry job.
    SchedulerHeartbeat.objects.create(
        hostname="old-host", pid=2, stopped_at=timezone.now(), job_lateness=lateness.snapshot()
    )

    numbers = scrape(client)

    def bucket(kind: str, le: str) -> float | None:
        return value(numbers, JOB_LATENESS + "_bucket", kind=kind, le=le)

    assert value(numbers, JOB_LATENESS + "_count", kind="expiry") == 4
    assert bucket("expiry", "0.005") == 2
    assert bucket("expiry", "2.5") == 2
    assert bucket("expiry", "5.0") == 4
    assert value(numbers, JOB_LATENESS + "_sum", kind="expiry") == pytest.approx(6.004, abs=0.01)
    assert value(numbers, JOB_LATENESS + "_count", kind="delivery") == 2
    assert bucket("delivery", "0.25") == 2
    # Every kind has its series, run or not.
    assert value(numbers, JOB_LATENESS + "_count", kind="reminder") == 0


@pytest.mark.django_db
def test_no_runner_reads_as_none(client, token):
    now = timezone.now()
    SchedulerHeartbeat.objects.create(hostname="other-host", pid=1, role="standby", beat_at=now)
    SchedulerHeartbeat.objects.create(
        hostname="gone-host", pid=2, role="runner", beat_at=now, stopped_at=now
    )

    numbers = scrape(client)

    assert value(numbers, "escape_rooms_scheduler_processes", role="runner") == 0
    assert value(numbers, "escape_rooms_scheduler_processes", role="standby") == 1
    assert value(numbers, "escape_rooms_runner_up") == 0
    assert value(numbers, "escape_rooms_runner_heartbeat_age_seconds") is None


@pytest.mark.django_db
def test_the_lateness_histogram_counts_the_releases_of_the_window(client, token, settings):
    settings.METRICS_LATENESS_WINDOW_SECONDS = 300
    now = timezone.now()
    reservation = ReservationFactory(
        status=Reservation.Status.CANCELLED,
        cancelled_at=now,
        cancellation_reason=Reservation.CancellationReason.EXPIRED,
    )
    for lateness, ago in [(0.003, 10), (0.2, 60), (2.0, 200), (0.001, 400)]:
        ReservationEvent.objects.create(
            reservation=reservation,
            from_status="pending",
            to_status="cancelled",
            at=now - timedelta(seconds=ago),
            cause=ReservationEvent.Cause.EXPIRY_JOB,
            lateness_seconds=lateness,
        )
    # A payment has no lateness: not a release.
    ReservationEvent.objects.create(
        reservation=reservation, from_status="pending", to_status="paid", at=now, cause="customer"
    )

    numbers = scrape(client)

    def bucket(le: str) -> float | None:
        return value(numbers, "escape_rooms_deadline_lateness_seconds_bucket", kind="expiry", le=le)

    assert bucket("0.005") == 1  # the one 400 s ago is out of the window
    assert bucket("0.1") == 1
    assert bucket("0.25") == 2
    assert bucket("1.0") == 2
    assert bucket("2.5") == 3
    assert bucket("+Inf") == 3
    assert value(numbers, "escape_rooms_deadline_lateness_seconds_gcount", kind="expiry") == 3
    assert value(
        numbers, "escape_rooms_deadline_lateness_seconds_gsum", kind="expiry"
    ) == pytest.approx(2.203)


@pytest.mark.django_db
def test_reserve_outcomes_are_counted_by_code(client, token, slot):
    def outcomes() -> dict[str, float]:
        numbers = scrape(client)
        return {
            code: value(numbers, "escape_rooms_reserve_requests_total", code=code) or 0
            for code in ("201", "slot_taken", "slot_not_found")
        }

    body = {
        "slot_id": slot.pk,
        "customer_name": "Ada",
        "customer_email": "ada@example.com",
        "party_size": 3,
    }
    before = outcomes()

    assert client.post("/api/reservations/", body, content_type="application/json").status_code
    taken = client.post("/api/reservations/", body, content_type="application/json")
    missing = client.post(
        "/api/reservations/", {**body, "slot_id": 999999}, content_type="application/json"
    )

    assert taken.status_code == 409 and missing.status_code == 404
    after = outcomes()
    assert {code: after[code] - before[code] for code in after} == {
        "201": 1,
        "slot_taken": 1,
        "slot_not_found": 1,
    }


@pytest.mark.django_db
def test_an_unreachable_job_store_reads_as_down_and_the_rest_still_reads(
    client, token, settings, tmp_path
):
    # The store's folder is a file: the store cannot be there.
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    settings.SCHEDULER_CONFIG = {
        **settings.SCHEDULER_CONFIG,
        "apscheduler.jobstores.default": {
            "type": "sqlalchemy",
            "url": f"sqlite:///{not_a_folder}/jobs.sqlite3",
        },
    }
    ReservationFactory()

    numbers = scrape(client)

    assert value(numbers, "escape_rooms_job_store_up") == 0
    assert value(numbers, "escape_rooms_deadline_jobs", kind="expiry") is None
    assert value(numbers, "escape_rooms_holds_pending") == 1


# ---------------------------------------------------------------------------
# With a live worker: holds lapse while it is stopped, then it catches up
# ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_holds_lapsing_without_a_runner_show_then_the_worker_catches_up(
    client, token, settings, start_worker
):
    settings.METRICS_OVERDUE_SECONDS = 0.5
    holds = [
        reservation_create(
            time_slot_id=TimeSlotFactory().pk,
            customer_name="John Doe",
            customer_email="john@example.com",
            party_size=3,
            hold_seconds=1,
        )
        for _ in range(5)
    ]

    # No runner while the holds lapse: the scrape shows them overdue and nobody to release them.
    overdue = wait_for(
        lambda: value(scrape(client), "escape_rooms_holds_overdue") == 5, timeout=10, interval=0.2
    )
    assert overdue
    stalled = scrape(client)
    assert value(stalled, "escape_rooms_runner_up") == 0
    assert value(stalled, "escape_rooms_scheduler_processes", role="runner") == 0
    assert value(stalled, "escape_rooms_deadline_jobs", kind="expiry") == 5
    assert value(stalled, "escape_rooms_sweep_duration_seconds_count") == 0

    # A sweep every 2 s, a heartbeat every second: the runner's counts reach the database soon.
    worker = start_worker(SCHEDULER_SWEEP_SECONDS="2")

    def caught_up() -> dict | None:
        numbers = scrape(client)
        released = value(numbers, "escape_rooms_holds_overdue") == 0
        swept = value(numbers, "escape_rooms_sweep_duration_seconds_count") >= 1
        jobs_ran = value(numbers, JOB_LATENESS + "_count", kind="expiry") >= 1
        return numbers if released and swept and jobs_ran else None

    numbers = wait_for(caught_up, timeout=20, interval=0.2)
    assert numbers, worker.log()
    assert all(
        Reservation.objects.get(pk=hold.pk).status == Reservation.Status.CANCELLED for hold in holds
    )
    assert value(numbers, "escape_rooms_runner_up") == 1
    assert value(numbers, "escape_rooms_runner_takeovers_total") == 1
    assert value(numbers, "escape_rooms_deadline_jobs", kind="expiry") == 0
    assert value(numbers, "escape_rooms_sweep_last_success_timestamp_seconds") is not None
    # The five were released late, every one of them more than a second late.
    count = value(numbers, "escape_rooms_deadline_lateness_seconds_gcount", kind="expiry")
    assert count == 5
    on_time = value(
        numbers, "escape_rooms_deadline_lateness_seconds_bucket", kind="expiry", le="1.0"
    )
    assert on_time == 0
    # The runner's own count of its expiry jobs: late too (folded into one run, or a few).
    assert value(numbers, JOB_LATENESS + "_bucket", kind="expiry", le="1.0") == 0
    assert value(numbers, JOB_LATENESS + "_sum", kind="expiry") > 1


# ---------------------------------------------------------------------------
# Under gunicorn: every worker's counts, whichever worker answers
# ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_under_gunicorn_every_scrape_counts_every_workers_reserve_outcomes(job_store, tmp_path):
    slots = [TimeSlotFactory() for _ in range(6)]
    port = free_port()
    counts_dir = tmp_path / "prometheus"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": database_url(),
        "SCHEDULER_JOBSTORE_URL": job_store.url,
        "SCHEDULER_WORKER_MODE": "true",
        "METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(counts_dir),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
    }
    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py"],
            cwd=PROJECT_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return requests.get(f"{base}/metrics", timeout=2).status_code == 401
            except requests.RequestException:
                return False

        assert wait_for(ready, timeout=30, interval=0.2), log.read_text()

        def reserve_over_http(n: int, slot) -> int:
            body = {
                "slot_id": slot.pk,
                "customer_name": f"Party {n}",
                "customer_email": f"party{n}@example.com",
                "party_size": 3,
            }
            return requests.post(f"{base}/api/reservations/", json=body, timeout=30).status_code

        # At once, so that both workers answer some.
        with ThreadPoolExecutor(max_workers=6) as pool:
            codes = list(pool.map(reserve_over_http, range(6), slots))
        codes.append(reserve_over_http(6, slots[0]))
        assert codes == [201] * 6 + [409]

        for _ in range(8):
            text = requests.get(f"{base}/metrics", headers=BEARER_HEADER, timeout=10).text
            numbers = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            assert value(numbers, "escape_rooms_reserve_requests_total", code="201") == 6
            assert value(numbers, "escape_rooms_reserve_requests_total", code="slot_taken") == 1
            assert value(numbers, "escape_rooms_holds_pending") == 6
        # Both workers counted (one file each): the sums above were not one worker's.
        assert len(list(counts_dir.glob("counter_*.db"))) == 2, log.read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
