import uuid

from .models import Reservation


def reservation_by_token(token: str) -> Reservation | None:
    """
    The reservation a public token names, with its slot and room; ``None`` if none.

    Only the canonical form of the UUID (any case) names a reservation:
    ``urn:uuid:``, braces or a dash-less form do not.
    """
    try:
        parsed = uuid.UUID(token)
    except ValueError:
        return None
    if str(parsed) != token.lower():
        return None
    return Reservation.objects.select_related("time_slot__room").filter(token=parsed).first()
