import contextlib

from apscheduler.triggers.date import DateTrigger

from apps.reservations.deadlines import HOLD_END
from escape_rooms_backend import timeline
from escape_rooms_backend.lifecycle import build_scheduler

from ..conftest import PROJECT_DIR

__all__ = ["PROJECT_DIR", "job_from_another_process"]


@contextlib.contextmanager
def job_from_another_process(reservation, config):
    """Write the hold's end job of ``reservation`` from a scheduler of another process's own."""
    other_process = build_scheduler(config)
    other_process.start(paused=True)
    other_process.add_job(
        timeline.JOB_FUNC,
        trigger=DateTrigger(run_date=reservation.expires_at),
        args=[HOLD_END.name, reservation.pk],
        id=HOLD_END.job_id(reservation.pk),
        misfire_grace_time=None,
    )
    try:
        yield
    finally:
        other_process.shutdown(wait=False)
