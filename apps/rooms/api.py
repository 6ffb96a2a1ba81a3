from datetime import date, datetime
from decimal import Decimal

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Field, Router, Schema

from apps.reservations.errors import InvalidReservation
from config.api_errors import ErrorOut

from .models import Room
from .selectors import (
    DATE_OUT_OF_RANGE,
    day_within_reach,
    room_list_active,
    timeslot_list_for_day,
    timeslot_list_fresh_for,
)

router = Router(tags=["rooms"])


class PriceTierOut(Schema):
    min_party_size: int = Field(..., description="The rate applies from this party size up.")
    price: Decimal


class RoomOut(Schema):
    slug: str
    name: str
    description: str
    duration_minutes: int
    min_players: int
    max_players: int
    price: Decimal = Field(..., description="The rate below the first tier.")
    currency: str
    pricing: Room.Pricing = Field(
        ..., description="`room`: a rate is for the game; `player`: for each player."
    )
    price_tiers: list[PriceTierOut] = Field(
        ..., description="The rates from a party size up, by size; empty for one rate."
    )

    @staticmethod
    def resolve_price_tiers(room: Room) -> list:
        return list(room.price_tiers.all())


class SlotOut(Schema):
    id: int
    starts_at: datetime
    ends_at: datetime
    available: bool
    closed: bool


@router.get("/rooms/", response=list[RoomOut], summary="List the active rooms")
def list_rooms(request, response: HttpResponse):
    """Public: may be cached for ``PUBLIC_LIST_MAX_AGE`` seconds."""
    response["Cache-Control"] = f"public, max-age={settings.PUBLIC_LIST_MAX_AGE}"
    return room_list_active()


@router.get(
    "/rooms/{slug}/slots/",
    response={200: list[SlotOut], 400: ErrorOut, 404: ErrorOut},
    summary="List a room's time slots on one day",
)
def list_slots(request, response: HttpResponse, slug: str, date: date | None = None):
    """
    The slots starting on ``date`` (``YYYY-MM-DD``, the venue's time zone;
    default today there). ``available`` is computed from the holds themselves:
    a hold that lapsed is free even if its expiry job has not run yet.
    ``closed``: the venue closed the room (or itself) at the slot's time; a
    closed slot is never available.

    Public: may be cached for ``PUBLIC_LIST_MAX_AGE`` seconds, or less, so
    that no copy outlives the next hold's end or slot's start.
    """
    now = timezone.now()
    room = get_object_or_404(room_list_active(), slug=slug)
    day = date or timezone.localdate(now)
    if not day_within_reach(day, timezone.localdate(now)):
        raise InvalidReservation(fields={"date": [DATE_OUT_OF_RANGE]})
    fresh_for = timeslot_list_fresh_for(room=room, day=day, now=now)
    response["Cache-Control"] = f"public, max-age={fresh_for}"
    return timeslot_list_for_day(room=room, day=day, now=now)
