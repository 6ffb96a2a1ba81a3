from datetime import date, datetime
from decimal import Decimal

from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Router, Schema

from apps.reservations.errors import InvalidReservation
from config.api_errors import ErrorOut

from .selectors import room_list_active, timeslot_list_for_day

router = Router(tags=["rooms"])

MAX_DAYS_AWAY = 3660
DATE_OUT_OF_RANGE = "Pick a date within ten years of today."


class RoomOut(Schema):
    slug: str
    name: str
    description: str
    duration_minutes: int
    min_players: int
    max_players: int
    price: Decimal
    currency: str


class SlotOut(Schema):
    id: int
    starts_at: datetime
    ends_at: datetime
    available: bool
    closed: bool


@router.get("/rooms/", response=list[RoomOut], summary="List the active rooms")
def list_rooms(request):
    return room_list_active()


@router.get(
    "/rooms/{slug}/slots/",
    response={200: list[SlotOut], 400: ErrorOut, 404: ErrorOut},
    summary="List a room's time slots on one day",
)
def list_slots(request, slug: str, date: date | None = None):
    """
    The slots starting on ``date`` (``YYYY-MM-DD``, the venue's time zone;
    default today there). ``available`` is computed from the holds themselves:
    a hold that lapsed is free even if its expiry job has not run yet.
    ``closed``: the venue closed the room (or itself) at the slot's time; a
    closed slot is never available.
    """
    now = timezone.now()
    room = get_object_or_404(room_list_active(), slug=slug)
    day = date or timezone.localdate(now)
    if abs((day - timezone.localdate(now)).days) > MAX_DAYS_AWAY:
        raise InvalidReservation(fields={"date": [DATE_OUT_OF_RANGE]})
    return timeslot_list_for_day(room=room, day=day, now=now)
