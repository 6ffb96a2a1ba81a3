"""APScheduler 3.11's BackgroundScheduler with three of its failure modes closed."""

import logging

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
    """

    def _process_jobs(self) -> float | None:
        if self.state == STATE_STOPPED:
            return None
        try:
            return super()._process_jobs()
        except JobLookupError as exc:
            logger.info("A due job was removed by another process while it ran: %s", exc)
            return 0
        except Exception:
            logger.exception("Scheduler pass failed; retrying in %ss", self.jobstore_retry_interval)
            return self.jobstore_retry_interval

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
