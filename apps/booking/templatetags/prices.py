"""A room's prices on the pages: one line for the party sizes it takes."""

from django import template

from apps.rooms.models import Room

register = template.Library()


@register.filter
def price_table(room: Room) -> str:
    """
    The room's rates in words: "89.00 EUR for the game", or by party size:
    "25.00 EUR per player; 4+ players 22.00 EUR per player".
    """
    unit = "per player" if room.pricing == Room.Pricing.PLAYER else "for the game"
    (_, first), *others = room.price_table()
    parts = [f"{first} {room.currency} {unit}"]
    parts += [f"{size}+ players {rate} {room.currency} {unit}" for size, rate in others]
    return "; ".join(parts)
