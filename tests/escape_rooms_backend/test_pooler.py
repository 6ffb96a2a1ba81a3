"""
Behind pgbouncer in transaction mode, with what needs a session going direct.

A real pgbouncer (Debian's package; ``make test`` installs it) is started on a
free port with ``pool_mode = transaction``. The web server (gunicorn) and the
worker (``manage.py start_scheduler``) reach the database through it, as on a
managed PostgreSQL; only the runner lock and LISTEN use
``DATABASE_DIRECT_URL``.
"""

import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.reservations.models import Reservation, ReservationEvent
from escape_rooms_backend.db import job_connection
from escape_rooms_backend.runner import AdvisoryLock

from ..conftest import PROJECT_DIR, free_port, wait_for
from ..factories import RoomFactory, TimeSlotFactory, reserve

PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
HOLD_SECONDS = 2
TROUBLE = (
    "Lost the runner lock",
    "Could not reach PostgreSQL",
    "Could not reconcile",
    "prepared statement",
    "does not exist",
    "Traceback",
)


class Pooler:
    """A pgbouncer in transaction mode in front of this test run's database."""

    def __init__(self, binary: str) -> None:
        db = connection.settings_dict
        self.database = db["NAME"]
        self.user = db["USER"] or "postgres"
        host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
        self.server = f"host={host} port={port}"
        self.direct_url = f"postgres://{self.user}@{host}:{port}/{self.database}"
        self.port = free_port()
        # pgbouncer refuses to run as root: it then runs as PostgreSQL's own
        # user, which must read its folder (pytest's tmp_path is root's only).
        self.folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.folder.chmod(0o755)
        self.command = [binary, str(self.folder / "pgbouncer.ini")]
        if os.getuid() == 0:
            self.command[1:1] = ["-u", "postgres"]
            os.chown(self.folder, pwd.getpwnam("postgres").pw_uid, -1)
        (self.folder / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (self.folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"pooled = {self.server} dbname={self.database}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.folder / 'userlist.txt'}\n"
            f"admin_users = {self.user}\n"
            "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n"
            "stats_period = 1\n"
        )
        self.log = self.folder / "pgbouncer.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/pooled"

    def start(self) -> None:
        with self.log.open("w") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        assert wait_for(self.answers, timeout=10, interval=0.1), self.log.read_text()

    def answers(self) -> bool:
        try:
            psycopg.connect(
                self.url.replace("postgres://", "postgresql://"), connect_timeout=2
            ).close()
        except psycopg.Error:
            return False
        return True

    def transactions(self) -> int:
        """Transactions pgbouncer passed to the test database so far (its admin console)."""
        admin = self.url.replace("postgres://", "postgresql://").replace("/pooled", "/pgbouncer")
        with psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute("SHOW STATS")
            names = [column.name for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return sum(int(row["total_xact_count"]) for row in rows if row["database"] == "pooled")

    def server_pids(self) -> set[int]:
        """The PostgreSQL backends of pgbouncer's server connections."""
        admin = self.url.replace("postgres://", "postgresql://").replace("/pooled", "/pgbouncer")
        with psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute("SHOW SERVERS")
            names = [column.name for column in cursor.description]
            return {int(dict(zip(names, row, strict=True))["remote_pid"]) for row in cursor}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def pooler():
    if connection.vendor != "postgresql":
        pytest.fail("run with DATABASE_URL=postgres://... (make test-postgres)")
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; make test does)")
    pooler = Pooler(PGBOUNCER)
    pooler.start()
    yield pooler
    pooler.stop()
    with connection.cursor() as cursor:  # the job store lives in the test database
        cursor.execute("DROP TABLE IF EXISTS apscheduler_jobs")


def start(command: list[str], log: Path, pooler: Pooler) -> subprocess.Popen:
    """Start a process of the product reaching the database through ``pooler``."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, *command],
            cwd=PROJECT_DIR,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")},
                "DJANGO_SETTINGS_MODULE": "config.settings.local",
                "DATABASE_URL": pooler.url,
                "DATABASE_DIRECT_URL": pooler.direct_url,
                "DATABASE_POOLER": "transaction",
                "SCHEDULER_WORKER_MODE": "true",
                "SCHEDULER_POLL_SECONDS": "600",  # only NOTIFY can wake the runner in time
                "SCHEDULER_FAILOVER_SECONDS": "3",  # the lock is checked every second
                "RESERVATION_HOLD_SECONDS": str(HOLD_SECONDS),
                "PYTHONUNBUFFERED": "1",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def call(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(  # noqa: S310 (a local test server)
        url,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def runner_lock_holder(url: str) -> int | None:
    """The PostgreSQL backend that holds the runner lock of the job store at ``url``."""
    key = AdvisoryLock(url).key
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, classid::bigint, objid::bigint FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        for pid, high, low in cursor.fetchall():
            if int.from_bytes(((high << 32) | low).to_bytes(8, "big"), "big", signed=True) == key:
                return pid
    return None


def seconds_left(reservation: Reservation) -> float:
    return (reservation.expires_at - timezone.now()).total_seconds()


def answers(url: str) -> bool:
    try:
        return call("GET", url)[0] == 200
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.postgres
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_behind_pgbouncer_in_transaction_mode_holds_lapse_on_time_and_the_runner_keeps_its_lock(
    pooler, tmp_path
):
    # Given holds made before any worker runs, whose jobs the worker's store
    # lacks: the reconcile at start must give them their jobs.
    early = [reserve(TimeSlotFactory(), hold_seconds=30) for _ in range(2)]
    worker_log, web_log = tmp_path / "worker.log", tmp_path / "gunicorn.log"
    port = free_port()
    worker = start(["manage.py", "start_scheduler"], worker_log, pooler)
    web = None
    api = f"http://127.0.0.1:{port}/api"
    try:
        assert wait_for(
            lambda: "This process is the runner" in worker_log.read_text(), timeout=30
        ), worker_log.read_text()
        # The web server once the worker has created the job store's table.
        web = start(
            ["-m", "gunicorn", "-c", "config/gunicorn.conf.py", "--workers", "2",
             "--bind", f"127.0.0.1:{port}"],
            web_log,
            pooler,
        )  # fmt: skip
        runner_since = time.monotonic()
        holder = runner_lock_holder(pooler.direct_url)
        assert holder is not None
        assert holder not in pooler.server_pids()  # the lock's session is a direct one
        assert wait_for(lambda: answers(f"{api}/rooms/"), timeout=30), web_log.read_text()
        transactions_before = pooler.transactions()

        # When customers hold slots through the web server, one every 3 s for
        # over 20 s, and pay for one of them.
        tokens, paid = [], None
        for index in range(8):
            slot = TimeSlotFactory(room=RoomFactory(max_players=6))
            status, body = call(
                "POST",
                f"{api}/reservations/",
                {
                    "slot_id": slot.pk,
                    "customer_name": f"Pool Party {index}",
                    "customer_email": f"pool{index}@example.com",
                    "party_size": 3,
                },
            )
            assert status == 201, body
            if paid is None:
                status, body = call(
                    "POST",
                    f"{api}/reservations/{body['token']}/pay/",
                    {"payment_reference": "PAY-POOL"},
                )
                assert (status, body["status"]) == (200, "paid"), body
                paid = body["token"]
            else:
                tokens.append(body["token"])
            time.sleep(3)

        # Then every unpaid hold is released by its own job within a second.
        lapsed = [*(r.token for r in early), *tokens]
        assert wait_for(
            lambda: (
                set(Reservation.objects.filter(token__in=lapsed).values_list("status", flat=True))
                == {"cancelled"}
            ),
            timeout=max(HOLD_SECONDS, *(seconds_left(r) for r in early)) + 5,
        ), worker_log.read_text()
        lateness = sorted(
            ReservationEvent.objects.filter(
                reservation__token__in=lapsed, lateness_seconds__isnull=False
            ).values_list("lateness_seconds", flat=True)
        )
        held_for = time.monotonic() - runner_since
        print(
            f"\nbehind pgbouncer: {len(lateness)} holds released "
            f"{lateness[0] * 1000:.0f}-{lateness[-1] * 1000:.0f} ms late; "
            f"runner lock held {held_for:.0f} s; "
            f"{pooler.transactions() - transactions_before} transactions through the pooler"
        )
        assert len(lateness) == len(lapsed)
        assert lateness[-1] < 1.0, worker_log.read_text()
        # The paid one stays paid past its hold's end.
        status, body = call("GET", f"{api}/reservations/{paid}/")
        assert (status, body["status"]) == (200, "paid")
    finally:
        if web is not None:
            stop(web)
        stop(worker)

    log = worker_log.read_text()
    assert held_for >= 20
    assert log.count("This process is the runner") == 1, log
    assert "Repaired drift between reservations and the job store at start" in log, log
    assert not [line for line in log.splitlines() if any(t in line for t in TROUBLE)], log
    assert "Traceback" not in web_log.read_text(), web_log.read_text()
    assert pooler.transactions() > transactions_before  # the traffic did go through pgbouncer


def settings_under(**environ: str) -> subprocess.CompletedProcess:
    """Load the settings with ``environ``; print the database and scheduler ones as JSON."""
    script = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "db = s.DATABASES['default']; "
        "print(json.dumps({'cursors': db.get('DISABLE_SERVER_SIDE_CURSORS', False), "
        "'options': db.get('OPTIONS', {}), 'store': s.SCHEDULER_JOBSTORE_URL, "
        "'store_options': s.SCHEDULER_CONFIG['apscheduler.jobstores.default'], "
        "'direct': s.SCHEDULER_DIRECT_URL}))"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_DIR,
        env={
            **{
                k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "DATABASE_"))
            },
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            **environ,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_transaction_pooling_keeps_django_and_the_job_store_to_transactions_and_the_lock_direct():
    result = settings_under(
        DATABASE_URL="postgres://venue:secret@pooler:6432/venue?sslmode=require",
        DATABASE_POOLER="transaction",
        DATABASE_DIRECT_URL="postgres://venue:secret@db:5432/venue?sslmode=require",
    )

    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["cursors"] is True
    assert loaded["options"] == {"sslmode": "require", "prepare_threshold": None}
    assert loaded["store"] == "postgresql+psycopg://venue:secret@pooler:6432/venue?sslmode=require"
    assert loaded["store_options"]["engine_options"] == {
        "connect_args": {"prepare_threshold": None}
    }
    assert loaded["direct"] == "postgresql+psycopg://venue:secret@db:5432/venue?sslmode=require"


def test_without_a_pooler_nothing_changes_and_the_lock_uses_the_job_store():
    result = settings_under(DATABASE_URL="postgres://venue:secret@db:5432/venue")

    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert (loaded["cursors"], loaded["options"], loaded["direct"]) == (False, {}, "")
    assert "engine_options" not in loaded["store_options"]


@pytest.mark.parametrize(
    ("environ", "refusal"),
    [
        ({}, "needs DATABASE_DIRECT_URL"),
        (
            {
                "DATABASE_URL": "postgres://venue@pooler:6432/venue?options=-c%20statement_timeout%3D5s",
                "DATABASE_DIRECT_URL": "postgres://venue@db:5432/venue",
            },
            'sends a startup "options" parameter',
        ),
        (
            {
                "PGOPTIONS": "-c statement_timeout=5s",
                "DATABASE_DIRECT_URL": "postgres://venue@db:5432/venue",
            },
            'sends a startup "options" parameter',
        ),
        ({"DATABASE_POOLER": "session"}, 'DATABASE_POOLER must be "transaction" or empty'),
    ],
)
def test_transaction_pooling_refuses_to_start_with_what_a_pooler_breaks(environ, refusal):
    result = settings_under(
        **{
            "DATABASE_URL": "postgres://venue@pooler:6432/venue",
            "DATABASE_POOLER": "transaction",
            **environ,
        }
    )

    assert result.returncode != 0
    assert refusal in result.stderr


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_jobs_lock_timeout_is_set_per_transaction_never_on_the_session(settings):
    # A session setting would stay on the server session, which a pooler in
    # transaction mode hands to another client next.
    if connection.vendor != "postgresql":
        pytest.fail("run with DATABASE_URL=postgres://... (make test-postgres)")
    settings.SCHEDULER_LOCK_TIMEOUT = 1.5

    @job_connection
    def job() -> tuple[str, str, str]:
        with connection.cursor() as cursor:
            cursor.execute("SHOW lock_timeout")
            outside = cursor.fetchone()[0]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SHOW lock_timeout")
            inside = cursor.fetchone()[0]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('lock_timeout')")
            again = cursor.fetchone()[0]
        return outside, inside, again

    assert job() == ("0", "1500ms", "1500ms")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_runner_lock_pointed_at_the_pooler_says_so_plainly(pooler, caplog):
    """DATABASE_DIRECT_URL set to the pooler's address: no runner, and the log names the cause."""
    from escape_rooms_backend.runner import AdvisoryLock

    lock = AdvisoryLock(pooler.url)

    with caplog.at_level(logging.ERROR, logger="escape_rooms_backend.scheduler"):
        taken = lock.try_acquire()

    assert taken is False
    assert "reached a connection pooler, not PostgreSQL" in caplog.text
    assert "DATABASE_DIRECT_URL" in caplog.text
