"""
This process's scheduler: building it, starting and stopping it, its threads.

One ``SchedulerProcess`` holds everything a process keeps about its
scheduler. Every process that writes jobs starts the scheduler *paused*:
APScheduler writes to the store only from a started scheduler, and a paused
one runs nothing. Each such process competes for the job store's runner lock
(``escape_rooms_backend.runner``); the holder resumes and runs the jobs. A
running scheduler sleeps until its next known job, so a poller thread wakes
it every ``SCHEDULER_POLL_SECONDS`` to look for jobs other processes wrote
(and, on PostgreSQL, a LISTEN connection wakes it at once).

Imports no app: the sweep and the reconcile are named by import path, and
apps learn of starts, stops and sweeps from the ``scheduler_heartbeat`` signal.
"""

import concurrent.futures
import contextlib
import copy
import logging
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import BasePoolExecutor, ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED
from apscheduler.triggers.date import DateTrigger
from django.conf import settings
from django.utils import timezone
from sqlalchemy.engine import make_url

from . import deadlines
from .compat import Scheduler
from .db import job_connection
from .jobstore import FoldingJobStore, JobStoreDamaged, check, store_options
from .runner import NOTIFY_CHANNEL, Listener, Runner, lock_for
from .signals import scheduler_heartbeat

logger = logging.getLogger("escape_rooms_backend.scheduler")

# Stored jobs name their function by import path: these are public APIs.
SWEEP_JOB_ID = "cancel_expired_reservations"
SWEEP_JOB_FUNC = "escape_rooms_backend.scheduler:sweep"
RECONCILE_JOB_ID = "reconcile_expiry_jobs"
RECONCILE_JOB_FUNC = "escape_rooms_backend.scheduler:reconcile_at_start"
# The sweep runs in a thread of its own, so that deadline jobs waiting for
# locks never hold it back (a skipped sweep is a missed safety net).
SWEEP_EXECUTOR = "sweep"
# The runner's own jobs (the sweep, the reconcile at start) live in memory:
# they run whatever state the persistent job store is in, and a runner adds
# them afresh when it takes over.
RUNNER_STORE = "runner"
# Threads of each kind whose jobs wait on a service outside the database
# (deadlines.OUTSIDE_EXECUTOR): however slow that is, the default pool's
# threads stay free for the hold's end, and each other kind's for its own.
OUTSIDE_WORKERS = 2
# A job due later than this is not announced with NOTIFY: the runner looks at
# the store at least this often (SCHEDULER_POLL_SECONDS is capped at it).
NOTIFY_HORIZON_SECONDS = 60.0
# Upper bounds of the deadline jobs' lateness buckets, seconds (JobLateness).
LATENESS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0,
)  # fmt: skip


def build_scheduler(config: dict[str, Any]) -> Scheduler:
    """Build (not start) a scheduler from the seed's ``apscheduler.*`` options."""
    # APScheduler pops keys from the dicts it is given: build from a deep copy
    # so that settings.SCHEDULER_CONFIG serves the next scheduler too.
    config = copy.deepcopy(config)
    scheduler = Scheduler(
        gconfig={
            key: store_options(value) if key.startswith("apscheduler.jobstores.") else value
            for key, value in config.items()
        }
    )
    scheduler.add_executor(ThreadPoolExecutor(max_workers=1), alias=SWEEP_EXECUTOR)
    scheduler.add_jobstore(MemoryJobStore(), alias=RUNNER_STORE)
    # Jobs stored with it may outlive the kind that wrote them.
    outside_pool(scheduler, deadlines.OUTSIDE_EXECUTOR)
    for kind in deadlines.kinds():
        if kind.executor != deadlines.DEFAULT_EXECUTOR:
            outside_pool(scheduler, kind.executor)
    return scheduler


class OutsidePool(BasePoolExecutor):
    """
    Threads for jobs that wait on a service outside the database.

    ``shutdown`` does not wait for them, ``join`` does: a stopping process
    releases the runner lock first, so that a provider that hangs cannot
    hold the lock, and with it every standby, for as long as its timeout.
    Their work is idempotent: a job still running when the next runner
    starts costs a repeat at most.
    """

    def __init__(self, max_workers: int) -> None:
        self.threads = concurrent.futures.ThreadPoolExecutor(max_workers)
        super().__init__(self.threads)

    def shutdown(self, wait: bool = True) -> None:
        self.threads.shutdown(wait=False)

    def join(self) -> None:
        """Wait for the jobs still running to return."""
        self.threads.shutdown(wait=True)


def outside_pool(scheduler: Scheduler, alias: str) -> None:
    """Give ``scheduler`` an ``OutsidePool`` named ``alias``, unless it has one."""
    pools = outside_pools(scheduler)
    if alias in pools:
        return  # the usual case, on every job written: no pool built to be thrown away
    pool = OutsidePool(max_workers=OUTSIDE_WORKERS)
    with contextlib.suppress(ValueError):  # given one meanwhile by another thread
        scheduler.add_executor(pool, alias=alias)
        pools[alias] = pool


def outside_pools(scheduler: Scheduler) -> dict[str, OutsidePool]:
    """The ``OutsidePool`` of each alias that ``outside_pool`` gave ``scheduler``."""
    pools: dict[str, OutsidePool] = scheduler.__dict__.setdefault("outside_pools", {})
    return pools


class JobLateness:
    """
    How late this process ran each deadline kind's jobs: from the run time to the job's return.

    Counted from APScheduler's job events in the process that runs the jobs,
    cumulative since it started: per kind, the count of jobs at or below each
    of ``LATENESS_BUCKETS``, then the count of all of them, then the sum of
    their seconds. The heartbeat carries ``snapshot()`` to the database, so
    that ``/metrics`` adds up every runner's, whichever process answers.
    A job that folded others in counts once; a retry counts from its own
    run time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, list[float]] = {}

    def record(self, event: JobExecutionEvent) -> None:
        """APScheduler listener: count a deadline job that has just returned (or raised)."""
        kind = next((k for k in deadlines.kinds() if event.job_id.startswith(k.job_prefix)), None)
        if kind is None or event.scheduled_run_time is None:
            return  # the sweep, the reconcile: not deadlines
        seconds = max(0.0, (datetime.now(UTC) - event.scheduled_run_time).total_seconds())
        with self._lock:
            counts = self._kinds.setdefault(kind.name, [0.0] * (len(LATENESS_BUCKETS) + 2))
            for index, bound in enumerate(LATENESS_BUCKETS):
                if seconds <= bound:
                    counts[index] += 1
            counts[-2] += 1
            counts[-1] += seconds

    def snapshot(self) -> dict[str, list[float]]:
        """Kind -> [count at or below each bound..., count, sum of seconds], a copy."""
        with self._lock:
            return {kind: list(counts) for kind, counts in self._kinds.items()}


@job_connection
def record_heartbeat(**fields: Any) -> None:
    """Send ``scheduler_heartbeat`` with ``fields``; log what its receivers raise."""
    for receiver, result in scheduler_heartbeat.send_robust(sender=Scheduler, **fields):
        if isinstance(result, Exception):
            logger.error("Could not record the scheduler heartbeat (%s)", receiver, exc_info=result)


class StopSignals:
    """SIGINT and SIGTERM set an event instead of killing the process; ``restore()`` undoes it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.event.is_set():
            logger.info("Received %s again; still stopping", name)
        else:
            logger.info("Received %s, stopping the scheduler", name)
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(1.0):
            pass

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class SchedulerProcess:
    """
    The scheduler of this process, with its runner lock, LISTEN and poller threads.

    Thread-safe; one instance per process (``process``). ``get()`` builds the
    scheduler from ``settings.SCHEDULER_CONFIG`` on first use; ``stop()``
    discards it, so that the next ``get()`` builds a fresh one.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.lateness = JobLateness()
        self.scheduler: Scheduler | None = None
        self.runner: Runner | None = None
        self.listener: Listener | None = None
        self._poller: tuple[threading.Thread, threading.Event] | None = None
        self._last_tick_beat = 0.0
        # Set while this process's scheduler stops: jobs that start then leave
        # their deadlines in the store for the next runner instead of working.
        self.stopping = threading.Event()
        # The scheduler being shut down, and the writes of jobs that return
        # meanwhile (see writable).
        self.shutting_down: Scheduler | None = None
        self.late_writer: Scheduler | None = None

    def get(self) -> Scheduler:
        """Return this process's scheduler, building it if need be; starts nothing."""
        with self.lock:
            if self.scheduler is None:
                self.scheduler = self._build(settings.SCHEDULER_CONFIG)
            return self.scheduler

    def _build(self, config: dict[str, Any]) -> Scheduler:
        scheduler = build_scheduler(config)
        scheduler.add_listener(self.lateness.record, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        return scheduler

    def writable(self) -> Scheduler:
        """Return this process's scheduler, started (paused) if it was not, so that it writes."""
        # A never-started scheduler keeps add_job in memory and cannot remove a
        # stored job; a paused one writes to the store and runs nothing.
        with self.lock:
            scheduler = self.get()
            if scheduler.state == STATE_STOPPED and scheduler is self.shutting_down:
                # Shutting down: a job that returns now (one waiting on an
                # outside service, say) must not start this scheduler again
                # under the shutdown, which would then wait for it forever.
                # It writes through a paused writer of its own, stopped last.
                if self.late_writer is None:
                    self.late_writer = build_scheduler(settings.SCHEDULER_CONFIG)
                    _start_paused(self.late_writer)
                return self.late_writer
            if scheduler.state == STATE_STOPPED:
                scheduler.start(paused=True)
            return scheduler

    def job_store(self) -> SQLAlchemyJobStore:
        """The default SQLAlchemy job store of this process's (started) scheduler."""
        # BaseScheduler has no public accessor; _lookup_jobstore is stable in 3.x.
        return self.writable()._lookup_jobstore("default")

    def notify_runner(self) -> None:
        """On PostgreSQL, wake the runner (LISTENing in any process) after a job write."""
        try:
            store = self.job_store()
            if store.engine.dialect.name == "postgresql":
                with store.engine.begin() as db:
                    db.exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}")
        except Exception:
            logger.warning("Could not notify the runner of a new job; it polls", exc_info=True)

    def start(self, blocking: bool = False, config: dict[str, Any] | None = None) -> Scheduler:
        """See ``escape_rooms_backend.scheduler.start_scheduler``."""
        # Caught before the scheduler starts, and kept until it has shut down, so
        # that no signal kills the worker half-way through either.
        stop = StopSignals() if blocking else None
        with self.lock:
            try:
                if config is not None and (
                    self.scheduler is None or self.scheduler.state == STATE_STOPPED
                ):
                    self.scheduler = self._build(config)
                scheduler = self.get()
                if scheduler.state == STATE_STOPPED:
                    _start_paused(scheduler)
                url = scheduler._lookup_jobstore("default").engine.url.render_as_string(
                    hide_password=False
                )
                if self.runner is None:
                    runner = Runner(
                        lock_for(url, settings.SCHEDULER_DIRECT_URL),
                        interval=settings.SCHEDULER_FAILOVER_SECONDS / 3,
                        on_runner=lambda: self._become_runner(scheduler),
                        on_standby=lambda: self._become_standby(scheduler),
                        on_tick=self._tick_heartbeat,
                    )
                    runner.start()
                    self.runner = runner  # only once it competes: a failed start tries again
                if self.listener is None and make_url(url).get_backend_name() == "postgresql":
                    self.listener = Listener(settings.SCHEDULER_DIRECT_URL or url, scheduler.wakeup)
                    self.listener.start()
            except Exception:
                logger.exception("Scheduler failed to start")
                if stop is not None:
                    stop.restore()
                raise
            self._start_poller(
                scheduler, min(settings.SCHEDULER_POLL_SECONDS, NOTIFY_HORIZON_SECONDS)
            )
            role = "runner" if self.runner.is_runner else "standby"
        if role == "standby":
            record_heartbeat(started=True, role=role)
        logger.info(
            "Scheduler started as the %s: sweep every %ss, looking for new jobs every %ss",
            role,
            settings.SCHEDULER_SWEEP_SECONDS,
            settings.SCHEDULER_POLL_SECONDS,
        )
        if stop is not None:
            try:
                stop.wait()
                self.stop(scheduler)
            finally:
                stop.restore()
        return scheduler

    def stop(self, scheduler: Scheduler | None = None) -> None:
        """See ``escape_rooms_backend.scheduler.stop_scheduler``."""
        runner = listener = poller = None
        with self.lock:
            scheduler = scheduler or self.scheduler
            if scheduler is None:
                return
            owned = scheduler is self.scheduler
            if owned:
                # Kept until it has shut down: the jobs still running write
                # their retries through it (paused, it writes and runs nothing).
                self.stopping.set()
                runner, self.runner = self.runner, None
                listener, self.listener = self.listener, None
                poller, self._poller = self._poller, None
        # Outside the lock: running jobs write to the store through it.
        if poller is not None:
            poller[1].set()
            poller[0].join()
        if listener is not None:
            listener.stop()
        if runner is not None:
            runner.stop_checking()
        # Outside the lock: a running job may itself write a job (and take the
        # lock) while shutdown() waits for it to finish.
        was_running = scheduler.state == STATE_RUNNING
        with self.lock:
            self.shutting_down = scheduler
        try:
            scheduler.shutdown(wait=True)
        except SchedulerNotRunningError:
            return  # already stopped, or another thread stopped it first
        finally:
            if runner is not None:
                runner.lock.release()  # after the running jobs finished: a standby takes over
            # Those waiting on outside services may outlast the lock: still
            # told to stop, they hand their remaining work back.
            for pool in outside_pools(scheduler).values():
                pool.join()
            with self.lock:
                late_writer, self.late_writer = self.late_writer, None
                self.shutting_down = None
            if late_writer is not None:
                late_writer.shutdown(wait=False)  # every job has returned: no more writes
            if owned:
                with self.lock:
                    if self.scheduler is scheduler:
                        self.scheduler = None  # the next get() builds afresh
                    self.stopping.clear()  # its jobs have all returned
        if was_running or runner is not None:
            record_heartbeat(stopped=True, job_lateness=self.lateness.snapshot())
            logger.info("Scheduler stopped")

    def _become_runner(self, scheduler: Scheduler) -> None:
        """
        This process took the runner lock: run the jobs, sweep now, reconcile once.

        A SQLite job store whose file is damaged is replaced by an empty one
        first (the reconcile rebuilds its jobs); the sweep runs either way.
        """
        now = timezone.now()
        scheduler.add_job(
            SWEEP_JOB_FUNC,
            trigger="interval",
            seconds=settings.SCHEDULER_SWEEP_SECONDS,
            id=SWEEP_JOB_ID,
            name="Sweep overdue deadlines",
            jobstore=RUNNER_STORE,
            replace_existing=True,
            next_run_time=now,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            executor=SWEEP_EXECUTOR,
        )
        store = scheduler._lookup_jobstore("default")
        try:
            if isinstance(store, FoldingJobStore):
                store.runs_here = True
                store.on_replaced = lambda: self._reconcile_soon(scheduler)
            self.job_store_check()
            # A sweep job stored by an earlier release would run beside this one.
            with contextlib.suppress(JobLookupError):
                scheduler.remove_job(SWEEP_JOB_ID, jobstore="default")
        except Exception:
            # The sweep still runs, from memory; the jobs wait for the store.
            logger.exception("The job store cannot be used; only the sweep expires holds")
        self._reconcile_soon(scheduler)
        scheduler.resume()
        record_heartbeat(started=True, role="runner", took_over=True)
        logger.info("This process is the runner: it runs the expiry jobs")

    def job_store_check(self) -> None:
        """
        As the runner, replace the job store if SQLite finds its file damaged.

        At the runner's start and before each sweep: a damaged page that the
        jobs' own queries do not touch is found within a sweep interval.
        Raises ``OSError`` when the damaged file cannot be moved aside.
        """
        store = self.job_store()
        if not (isinstance(store, FoldingJobStore) and store.runs_here):
            return
        try:
            check(store)
        except JobStoreDamaged as damaged:
            store.replace_damaged(damaged.detail)

    def _reconcile_soon(self, scheduler: Scheduler) -> None:
        # In the sweep's one thread, so after the sweep due with it: the
        # reconcile reads every pending hold and every job, and beside the
        # start-up sweep it would slow the catch-up of overdue holds.
        scheduler.add_job(
            RECONCILE_JOB_FUNC,
            trigger=DateTrigger(run_date=timezone.now()),
            id=RECONCILE_JOB_ID,
            name="Reconcile deadline jobs at start",
            jobstore=RUNNER_STORE,
            replace_existing=True,
            misfire_grace_time=None,
            executor=SWEEP_EXECUTOR,
        )

    def _become_standby(self, scheduler: Scheduler) -> None:
        scheduler.pause()
        store = scheduler._lookup_jobstore("default")
        if isinstance(store, FoldingJobStore):
            store.runs_here = False
        record_heartbeat(role="standby")

    def _tick_heartbeat(self, is_runner: bool) -> None:
        # Beat from the lock checks too, not only from the sweep: at most every
        # minute, and at least every half sweep interval, so that a dead runner
        # and a live standby both show within minutes.
        every = min(60.0, settings.SCHEDULER_SWEEP_SECONDS / 2)
        if time.monotonic() - self._last_tick_beat >= every:
            self._last_tick_beat = time.monotonic()
            record_heartbeat(
                role="runner" if is_runner else "standby", job_lateness=self.lateness.snapshot()
            )

    def _start_poller(self, scheduler: Scheduler, interval: float) -> None:
        if self._poller is not None:
            return
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(interval):
                scheduler.wakeup()

        thread = threading.Thread(target=poll, name="escape-rooms-scheduler-poll", daemon=True)
        thread.start()
        self._poller = (thread, stop)


def _start_paused(scheduler: Scheduler, attempts: int = 5) -> None:
    # Several workers starting at once all create the store's table; on SQLite
    # one may find the file locked past the short busy timeout. Try again.
    for attempt in range(1, attempts + 1):
        try:
            scheduler.start(paused=True)
            return
        except Exception:
            if attempt == attempts or scheduler.state != STATE_STOPPED:
                raise
            logger.warning("Job store busy at start; trying again (%s/%s)", attempt, attempts)
            time.sleep(attempt * 0.5)


process = SchedulerProcess()
