import uuid

from .models import Reservation, ReservationEvent, WaitingEntry


def _canonical(token: str) -> uuid.UUID | None:
    # Only the canonical form of the UUID (any case) names a row:
    # ``urn:uuid:``, braces or a dash-less form do not.
    try:
        parsed = uuid.UUID(token)
    except ValueError:
        return None
    return parsed if str(parsed) == token.lower() else None


def reservation_by_token(token: str) -> Reservation | None:
    """The reservation a public token names, with its slot and room; ``None`` if none."""
    if (parsed := _canonical(token)) is None:
        return None
    return Reservation.objects.select_related("time_slot__room").filter(token=parsed).first()


def waiting_entry_by_token(token: str) -> WaitingEntry | None:
    """The place on a waiting list a public token names, with its slot, room and offer."""
    if (parsed := _canonical(token)) is None:
        return None
    return (
        WaitingEntry.objects.select_related("time_slot__room", "offer").filter(token=parsed).first()
    )


# How the audit trail words a move to another time slot (``changes.reservation_move``).
MOVED_PREFIX = "Moved from "


def reservation_moves(reservation_id: int) -> int:
    """How many times the reservation was moved to another time slot."""
    return ReservationEvent.objects.filter(
        reservation_id=reservation_id, detail__startswith=MOVED_PREFIX
    ).count()
