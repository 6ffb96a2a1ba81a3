"""
A job store that is a table of Django's own PostgreSQL database: jobs commit with their change.

The reservation's transaction writes its jobs (``timeline.deadlines_write``),
so they commit or roll back with it; a store the transaction cannot write
costs the reservation nothing.
"""

import logging
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from apps.payments.services import payment_confirm_price
from apps.reservations.models import Reservation
from apps.reservations.services import reservation_extend_hold
from escape_rooms_backend import scheduler as scheduler_module
from escape_rooms_backend.jobstore import shares_database

from ..factories import TimeSlotFactory, reserve
from .test_runner import postgres_store_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


@pytest.fixture
def shared(settings):
    """The job store in the test database itself, as in production on PostgreSQL."""
    if connection.vendor != "postgresql":
        pytest.fail("run with DATABASE_URL=postgres://... (make test-postgres)")
    url = postgres_store_url()
    settings.SCHEDULER_CONFIG = {
        **settings.SCHEDULER_CONFIG,
        "apscheduler.jobstores.default": {"type": "sqlalchemy", "url": url},
    }
    scheduler_module.stop_scheduler()
    engine = create_engine(url)
    yield engine
    scheduler_module.stop_scheduler()
    with engine.begin() as db:
        db.execute(text("CREATE TABLE IF NOT EXISTS apscheduler_jobs_kept (id int)"))
        db.execute(text("DROP TABLE apscheduler_jobs_kept"))
        if db.execute(text("SELECT to_regclass('apscheduler_jobs')")).scalar() is not None:
            db.execute(text("DELETE FROM apscheduler_jobs"))
    engine.dispose()


def jobs(engine) -> dict[str, datetime]:
    with engine.begin() as db:
        rows = db.execute(text("SELECT id, next_run_time FROM apscheduler_jobs")).all()
    return {job_id: datetime.fromtimestamp(ts, UTC) for job_id, ts in rows}


def test_the_store_is_known_to_share_the_database(shared):
    assert shares_database(
        scheduler_module.process.job_store().engine.url, connection.settings_dict
    )


@pytest.mark.parametrize(
    "elsewhere",
    [
        # Another schema: Django's unqualified table name would miss it.
        {"query": {"options": "-csearch_path=jobs"}},
        {"database": "other"},
        {"username": "someone_else"},  # whose search path starts with its own schema
    ],
)
def test_a_store_elsewhere_on_the_server_is_not_taken_for_the_database(shared, elsewhere):
    url = make_url(postgres_store_url()).set(**elsewhere)

    assert not shares_database(url, connection.settings_dict)


def test_a_store_elsewhere_is_not_opened_inside_the_reservations_transaction(job_store):
    # A store that is not the database is written after commit: nothing about
    # it (starting the scheduler that reaches it) happens with the slot locked.
    if connection.vendor != "postgresql":
        pytest.fail("run with DATABASE_URL=postgres://... (make test-postgres)")
    scheduler_module.stop_scheduler()
    opened_in_transaction = []
    original = scheduler_module.process.job_store

    def job_store_opened():
        opened_in_transaction.append(connection.in_atomic_block)
        return original()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler_module.process, "job_store", job_store_opened)
        reservation = reserve(TimeSlotFactory(), hold_seconds=600)

    assert opened_in_transaction
    assert not any(opened_in_transaction)
    assert f"expire_reservation:{reservation.pk}" in job_store.jobs()


def test_a_hold_and_its_expiry_job_commit_together(shared):
    reservation = reserve(TimeSlotFactory(), hold_seconds=600)

    expiry = jobs(shared)[f"expire_reservation:{reservation.pk}"]
    assert abs((expiry - reservation.expires_at).total_seconds()) < 0.001


def test_a_rolled_back_hold_leaves_no_job(shared):
    slot = TimeSlotFactory()
    scheduler_module.process.job_store()  # the table exists: only the rollback can empty it

    with pytest.raises(RuntimeError), transaction.atomic():
        reserve(slot, hold_seconds=600)
        assert any(job.startswith("expire_reservation:") for job in jobs_here())
        raise RuntimeError("the request fails after the hold")

    assert not Reservation.objects.exists()
    assert not [job for job in jobs(shared) if job.startswith("expire_reservation:")]


def jobs_here() -> list[str]:
    """Job ids as the current transaction sees them (its own uncommitted rows included)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM apscheduler_jobs")
        return [row[0] for row in cursor.fetchall()]


def test_paying_removes_the_job_and_extending_the_hold_moves_it(shared):
    paid = reserve(TimeSlotFactory(), hold_seconds=600)
    extended = reserve(TimeSlotFactory(), hold_seconds=600, customer_email="jane@example.com")

    payment_confirm_price(reservation=paid, reference="pay-1", source="customer")
    reservation_extend_hold(reservation=extended, by=timedelta(minutes=10))

    stored = jobs(shared)
    assert f"expire_reservation:{paid.pk}" not in stored
    extended.refresh_from_db()
    moved_to = stored[f"expire_reservation:{extended.pk}"]
    assert abs((moved_to - extended.expires_at).total_seconds()) < 0.001
    assert (moved_to - extended.created_at).total_seconds() > 1190


def test_a_store_the_transaction_cannot_write_costs_the_hold_nothing(shared, caplog):
    scheduler_module.process.job_store()
    with shared.begin() as db:  # as a lost job store: the table gone
        db.execute(text("ALTER TABLE apscheduler_jobs RENAME TO apscheduler_jobs_kept"))
    try:
        with caplog.at_level(logging.WARNING):
            reservation = reserve(TimeSlotFactory(), hold_seconds=600)
    finally:
        with shared.begin() as db:
            db.execute(text("ALTER TABLE apscheduler_jobs_kept RENAME TO apscheduler_jobs"))

    assert Reservation.objects.get(pk=reservation.pk).status == "pending"
    assert "writing them after commit" in caplog.text
