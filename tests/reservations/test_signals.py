"""
``reservations_changed`` keeps each reservation's hold-end job in step, after commit.

The services send it with every reservation they change, one or many; its
receiver writes the job store only once the transaction has committed.
"""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation
from apps.reservations.services import (
    lapsed_holds_expire,
    reservation_cancel,
    reservation_checkout,
    reservation_extend_hold,
    reservation_pay,
)
from apps.reservations.signals import reservations_changed

from ..factories import TimeSlotFactory, reserve

# The expiry engine's own jobs: the messages' kinds have tests of their own.
pytestmark = pytest.mark.usefixtures("hold_end_only")


@pytest.fixture
def changes():
    """Every ``reservations_changed`` sent during the test: the ids of each."""
    sent: list[list[int]] = []

    def receive(sender, reservations, **kwargs):
        sent.append([reservation.pk for reservation in reservations])

    reservations_changed.connect(receive, sender=Reservation, dispatch_uid="test_changes")
    yield sent
    reservations_changed.disconnect(sender=Reservation, dispatch_uid="test_changes")


@pytest.mark.django_db(transaction=True)
def test_a_new_reservation_gets_a_job_at_its_expiry_after_commit(job_store):
    slot = TimeSlotFactory()
    with transaction.atomic():
        reservation = reserve(slot)
        assert job_store.jobs() == {}, "the job must wait for the commit"

    assert job_store.jobs() == {HOLD_END.job_id(reservation.pk): reservation.expires_at}


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_reservation_leaves_no_job(job_store, changes):
    slot = TimeSlotFactory()

    with pytest.raises(RuntimeError), transaction.atomic():
        reserve(slot)
        raise RuntimeError("the request failed after reserving")

    assert len(changes) == 1  # sent, then rolled back with the reservation
    assert job_store.jobs() == {}
    assert not Reservation.objects.exists()


@pytest.mark.django_db
def test_paying_removes_the_job(job_store, slot, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(slot)
    assert HOLD_END.job_id(reservation.pk) in job_store.jobs()

    with django_capture_on_commit_callbacks(execute=True):
        reservation_pay(reservation=reservation, payment_reference="PAY-1")

    assert job_store.jobs() == {}


@pytest.mark.django_db
def test_cancelling_removes_the_job(job_store, slot, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(slot)

    with django_capture_on_commit_callbacks(execute=True):
        reservation_cancel(reservation=reservation)

    assert job_store.jobs() == {}


@pytest.mark.django_db
def test_extending_the_hold_moves_the_job(job_store, slot, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(slot)
    later = reservation.expires_at + timedelta(minutes=15)

    with django_capture_on_commit_callbacks(execute=True):
        reservation_extend_hold(reservation=reservation, by=timedelta(minutes=15))

    assert job_store.jobs() == {HOLD_END.job_id(reservation.pk): later}


@pytest.mark.django_db
def test_starting_checkout_moves_the_job_to_the_end_of_the_payment_window(
    job_store, slot, settings, django_capture_on_commit_callbacks
):
    settings.PAYMENT_WINDOW_SECONDS = 600
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(slot, hold_seconds=60)
    now = timezone.now()

    with django_capture_on_commit_callbacks(execute=True):
        reservation_checkout(reservation=reservation, now=now)

    assert job_store.jobs() == {HOLD_END.job_id(reservation.pk): now + timedelta(seconds=600)}


@pytest.mark.django_db
def test_a_bulk_expiry_sends_one_signal_and_removes_the_jobs_after_commit(
    job_store, changes, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        held = [reserve(hold_seconds=600) for _ in range(3)]
    assert {HOLD_END.job_id(r.pk) for r in held} == set(job_store.jobs())
    lapsed = [held[0].pk, held[1].pk]
    Reservation.objects.filter(pk__in=lapsed).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    changes.clear()

    with django_capture_on_commit_callbacks(execute=True):
        lapsed_holds_expire()

    assert changes == [lapsed]
    assert set(job_store.jobs()) == {HOLD_END.job_id(held[2].pk)}


@pytest.mark.django_db
def test_a_job_store_failure_does_not_fail_the_reservation(
    settings, tmp_path, slot, django_capture_on_commit_callbacks, caplog
):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    settings.SCHEDULER_CONFIG = {
        **settings.SCHEDULER_CONFIG,
        "apscheduler.jobstores.default": {
            "type": "sqlalchemy",
            "url": f"sqlite:///{not_a_folder / 'jobs.sqlite3'}",
        },
    }

    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(slot)

    assert Reservation.objects.get(pk=reservation.pk).status == Reservation.Status.PENDING
    assert f"Could not schedule the expiry job of reservation {reservation.pk}" in caplog.text
