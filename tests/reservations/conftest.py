from datetime import timedelta

from django.utils import timezone

from apps.reservations.models import Reservation
from apps.rooms.models import TimeSlot

from ..factories import ReservationFactory


def lapsed(seconds_ago: float = 60, **fields) -> Reservation:
    """A pending reservation whose hold ended ``seconds_ago``; its slot is reserved."""
    return ReservationFactory(expires_at=timezone.now() - timedelta(seconds=seconds_ago), **fields)


def statuses(*reservations) -> list[tuple[str, str]]:
    """(reservation status, slot status) of each, read from the database."""
    rows = []
    for reservation in reservations:
        reservation.refresh_from_db()
        slot = TimeSlot.objects.get(pk=reservation.time_slot_id)
        rows.append((reservation.status, slot.status))
    return rows
