"""
Keep each reservation's expiry job in step with the reservation.

A pending reservation has a job at its ``expires_at``; any other has none. The
receivers decide which and defer the job-store write to
``transaction.on_commit``: the job store commits on its own engine, so writing
before the commit would leave an orphan job behind a rolled-back transaction.
"""

from django.db import transaction
from django.dispatch import Signal

from escape_rooms_backend import scheduler

from .models import Reservation

_JOB_FIELDS = {"status", "expires_at"}

# Sent by the bulk services (``reservations_expire_due``), which change many
# rows with one UPDATE and so send no ``post_save``: ``reservation_ids``, a
# list of primary keys, names the reservations that left ``pending``.
reservations_expired = Signal()


def reservation_saved(
    sender, instance: Reservation, created: bool, update_fields=None, raw=False, **kwargs
):
    if raw or (update_fields is not None and not _JOB_FIELDS & set(update_fields)):
        return
    if instance.status == Reservation.Status.PENDING:
        transaction.on_commit(lambda: scheduler.schedule_reservation_expiry(instance))
    else:
        reservation_id = instance.pk
        transaction.on_commit(lambda: scheduler.unschedule_reservation_expiry(reservation_id))


def reservation_deleted(sender, instance: Reservation, **kwargs):
    reservation_id = instance.pk
    transaction.on_commit(lambda: scheduler.unschedule_reservation_expiry(reservation_id))


def reservations_bulk_expired(sender, reservation_ids: list[int], **kwargs):
    ids = list(reservation_ids)
    transaction.on_commit(lambda: scheduler.unschedule_reservation_expiries(ids))
