"""APScheduler 3.11's BackgroundScheduler with its failure modes closed, and one cost."""

import logging
import time
from datetime import datetime
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED

logger = logging.getLogger("escape_rooms_backend.scheduler")


class Scheduler(BackgroundScheduler):
    """
    A ``BackgroundScheduler`` that survives a failing pass and shuts down cleanly.

    1. After ``shutdown()`` stopped the executors, 3.11 makes one more pass: a
       due date job then fails to submit and a due interval job (the sweep) is
       pushed back one period without running. A stopped scheduler here does
       not touch the store.
    2. An exception escaping a pass ends the scheduler's thread for good,
       silently: the process lives on and nothing runs again, the sweep
       included. It happens when another process removes a due job between
       this pass reading it and deleting it, or when the store is locked or
       down. Here it is logged and the pass tried again.
    3. ``shutdown(wait=True)`` joins the executor's threads while holding the
       job store lock; a running job that writes to the store then waits for
       that lock forever. Here running jobs finish outside the lock.
    4. ``shutdown()`` stops the executors while a pass may still be handing
       them due jobs, whose rows it has already deleted: such a job failed to
       submit and was lost. Here the pass under way finishes first.
    5. Every job added wakes the scheduler's thread for a pass over the store,
       which holds the store's lock: a runner that adds jobs in bulk (the
       offers a burst of lapsing holds makes, each with its deadlines) spent
       its threads waiting for that lock. Here a job due no sooner than the
       pass already planned wakes nothing: that pass sees it.
    """

    # When the next pass is planned, epoch seconds; None while a pass runs or
    # when none is planned (the thread waits for a wakeup): wake for anything.
    _next_pass_at: float | None = None
    _adding: Any = None  # the job being added, under the store's lock

    def _process_jobs(self) -> float | None:
        if self.state == STATE_STOPPED:
            return None
        self._next_pass_at = None
        try:
            wait_seconds = super()._process_jobs()
        except JobLookupError as exc:
            logger.info("A due job was removed by another process while it ran: %s", exc)
            return 0
        except Exception:
            logger.exception("Scheduler pass failed; retrying in %ss", self.jobstore_retry_interval)
            return self.jobstore_retry_interval
        if wait_seconds is not None and self.state == STATE_RUNNING:
            self._next_pass_at = time.time() + wait_seconds
        return wait_seconds

    def _real_add_job(self, job: Any, jobstore_alias: str, replace_existing: bool) -> None:
        self._adding = job
        try:
            super()._real_add_job(job, jobstore_alias, replace_existing)
        finally:
            self._adding = None

    def wakeup(self) -> None:
        job, planned = self._adding, self._next_pass_at
        run_at = getattr(job, "next_run_time", None)
        if planned is not None and run_at is not None and run_at.timestamp() >= planned:
            return  # the pass planned comes first, and sees the job
        super().wakeup()

    def wakeup_for(self, run_at: datetime) -> None:
        """Wake a running scheduler for a job at ``run_at`` written past ``add_job``, if it must."""
        planned = self._next_pass_at
        if self.state != STATE_RUNNING or (planned is not None and run_at.timestamp() >= planned):
            return  # runs nothing, or the pass planned comes first and sees the job
        super().wakeup()

    def shutdown(self, wait: bool = True) -> None:
        if wait and self.state == STATE_RUNNING:
            self.pause()
            with self._jobstores_lock:
                pass  # the pass under way, if any, has handed its jobs over
            with self._executors_lock:
                executors = list(self._executors.values())
            for executor in executors:
                executor.shutdown(wait=True)
        super().shutdown(wait=False)
