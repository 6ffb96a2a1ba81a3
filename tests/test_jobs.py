"""The expiry job and the sweep, called directly as the scheduler would call them."""

import logging
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from apps.reservations import services
from apps.reservations.models import Reservation
from apps.rooms.models import TimeSlot
from escape_rooms_backend import scheduler
from escape_rooms_backend.scheduler import (
    cancel_expired_reservations,
    expire_reservation,
    expiry_job_id,
)

from .factories import ReservationFactory, RoomFactory, TimeSlotFactory

pytestmark = pytest.mark.django_db


def lapsed_reservation(**fields):
    """A pending reservation whose hold ended a minute ago; its slot is reserved."""
    return ReservationFactory(expires_at=timezone.now() - timedelta(minutes=1), **fields)


def seed_line(reservation) -> str:
    starts_at = timezone.localtime(reservation.time_slot.starts_at)
    return (
        f"Cancelled expired reservation {reservation.pk} for {reservation.customer_name} - "
        f"{reservation.time_slot.room.name} on {starts_at:%Y-%m-%d} at {starts_at:%H:%M:%S}"
    )


def test_the_job_expires_its_reservation_and_logs_the_seed_line(caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    reservation = lapsed_reservation(
        time_slot=TimeSlotFactory(
            room=RoomFactory(name="Test Room"), status=TimeSlot.Status.RESERVED
        )
    )

    expire_reservation(reservation.pk)

    reservation.refresh_from_db()
    assert reservation.status == Reservation.Status.CANCELLED
    assert TimeSlot.objects.get(pk=reservation.time_slot_id).status == TimeSlot.Status.ACTIVE
    record = next(r for r in caplog.records if r.getMessage().startswith("Cancelled expired"))
    assert record.name == "escape_rooms_backend.scheduler"
    assert record.levelname == "INFO"
    assert record.getMessage() == seed_line(reservation)


def test_the_job_leaves_a_paid_reservation_paid(caplog):
    reservation = ReservationFactory()
    services.reservation_pay(reservation=reservation, payment_reference="PAY-1")

    expire_reservation(reservation.pk)

    assert Reservation.objects.get(pk=reservation.pk).status == Reservation.Status.PAID
    assert "Cancelled expired" not in caplog.text


def test_the_job_for_a_deleted_reservation_does_nothing(caplog):
    expire_reservation(987654)

    assert "Cancelled expired" not in caplog.text
    assert "Failed" not in caplog.text


def test_a_job_that_fires_before_a_moved_hold_reschedules_itself(
    job_store, django_capture_on_commit_callbacks
):
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(minutes=5))

    expire_reservation(reservation.pk)

    assert Reservation.objects.get(pk=reservation.pk).status == Reservation.Status.PENDING
    assert job_store.jobs() == {expiry_job_id(reservation.pk): reservation.expires_at}


def test_a_database_error_in_the_job_is_logged_not_raised(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise OperationalError("database went away")

    monkeypatch.setattr(services, "reservations_expire_due", broken)
    monkeypatch.setattr(type(Reservation.objects.all()), "due_for_expiry", broken)

    expire_reservation(41, coalesced=[42, 43])

    record = next(r for r in caplog.records if r.getMessage().startswith("Failed to expire"))
    assert record.levelname == "ERROR"
    assert record.getMessage() == "Failed to expire reservation 41; trying again in 10s"
    assert record.exc_info is not None
    # The job, with the reservations folded into it, is back in the store.
    retry = scheduler._job_store().lookup_job(expiry_job_id(41))
    assert retry.kwargs == {"coalesced": [42, 43]}
    delay = (retry.next_run_time - timezone.now()).total_seconds()
    assert 8 < delay <= scheduler.JOB_RETRY_SECONDS


def test_the_sweep_cancels_every_lapsed_hold_and_reports_the_count(caplog):
    caplog.set_level(logging.INFO, logger="escape_rooms_backend.scheduler")
    lapsed = [lapsed_reservation() for _ in range(3)]
    current = ReservationFactory()

    assert cancel_expired_reservations() == 3

    assert set(Reservation.objects.filter(status="cancelled").values_list("pk", flat=True)) == {
        r.pk for r in lapsed
    }
    assert Reservation.objects.get(pk=current.pk).status == Reservation.Status.PENDING
    assert "Successfully cancelled 3 expired reservations" in caplog.messages
    for reservation in lapsed:
        reservation.refresh_from_db()
        assert seed_line(reservation) in caplog.messages


def test_the_sweep_with_nothing_to_do_says_so_at_debug(caplog):
    caplog.set_level(logging.DEBUG, logger="escape_rooms_backend.scheduler")
    ReservationFactory()

    assert cancel_expired_reservations() == 0

    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "No expired reservations found")
    ]


def test_one_failing_reservation_does_not_stop_the_sweep(monkeypatch, caplog):
    first, broken, last = (lapsed_reservation() for _ in range(3))
    real_expire = services.reservation_expire

    def expire(*, reservation_id, **kwargs):
        if reservation_id == broken.pk:
            raise RuntimeError("row is corrupt")
        return real_expire(reservation_id=reservation_id, **kwargs)

    def expire_due(**kwargs):
        raise RuntimeError("row is corrupt")

    monkeypatch.setattr(services, "reservations_expire_due", expire_due)
    monkeypatch.setattr(services, "reservation_expire", expire)

    assert cancel_expired_reservations() == 2

    statuses = dict(Reservation.objects.values_list("pk", "status"))
    assert statuses == {first.pk: "cancelled", broken.pk: "pending", last.pk: "cancelled"}
    assert "Bulk expiry failed; expiring the lapsed holds one at a time" in caplog.messages
    assert f"Failed to cancel expired reservation {broken.pk}" in caplog.messages


def test_the_sweep_survives_a_database_error(monkeypatch, caplog):
    def broken(self, now):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(type(Reservation.objects.all()), "due_for_expiry", broken)

    assert cancel_expired_reservations() == 0
    assert "Sweep could not list expired reservations" in caplog.text


def test_expiry_job_ids_follow_the_documented_form():
    assert expiry_job_id(123) == "expire_reservation:123"
    assert scheduler.EXPIRY_JOB_FUNC == "escape_rooms_backend.scheduler:expire_reservation"


def test_a_job_write_racing_the_runners_delete_is_tried_once_more(job_store, monkeypatch, caplog):
    from apscheduler.jobstores.base import ConflictingIdError
    from apscheduler.schedulers.base import BaseScheduler

    real_add_job = BaseScheduler.add_job
    attempts = []

    def add_job(self, *args, **kwargs):
        attempts.append(kwargs["id"])
        if len(attempts) == 1:
            raise ConflictingIdError(kwargs["id"])
        return real_add_job(self, *args, **kwargs)

    monkeypatch.setattr(BaseScheduler, "add_job", add_job)
    reservation = ReservationFactory.build(pk=77, expires_at=timezone.now() + timedelta(hours=1))

    assert scheduler.schedule_reservation_expiry(reservation) is True

    assert attempts == ["expire_reservation:77"] * 2
    assert set(job_store.jobs()) == {"expire_reservation:77"}
    assert "Could not schedule" not in caplog.text


def test_a_job_store_that_stays_broken_is_logged_and_reported(job_store, monkeypatch, caplog):
    from apscheduler.schedulers.base import BaseScheduler

    def add_job(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(BaseScheduler, "add_job", add_job)
    reservation = ReservationFactory.build(pk=78, expires_at=timezone.now() + timedelta(hours=1))

    assert scheduler.schedule_reservation_expiry(reservation) is False
    assert "Could not schedule the expiry job of reservation 78" in caplog.text


def test_a_busy_job_store_at_start_is_tried_again(job_store, monkeypatch, caplog):
    from escape_rooms_backend.scheduler import _start_paused, get_scheduler

    target = get_scheduler()
    real_start = type(target).start
    tries = []

    def start(self, *args, **kwargs):
        tries.append(1)
        if len(tries) == 1:
            raise OperationalError("database is locked")
        return real_start(self, *args, **kwargs)

    monkeypatch.setattr(type(target), "start", start)

    _start_paused(target)

    assert len(tries) == 2 and target.running
    assert "Job store busy at start; trying again (1/5)" in caplog.text


def test_a_job_that_cannot_be_removed_is_logged_and_reported(job_store, monkeypatch, caplog):
    from apscheduler.schedulers.base import BaseScheduler

    def remove_job(self, job_id, jobstore=None):
        raise RuntimeError("store unreachable")

    monkeypatch.setattr(BaseScheduler, "remove_job", remove_job)

    assert scheduler.unschedule_reservation_expiry(79) is False
    assert "Could not remove the expiry job of reservation 79" in caplog.text


@pytest.mark.parametrize(
    "url", ["sqlite:///:memory:", "postgresql+psycopg://u@localhost/db"], ids=["memory", "server"]
)
def test_job_stores_without_a_file_still_check_their_connections(url):
    from escape_rooms_backend.scheduler import _prepare_jobstore

    options = _prepare_jobstore({"type": "sqlalchemy", "url": url})

    assert options["engine_options"]["pool_pre_ping"] is True
    assert options["url"] == url


@pytest.mark.parametrize(("due_in", "notified"), [(10, True), (60, True), (1800, False)])
def test_only_jobs_due_before_the_runners_next_look_are_announced(
    job_store, monkeypatch, due_in, notified
):
    calls = []
    monkeypatch.setattr(scheduler, "_notify_runner", lambda: calls.append(1))
    reservation = ReservationFactory(expires_at=timezone.now() + timedelta(seconds=due_in))

    assert scheduler.schedule_reservation_expiry(reservation)

    assert bool(calls) is notified
    assert expiry_job_id(reservation.pk) in job_store.jobs()


@pytest.mark.django_db(transaction=True)  # the started scheduler's jobs use the database
def test_the_runner_looks_for_new_jobs_at_least_every_notify_horizon(settings, monkeypatch):
    settings.SCHEDULER_POLL_SECONDS = 600
    intervals = []
    monkeypatch.setattr(scheduler, "_start_poller", lambda s, interval: intervals.append(interval))

    started = scheduler.start_scheduler()

    assert started.running
    assert intervals == [scheduler.NOTIFY_HORIZON_SECONDS]


def test_a_sqlite_job_store_commits_without_waiting_for_an_fsync(job_store):
    job_store.create()
    store = scheduler._job_store()

    with store.engine.connect() as db:
        journal = db.exec_driver_sql("PRAGMA journal_mode").scalar()
        synchronous = db.exec_driver_sql("PRAGMA synchronous").scalar()

    assert (journal, synchronous) == ("wal", 1)  # 1 is NORMAL: durable once in the WAL
