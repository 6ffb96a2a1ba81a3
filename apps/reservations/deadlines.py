"""
The deadlines on a reservation's timeline that this app owns: the hold's end.

Registered in ``ReservationsConfig.ready()``. The jobs and the sweep call
``handle`` and ``sweep`` here, which call the services and log the seed's
line for every hold they cancel.
"""

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.utils import timezone

from escape_rooms_backend import deadlines, timeline
from escape_rooms_backend.db import chunks

from . import services
from .models import Reservation, ReservationEvent

# The scheduler's logger: the seed's log lines are its contract.
logger = logging.getLogger("escape_rooms_backend.scheduler")

CANCELLED_LOG = "Cancelled expired reservation %s for %s - %s on %s at %s"
Cause = ReservationEvent.Cause
# The audit trail's cause for each way the deadline engine handles a deadline.
EXPIRY_CAUSES = {
    timeline.BY_JOB: Cause.EXPIRY_JOB,
    timeline.BY_SWEEP: Cause.SWEEP,
    timeline.BY_RECONCILE: Cause.RECONCILE,
}


def _log_cancelled(released: Sequence[services.ExpiredHold]) -> None:
    for hold in released:
        local = timezone.localtime(hold.starts_at)
        logger.info(
            CANCELLED_LOG,
            hold.reservation_id,
            hold.customer_name,
            hold.room_name,
            local.date().isoformat(),
            local.time().isoformat(),
        )


def hold_end_due_at(reservation: Reservation) -> datetime | None:
    """A pending reservation's hold ends at ``expires_at``; any other has no hold."""
    if reservation.status == Reservation.Status.PENDING:
        return reservation.expires_at
    return None


def hold_end_handle(reservation_ids: Sequence[int], by: str) -> list[int]:
    """
    Expire every lapsed hold, then look after ``reservation_ids``' own.

    Releases every hold that is due, not only these: in a burst of holds
    ending together the first job frees every slot, and the job store folds
    the burst's other due jobs into this run. Of ``reservation_ids``, one
    whose hold moved later gets its job at the new ``expires_at``; one still
    due was skipped because another transaction holds its row, and is
    returned for the job to try again; paid, cancelled and deleted ones need
    nothing.
    """
    released = services.lapsed_holds_release(cause=EXPIRY_CAUSES[by])
    _log_cancelled(released)
    done = {hold.reservation_id for hold in released}
    watched = [pk for pk in reservation_ids if pk not in done]
    now = timezone.now()
    busy: list[int] = []
    moved: list[Reservation] = []
    for chunk in chunks(watched):
        # Whole instances: every kind's due_at may read any field.
        still_held = Reservation.objects.filter(pk__in=chunk, status=Reservation.Status.PENDING)
        for reservation in still_held:
            if reservation.expires_at <= now:
                busy.append(reservation.pk)
            else:
                moved.append(reservation)
    if moved:
        timeline.deadlines_sync(moved)
    return busy


def hold_end_sweep(now: datetime | None, by: str) -> int:
    """Expire every hold lapsed by ``now``; return how many."""
    released = services.lapsed_holds_release(cause=EXPIRY_CAUSES[by], now=now)
    _log_cancelled(released)
    return len(released)


def hold_end_scheduled() -> Iterable[tuple[int, datetime]]:
    """``(pk, expires_at)`` of every pending reservation, read in chunks."""
    return (
        Reservation.objects.filter(status=Reservation.Status.PENDING)
        .values_list("pk", "expires_at")
        .iterator(chunk_size=5000)
    )


HOLD_END = deadlines.DeadlineKind(
    name=deadlines.EXPIRY,
    job_prefix="expire_reservation:",
    due_at=hold_end_due_at,
    handle=hold_end_handle,
    sweep=hold_end_sweep,
    scheduled=hold_end_scheduled,
    fold=True,
)


def register() -> None:
    """Register this app's deadline kinds."""
    deadlines.register(HOLD_END)
