"""
What the benchmark phases share: sizes, processes, data set-up and statistics.

Imported by ``scripts/bench/driver.py`` after ``django.setup()``, in a process
whose ``DATABASE_URL`` is a throwaway database.
"""

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from django.utils import timezone
from sqlalchemy import create_engine, text
from tqdm import tqdm

from apps.messaging.models import Message
from apps.operations.models import SchedulerHeartbeat
from apps.payments.models import Payment
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation, ReservationEvent, WaitingEntry
from apps.rooms.models import Room, TimeSlot
from escape_rooms_backend import lifecycle, scheduler, timeline

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@dataclass(frozen=True)
class Sizes:
    """
    How big each phase is: ``FULL`` (``make bench``) or a few seconds' worth
    (``QUICK``, ``--quick``). ``rounds`` (``--rounds``) is how many times each
    comparison runs, interleaved: the reserve path's expiry job on, off, on,
    off...; the lateness phase's designs one after another in each round.
    """

    rounds: int = 3
    lateness_holds: int = 250  # per round
    lateness_spread: float = 8.0  # seconds over which the holds end
    # Seconds from the first hold's creation to its end: longer than the worker's
    # look for new jobs (``worker_poll_seconds``), which SQLite needs.
    lateness_lead: float = 6.0
    poll_seconds: float = 60.0  # the seed's sweep interval
    # Rounds of the seed's poll: each takes a whole sweep interval, and its
    # lateness is set by where the holds fall in that interval, not by noise.
    poll_rounds: int = 1
    worker_poll_seconds: float = 5.0  # how often our worker looks for new jobs (the default)
    settle_seconds: float = 3.0  # for a started worker's start-up sweep and reconcile
    reserve_seconds: float = 6.0  # each round's run with ``reserve_clients`` clients
    reserve_alone_seconds: float = 3.0  # each round's run with one client
    reserve_warmup_seconds: float = 1.0  # before them (0: none)
    reserve_clients: int = 8
    gunicorn_workers: int = 4
    burst_holds: int = 10_000
    catchup_holds: int = 10_000
    scale_pending: int = 100_000
    scale_history: int = 1_000_000
    cascade_parties: int = 6  # parties waiting for one slot: five lapsing offers hand it over
    cascade_offer_seconds: int = 1  # WAITLIST_OFFER_SECONDS in the cascade (whole seconds)
    profile_reservations: int = 1000  # made in-process under cProfile, after a warm-up


FULL = Sizes()
QUICK = Sizes(
    lateness_holds=20,
    lateness_spread=0.5,
    lateness_lead=1.5,
    poll_seconds=2.0,
    worker_poll_seconds=0.5,
    settle_seconds=1.0,
    reserve_seconds=1.0,
    reserve_alone_seconds=1.0,
    reserve_warmup_seconds=0.0,
    gunicorn_workers=2,  # half the start-up, on 2 cores
    burst_holds=300,
    catchup_holds=300,
    scale_pending=2_000,
    scale_history=20_000,
    cascade_parties=2,
    profile_reservations=50,
)


def say(message: str) -> None:
    """A progress line on stderr, with the time of day (stdout carries the results)."""
    print(f"    {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def bar(total: int, what: str) -> tqdm:
    return tqdm(
        total=total, desc=f"    {what}", file=sys.stderr, leave=False, mininterval=1, disable=None
    )


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


class Process:
    """A child process (worker, web server, Celery) with its output in a log file."""

    def __init__(self, name: str, command: Sequence[str], **env: str) -> None:
        self.name = name
        self.log = Path(os.environ["BENCH_LOG_DIR"]) / f"{name}.log"
        self.started = time.monotonic()
        with self.log.open("wb") as log:
            self.popen = subprocess.Popen(  # noqa: S603 (our own programs)
                list(command),
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_for_line(self, needle: str, timeout: float = 60, count: int = 1) -> float:
        """
        Seconds from start until ``needle`` appeared in the output (``count``
        times); raises ``TimeoutError`` after ``timeout`` seconds, and
        ``RuntimeError`` if the process exits first.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count(needle) >= count:
                return time.monotonic() - self.started
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); see {self.log}")
            time.sleep(0.005)
        raise TimeoutError(f"{self.name}: no {needle!r} within {timeout} s; see {self.log}")

    def memory_mib(self) -> dict[str, float]:
        """Resident set size now and at its peak (``VmRSS``, ``VmHWM``), in MiB."""
        fields = {}
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def manage(*args: str) -> list[str]:
    return [PYTHON, str(ROOT / "manage.py"), *args]


RUNNER_LINE = "This process is the runner"


def start_worker(name: str, **env: str) -> Process:
    """``manage.py start_scheduler`` as the runner; returns once it runs jobs."""
    worker = Process(name, manage("start_scheduler"), SCHEDULER_WORKER_MODE="true", **env)
    worker.wait_for_line(RUNNER_LINE)
    return worker


def wait_until(
    condition: Callable[[], int], *, what: str, timeout: float, interval: float = 0.01
) -> float | None:
    """
    Poll ``condition`` (a count of what is left) until it returns 0.

    Returns the ``time.time()`` at which it first read 0, or ``None`` after
    ``timeout`` seconds. Shows the count left as it goes.
    """
    deadline = time.monotonic() + timeout
    last_said = 0.0
    while time.monotonic() < deadline:
        left = condition()
        if not left:
            return time.time()
        if time.monotonic() - last_said > 2:
            say(f"{what}: {left:,} left")
            last_said = time.monotonic()
        time.sleep(interval)
    return None


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def reset() -> None:
    """Empty every table the phases fill, and the job store."""
    scheduler.stop_scheduler()
    tables = [
        model._meta.db_table
        for model in (
            Message,
            WaitingEntry,
            ReservationEvent,
            Payment,
            Reservation,
            TimeSlot,
            Room,
            SchedulerHeartbeat,
        )
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")  # noqa: S608 (our table names)
    engine = create_engine(settings.SCHEDULER_JOBSTORE_URL)
    with engine.begin() as db:
        db.execute(text("DROP TABLE IF EXISTS apscheduler_jobs"))
    engine.dispose()


def make_slots(
    count: int, *, start: datetime | None = None, step: timedelta = timedelta(hours=1)
) -> list[int]:
    """``count`` bookable one-hour slots in one room, from ``start`` (default: tomorrow)."""
    room = Room.objects.create(
        name=f"Bench room {Room.objects.count() + 1}",
        slug=f"bench-{Room.objects.count() + 1}",
        duration_minutes=60,
        min_players=2,
        max_players=6,
        price=Decimal("80.00"),
        currency="EUR",
    )
    first = (start or timezone.now() + timedelta(days=1)).replace(second=0, microsecond=0)
    ids: list[int] = []
    for chunk in chunks(range(count), 5000):
        slots = TimeSlot.objects.bulk_create(
            TimeSlot(room=room, starts_at=first + i * step, ends_at=first + i * step + step)
            for i in chunk
        )
        ids += [slot.pk for slot in slots]
    return ids


def hold_slots(slot_ids: Sequence[int], expires_at: Callable[[int], datetime]) -> list[Reservation]:
    """
    Pending reservations on ``slot_ids``, written in bulk (a set-up shortcut;
    the reservations the lateness phase measures go through the service).
    """
    made: list[Reservation] = []
    for chunk in chunks(range(len(slot_ids)), 5000):
        made += Reservation.objects.bulk_create(
            Reservation(
                time_slot_id=slot_ids[i],
                customer_name="Bench Customer",
                customer_email=f"bench{i}@example.com",
                party_size=3,
                price=Decimal("89.00"),
                currency="EUR",
                expires_at=expires_at(i),
            )
            for i in chunk
        )
        TimeSlot.objects.filter(pk__in=[slot_ids[i] for i in chunk]).update(
            status=TimeSlot.Status.RESERVED
        )
    return made


def wait_for_slots(slot_ids: Sequence[int], parties: Sequence[int]) -> None:
    """
    ``parties[i]`` parties on slot ``slot_ids[i]``'s waiting list, written in
    bulk: the rows ``waiting_join`` writes, without its messages (a set-up
    shortcut, so that the holds can then be made at the lateness phase's pace).
    """
    WaitingEntry.objects.bulk_create(
        (
            WaitingEntry(
                time_slot_id=slot_id,
                customer_name=f"Waiting Party {k + 1}",
                customer_email=f"wait{slot_id}-{k + 1}@example.com",
                party_size=3,
            )
            for slot_id, count in zip(slot_ids, parties, strict=True)
            for k in range(count)
        ),
        batch_size=2000,
    )


def load_expiry_jobs(reservations: Sequence[Reservation]) -> None:
    """
    Write the reservations' expiry jobs straight into the job store, in
    APScheduler's own row format and in one transaction: 100,000 ``add_job``
    calls would take minutes. The rows are what ``timeline.deadline_schedule``
    writes, built from one job it wrote.
    """
    if not reservations:
        return
    template = reservations[0]
    timeline.deadline_schedule(HOLD_END, template.pk, template.expires_at)
    store = lifecycle.process.job_store()
    state = store.lookup_job(HOLD_END.job_id(template.pk)).__getstate__()
    rows = []
    for reservation in reservations[1:]:
        job_state = {
            **state,
            "id": HOLD_END.job_id(reservation.pk),
            "name": f"{HOLD_END.name} of reservation {reservation.pk}",
            "args": (HOLD_END.name, reservation.pk),
            "trigger": type(state["trigger"])(run_date=reservation.expires_at),
            "next_run_time": reservation.expires_at,
        }
        rows.append(
            {
                "id": job_state["id"],
                "next_run_time": reservation.expires_at.timestamp(),
                "job_state": pickle.dumps(job_state, store.pickle_protocol),
            }
        )
    with store.engine.begin() as db:
        for chunk in chunks(rows, 5000):
            db.execute(store.jobs_t.insert(), list(chunk))


def stored_expiry_job_count() -> int:
    return len(timeline.stored_jobs(HOLD_END, missing_ok=True))


def held_count(slot_ids: Sequence[int]) -> int:
    """How many of ``slot_ids`` (a contiguous range) are still reserved."""
    return TimeSlot.objects.filter(
        pk__gte=slot_ids[0], pk__lte=slot_ids[-1], status=TimeSlot.Status.RESERVED
    ).count()


def expiry_lateness(reservation_ids: Iterable[int] | None = None) -> list[float]:
    """
    Seconds from ``expires_at`` to each expiry: the clock read in the
    transaction that freed the slot, after its locks (``lateness_seconds``).
    """
    events = ReservationEvent.objects.filter(to_status=Reservation.Status.CANCELLED)
    if reservation_ids is not None:
        events = events.filter(reservation_id__in=list(reservation_ids))
    return [
        value for value in events.values_list("lateness_seconds", flat=True) if value is not None
    ]


class OfferWatch(threading.Thread):
    """
    Another connection's view of the offers: when each was first seen committed.

    Polls for new offers every ``interval`` seconds on its own database
    connection and keeps, per offer, the ``time.time()`` read just *before*
    the query that first returned it: the offer committed before that
    moment (and after the previous query began). An upper bound on the
    commit, within ``interval`` plus one query. Offers are looked for above
    the highest id seen, less a margin for transactions that commit out of
    order.
    """

    MARGIN = 100  # ids below the highest seen that may still commit

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(name="offer-watch", daemon=True)
        self.interval = interval
        self.seen: dict[int, float] = {}
        self.polls = 0
        self.seconds = 0.0  # how long it watched
        self._stop_event = threading.Event()

    @property
    def mean_gap_ms(self) -> float:
        """The mean time from one poll's start to the next's: the interval plus a query."""
        return 1000 * self.seconds / max(1, self.polls)

    def run(self) -> None:
        highest = 0
        started = time.monotonic()
        try:
            while not self._stop_event.is_set():
                before = time.time()
                new = [
                    pk
                    for pk in Reservation.objects.filter(
                        is_offer=True, pk__gt=highest - self.MARGIN
                    ).values_list("pk", flat=True)
                    if pk not in self.seen
                ]
                self.polls += 1
                for pk in new:
                    self.seen[pk] = before
                highest = max([highest, *new])
                self._stop_event.wait(self.interval)
        finally:
            self.seconds = time.monotonic() - started
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def distribution(seconds: Sequence[float]) -> dict[str, float | int]:
    """Count, p50, p95, p99 and max of ``seconds``, in milliseconds."""
    if not seconds:
        return {"n": 0}
    values = np.asarray(seconds) * 1000
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "n": len(values),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(values.max()),
    }


def timed(function: Callable[[], Any], runs: int) -> dict[str, float]:
    """Run ``function`` ``runs`` times after one warm-up; median and max in ms."""
    function()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": float(np.median(times)), "max_ms": float(max(times)), "runs": runs}
