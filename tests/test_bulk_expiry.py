"""
Bulk expiry (issue 7): one job or sweep releases every lapsed hold in a few
transactions, and the job store folds a burst of due expiry jobs into one run.
"""

import logging
from datetime import timedelta

import pytest
from apscheduler.job import Job
from django.utils import timezone

from apps.reservations import services
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import reservation_pay, reservations_expire_due
from apps.rooms.models import TimeSlot
from escape_rooms_backend import scheduler
from escape_rooms_backend.scheduler import (
    SWEEP_JOB_ID,
    ExpiryJobStore,
    expire_reservation,
    expiry_job_id,
    start_scheduler,
)

from .conftest import run_together, wait_for
from .factories import ReservationFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db


def lapsed(seconds_ago: float = 60, **fields) -> Reservation:
    return ReservationFactory(expires_at=timezone.now() - timedelta(seconds=seconds_ago), **fields)


def statuses(*reservations) -> list[tuple[str, str]]:
    """(reservation status, slot status) of each, read from the database."""
    rows = []
    for reservation in reservations:
        reservation.refresh_from_db()
        slot = TimeSlot.objects.get(pk=reservation.time_slot_id)
        rows.append((reservation.status, slot.status))
    return rows


def test_bulk_expiry_releases_every_lapsed_hold_and_records_each(
    django_capture_on_commit_callbacks,
):
    gone = [lapsed(seconds_ago=s) for s in (90, 60, 30)]
    current = ReservationFactory()
    now = timezone.now()

    with django_capture_on_commit_callbacks(execute=True):
        expired = reservations_expire_due(now=now, cause=ReservationEvent.Cause.SWEEP)

    assert [hold.reservation_id for hold in expired] == [r.pk for r in gone]  # earliest first
    assert statuses(*gone) == [("cancelled", "active")] * 3
    assert statuses(current) == [("pending", "reserved")]
    for reservation in gone:
        assert reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED
        assert reservation.cancelled_at == now
        event = reservation.events.get()
        assert (event.from_status, event.to_status, event.cause) == (
            "pending",
            "cancelled",
            "sweep",
        )
        assert event.lateness_seconds == (now - reservation.expires_at).total_seconds()
    assert current.events.count() == 0


def test_bulk_expiry_takes_the_earliest_holds_up_to_its_limit():
    oldest, middle, newest = (lapsed(seconds_ago=s) for s in (30, 20, 10))

    expired = reservations_expire_due(limit=2)

    assert [hold.reservation_id for hold in expired] == [oldest.pk, middle.pk]
    assert statuses(newest) == [("pending", "reserved")]
    assert reservations_expire_due(limit=2)[0].reservation_id == newest.pk
    assert reservations_expire_due(limit=2) == []


def test_bulk_expiry_leaves_paid_and_current_holds_alone():
    paid = ReservationFactory()
    reservation_pay(reservation=paid, payment_reference="PAY-1")
    Reservation.objects.filter(pk=paid.pk).update(expires_at=timezone.now() - timedelta(minutes=1))

    assert reservations_expire_due() == []
    assert statuses(paid) == [("paid", "reserved")]


def test_the_expired_holds_jobs_leave_the_store_after_commit(
    job_store, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        held = [reserve(hold_seconds=600) for _ in range(3)]
    assert {expiry_job_id(r.pk) for r in held} <= set(job_store.jobs())
    Reservation.objects.filter(pk__in=[held[0].pk, held[1].pk]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    with django_capture_on_commit_callbacks(execute=True):
        reservations_expire_due()

    assert expiry_job_id(held[0].pk) not in job_store.jobs()
    assert expiry_job_id(held[1].pk) not in job_store.jobs()
    assert expiry_job_id(held[2].pk) in job_store.jobs()


def test_one_expiry_job_releases_every_due_hold_with_the_seed_line_for_each(caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    own, other, another = (lapsed() for _ in range(3))

    expire_reservation(own.pk)

    assert statuses(own, other, another) == [("cancelled", "active")] * 3
    for reservation in (own, other, another):
        assert any(
            m.startswith(f"Cancelled expired reservation {reservation.pk} for John Doe")
            for m in caplog.messages
        )
        assert reservation.events.get().cause == ReservationEvent.Cause.EXPIRY_JOB


def test_a_burst_larger_than_a_batch_is_released_in_several(monkeypatch):
    monkeypatch.setattr(services, "EXPIRE_BATCH_SIZE", 4)
    burst = [lapsed() for _ in range(10)]

    expire_reservation(burst[0].pk)

    assert Reservation.objects.filter(status="pending").count() == 0
    assert statuses(*burst) == [("cancelled", "active")] * 10


def test_a_coalesced_reservation_whose_hold_moved_gets_its_job_back(
    job_store, django_capture_on_commit_callbacks
):
    own = lapsed()
    moved = ReservationFactory(expires_at=timezone.now() + timedelta(minutes=10))
    job_store.create()

    expire_reservation(own.pk, coalesced=[moved.pk])

    assert statuses(own, moved) == [("cancelled", "active"), ("pending", "reserved")]
    assert job_store.jobs()[expiry_job_id(moved.pk)] == moved.expires_at


def store_with_jobs(job_store, run_times: dict[str, object]) -> ExpiryJobStore:
    job_store.create()
    writer = scheduler.get_scheduler()
    for job_id, run_time in run_times.items():
        function = scheduler.SWEEP_JOB_FUNC if job_id == SWEEP_JOB_ID else scheduler.EXPIRY_JOB_FUNC
        args = [] if job_id == SWEEP_JOB_ID else [int(job_id.split(":")[1])]
        writer.add_job(function, "date", run_date=run_time, id=job_id, args=args)
    store = writer._lookup_jobstore("default")
    assert isinstance(store, ExpiryJobStore)
    return store


def due_jobs(now, *reservation_ids: int) -> dict[str, object]:
    """Expiry jobs that fell due a second apart, the first the earliest, the last a second ago."""
    count = len(reservation_ids)
    return {
        expiry_job_id(pk): now - timedelta(seconds=count - i)
        for i, pk in enumerate(reservation_ids)
    }


def test_the_store_folds_due_expiry_jobs_into_the_earliest(job_store):
    now = timezone.now()
    store = store_with_jobs(
        job_store,
        {
            **due_jobs(now, 7, 8, 9),
            expiry_job_id(10): now + timedelta(minutes=5),
            SWEEP_JOB_ID: now - timedelta(seconds=2),
        },
    )

    due: list[Job] = store.get_due_jobs(now)

    assert [job.id for job in due] == [expiry_job_id(7), SWEEP_JOB_ID]
    assert due[0].args == (7,)
    assert due[0].kwargs == {"coalesced": [8, 9]}
    # The folded jobs are gone; the job not yet due and the sweep stay.
    assert set(job_store.jobs()) == {expiry_job_id(7), expiry_job_id(10), SWEEP_JOB_ID}


def test_when_the_first_due_job_moved_meanwhile_the_next_one_carries_the_rest(
    job_store, monkeypatch
):
    # Another process extends the earliest hold (moving its job an hour on)
    # between the store reading the due ids and reading that job.
    now = timezone.now()
    store = store_with_jobs(
        job_store,
        {
            **due_jobs(now, 7, 8, 9),
        },
    )
    read_jobs = store._get_jobs
    moved = []

    def get_jobs_after_a_move(*conditions):
        if not moved:
            later = (now + timedelta(hours=1)).timestamp()
            with store.engine.begin() as db:
                db.execute(
                    store.jobs_t.update()
                    .where(store.jobs_t.c.id == expiry_job_id(7))
                    .values(next_run_time=later)
                )
            moved.append(True)
        return read_jobs(*conditions)

    monkeypatch.setattr(store, "_get_jobs", get_jobs_after_a_move)

    due = store.get_due_jobs(now)

    # The next due job carries the rest; the moved one keeps its row and time.
    assert [(job.id, job.kwargs) for job in due] == [(expiry_job_id(8), {"coalesced": [9]})]
    assert set(job_store.jobs()) == {expiry_job_id(7), expiry_job_id(8)}
    assert job_store.jobs()[expiry_job_id(7)] > now


def test_the_store_hands_over_a_single_due_job_unchanged(job_store):
    now = timezone.now()
    store = store_with_jobs(job_store, {expiry_job_id(7): now - timedelta(seconds=1)})

    due = store.get_due_jobs(now)

    assert [(job.id, job.kwargs) for job in due] == [(expiry_job_id(7), {})]


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_burst_of_holds_ending_together_is_released_at_once(job_store):
    start_scheduler()
    slots = [TimeSlotFactory() for _ in range(200)]
    burst = [reserve(slot, hold_seconds=600) for slot in slots]
    ends = timezone.now() + timedelta(seconds=1)
    Reservation.objects.filter(pk__in=[r.pk for r in burst]).update(expires_at=ends)
    for reservation in burst:  # as a staff extension would move each job
        reservation.expires_at = ends
        scheduler.schedule_reservation_expiry(reservation)

    held = TimeSlot.objects.filter(pk__in=[s.pk for s in slots], status=TimeSlot.Status.RESERVED)
    assert wait_for(lambda: not held.exists(), timeout=4), f"{held.count()} slots still held"
    late = timezone.now() - ends
    assert late < timedelta(seconds=2), late
    assert wait_for(lambda: set(job_store.jobs()) == {SWEEP_JOB_ID}, timeout=2), len(
        job_store.jobs()
    )
    causes = set(
        ReservationEvent.objects.filter(to_status="cancelled").values_list("cause", flat=True)
    )
    assert causes <= {"expiry_job", "sweep"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("skip_locked", [False, True])
@pytest.mark.parametrize("round_", range(4))
def test_payments_racing_a_bulk_expiry_each_have_one_winner(round_, skip_locked):
    boundary = timezone.now() + timedelta(minutes=5)
    holds = [ReservationFactory(expires_at=boundary) for _ in range(6)]

    def pay(reservation):
        copy = Reservation.objects.get(pk=reservation.pk)
        reservation_pay(
            reservation=copy,
            payment_reference=f"PAY-{reservation.pk}",
            now=boundary - timedelta(milliseconds=1),
        )
        return "paid"

    def expire():
        expired = reservations_expire_due(now=boundary, skip_locked=skip_locked)
        return f"expired {len(expired)}"

    outcome = run_together(*[lambda r=r: pay(r) for r in holds], expire, expire)

    rows = statuses(*holds)
    paid = rows.count(("paid", "reserved"))
    assert paid + rows.count(("cancelled", "active")) == len(holds), rows
    # Every reservation has one winner: its payment, or one of the two bulk expiries.
    assert outcome["paid"] == paid
    assert outcome["hold_expired"] == len(holds) - paid
    expired = sum(
        int(key.split()[1]) * n for key, n in outcome.items() if key.startswith("expired")
    )
    assert expired == len(holds) - paid, outcome
