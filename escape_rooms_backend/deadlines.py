"""
The registry of deadline kinds: what can fall due on a reservation.

A reservation's timeline is a set of deadlines, each of a *kind*: the hold's
end (``expiry``) first; a reminder before it or a waiting-list offer that
lapses are kinds of the same shape. Each kind says when it falls due for a
reservation, and which service does its work then. ``escape_rooms_backend.timeline``
keeps one job per reservation and kind in the job store, in step with the
reservation after commit, and sweeps and reconciles every kind alike.

Apps register their kinds in ``AppConfig.ready()``. This module imports no
app and no APScheduler: registering costs a process nothing.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The hold's end. Its job ids keep the scheme of the first release, so that
# jobs stored then are still found, folded, moved and removed.
EXPIRY = "expiry"
# The executors a kind's jobs run in: the default pool, or, for a kind whose
# handle waits on a service outside the database (a mail server, a payment
# provider), a small pool of its own, named by the kind, so that a slow
# service never holds back the other deadlines, nor the other services'.
# "outside" is the mail's (the name its stored jobs carry).
DEFAULT_EXECUTOR = "default"
OUTSIDE_EXECUTOR = "outside"


@dataclass(frozen=True)
class DeadlineKind:
    """
    One kind of deadline on a reservation.

    - ``name``: a short slug (``expiry``), in reports, logs and status.
    - ``job_prefix``: job ids are ``<job_prefix><reservation pk>``.
    - ``due_at(reservation)``: the aware datetime at which it falls due for
      that reservation as it stands in memory, or ``None`` when the
      reservation does not need it (any more). Must not query the database:
      it runs after every change of a reservation. ``due_at=None`` makes a
      kind whose jobs are keyed by something else than a reservation (the
      outbox's deliveries, by message): its app schedules them itself with
      ``timeline.deadline_schedule``; everything below reads "pk" for
      "reservation pk".
    - ``handle(reservation_ids, by)``: do the work of the deadlines that fell
      due for these reservations; idempotent, and a reservation that no longer
      needs it is no error. ``by`` says what runs it (``timeline.BY_JOB``,
      ``BY_SWEEP`` or ``BY_RECONCILE``), for the audit trail. Returns the ids
      whose deadline is still due because their rows were busy (locked by
      someone else): the job tries them again shortly. Raises on failure; the
      job is then tried again.
    - ``sweep(now, by)``: handle every deadline of this kind due by ``now``
      (``None``: the clock) whatever its job did; returns how many it handled.
    - ``scheduled()``: ``(reservation pk, due_at)`` for every reservation that
      needs this deadline now, for the reconcile.
    - ``fold``: whether ``handle`` does the work of every due deadline of the
      kind at once, so that the job store may fold due jobs into one run.
    - ``never_due(reservation)``: optional; true when the reservation, as it
      stands in memory, cannot ever have had this deadline, so that there is
      no job to remove (a payment deadline for a reservation whose customer
      never started paying). Spares the job store a write per change.
    - ``executor``: ``DEFAULT_EXECUTOR``, or the name of a pool of its own
      for a kind whose handle waits on a service outside the database
      (``OUTSIDE_EXECUTOR`` is the mail's): a stopping scheduler releases
      the runner lock before it waits for such a pool. A runner of an
      earlier release that does not know the name drops the job; the sweep
      makes up for it.
    """

    name: str
    job_prefix: str
    due_at: Callable[[Any], datetime | None] | None
    handle: Callable[[Sequence[int], str], Sequence[int]]
    sweep: Callable[[datetime | None, str], int]
    scheduled: Callable[[], Iterable[tuple[int, datetime]]]
    fold: bool = False
    executor: str = DEFAULT_EXECUTOR
    never_due: Callable[[Any], bool] | None = None

    def job_id(self, reservation_id: int) -> str:
        """Return the id of this kind's job for a reservation."""
        return f"{self.job_prefix}{reservation_id}"

    def reservation_id(self, job_id: str) -> int | None:
        """Return the reservation a job id of this kind names, or ``None``."""
        suffix = job_id.removeprefix(self.job_prefix)
        if suffix == job_id or not suffix.isdigit():
            return None
        return int(suffix)


_kinds: dict[str, DeadlineKind] = {}


def register(kind: DeadlineKind) -> DeadlineKind:
    """
    Add ``kind`` to the registry and return it; registering it again replaces it.

    Raises ``ValueError`` when another kind has the name or a job prefix that
    overlaps its own (job ids must name exactly one kind).
    """
    for other in _kinds.values():
        if other.name == kind.name:
            continue
        if other.job_prefix.startswith(kind.job_prefix) or kind.job_prefix.startswith(
            other.job_prefix
        ):
            raise ValueError(f"Job prefix {kind.job_prefix!r} overlaps {other.name!r}'s.")
    _kinds[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove the kind named ``name``; a missing one is no error."""
    _kinds.pop(name, None)


def kinds() -> list[DeadlineKind]:
    """Every registered kind, in the order of registration."""
    return list(_kinds.values())


def kind_named(name: str) -> DeadlineKind:
    """Return the kind named ``name``; raises ``LookupError`` when none is registered."""
    try:
        return _kinds[name]
    except KeyError:
        raise LookupError(f"No deadline kind {name!r} is registered.") from None
