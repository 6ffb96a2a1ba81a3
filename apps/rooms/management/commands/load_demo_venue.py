from datetime import time, timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from apps.rooms.models import PriceTier, Room
from apps.rooms.services import timeslots_generate

DEMO_RESET_MINUTES = 15
DEMO_ROOMS = [
    {
        "slug": "the-lost-tomb",
        "name": "The Lost Tomb",
        "description": "Find the pharaoh's seal before the torches burn out.",
        "duration_minutes": 60,
        "min_players": 2,
        "max_players": 6,
        "reset_minutes": DEMO_RESET_MINUTES,
        "price": Decimal("89.00"),
    },
    {
        "slug": "submarine-k7",
        "name": "Submarine K-7",
        "description": "The hull is leaking. Restore power and surface in time.",
        "duration_minutes": 75,
        "min_players": 3,
        "max_players": 8,
        "reset_minutes": DEMO_RESET_MINUTES,
        # Per player, less from six players up: the demo of a price table.
        "pricing": Room.Pricing.PLAYER,
        "price": Decimal("28.00"),
    },
    {
        "slug": "the-clockmakers-study",
        "name": "The Clockmaker's Study",
        "description": "A gentle first room: wind the clocks, open the hidden drawer.",
        "duration_minutes": 45,
        "min_players": 1,
        "max_players": 4,
        "reset_minutes": DEMO_RESET_MINUTES,
        "price": Decimal("59.00"),
    },
]
# The rate from a party size up, by room.
DEMO_TIERS = {"submarine-k7": {6: Decimal("24.00")}}
DEMO_TIMES = [time(10), time(12), time(14), time(16), time(18), time(20)]
DEMO_DAYS = 14


class Command(BaseCommand):
    help = (
        "Create a demo venue: a few rooms with daily time slots for the next 14 days "
        "(venue time zone). Safe to run again: it adds only what is missing."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        today = timezone.localdate()
        created_slots = 0
        for fields in DEMO_ROOMS:
            room, created = Room.objects.get_or_create(
                slug=fields["slug"], defaults={**fields, "currency": "EUR"}
            )
            if created:
                PriceTier.objects.bulk_create(
                    PriceTier(room=room, min_party_size=size, price=price)
                    for size, price in DEMO_TIERS.get(room.slug, {}).items()
                )
            slots = timeslots_generate(
                room=room,
                start=today,
                end=today + timedelta(days=DEMO_DAYS - 1),
                times=DEMO_TIMES,
            ).created
            created_slots += len(slots)
            self.stdout.write(
                f"{room.name}: {'created' if created else 'exists'}, {len(slots)} new slots"
            )
        self.stdout.write(self.style.SUCCESS(f"Demo venue ready ({created_slots} new slots)."))
