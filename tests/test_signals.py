"""The post_save receiver keeps each reservation's expiry job in the persistent store."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apps.reservations.services import reservation_cancel, reservation_pay
from escape_rooms_backend.scheduler import expiry_job_id

from .factories import ReservationFactory, TimeSlotFactory, reserve


@pytest.mark.django_db(transaction=True)
def test_a_new_reservation_gets_a_job_at_its_expiry_after_commit(job_store):
    slot = TimeSlotFactory()
    with transaction.atomic():
        reservation = reserve(slot)
        assert job_store.jobs() == {}, "the job must wait for the commit"

    assert job_store.jobs() == {expiry_job_id(reservation.pk): reservation.expires_at}


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_reservation_leaves_no_job(job_store):
    slot = TimeSlotFactory()

    with pytest.raises(RuntimeError), transaction.atomic():
        reserve(slot)
        raise RuntimeError("the request failed after reserving")

    assert job_store.jobs() == {}


def test_paying_removes_the_job(job_store, slot, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(slot)
    assert expiry_job_id(reservation.pk) in job_store.jobs()

    with django_capture_on_commit_callbacks(execute=True):
        reservation_pay(reservation=reservation, payment_reference="PAY-1")

    assert job_store.jobs() == {}


def test_cancelling_removes_the_job(job_store, slot, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(slot)

    with django_capture_on_commit_callbacks(execute=True):
        reservation_cancel(reservation=reservation)

    assert job_store.jobs() == {}


def test_a_moved_hold_moves_the_job(job_store, slot, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(slot)
    later = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)

    with django_capture_on_commit_callbacks(execute=True):
        reservation.expires_at = later
        reservation.save(update_fields=["expires_at"])

    assert job_store.jobs() == {expiry_job_id(reservation.pk): later}


def test_saving_other_fields_leaves_the_job_alone(
    job_store, slot, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = reserve(slot)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        reservation.customer_phone = "+49 30 123456"
        reservation.save(update_fields=["customer_phone"])

    assert callbacks == []
    assert job_store.jobs() == {expiry_job_id(reservation.pk): reservation.expires_at}


def test_deleting_a_reservation_removes_its_job(job_store, db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reservation = ReservationFactory()
    assert expiry_job_id(reservation.pk) in job_store.jobs()
    reservation_id = reservation.pk

    with django_capture_on_commit_callbacks(execute=True):
        reservation.delete()

    assert expiry_job_id(reservation_id) not in job_store.jobs()


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

    assert reservation.pk is not None
    assert f"Could not schedule the expiry job of reservation {reservation.pk}" in caplog.text
