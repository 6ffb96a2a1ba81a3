"""A room's prices per game or per player, tiers by party size: on the pages, in the admin."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from ninja.testing import TestClient

from apps.booking.views import slot_key
from apps.rooms.api import router
from apps.rooms.forms import TIER_OUTSIDE_PLAYERS
from apps.rooms.models import PriceTier, Room

from ..conftest import form_fields
from ..factories import RoomFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db


def room_with(*tiers: tuple[int, str], price: str, **fields) -> Room:
    room = RoomFactory(price=Decimal(price), **{"min_players": 2, "max_players": 8, **fields})
    for size, price in tiers:
        PriceTier.objects.create(room=room, min_party_size=size, price=Decimal(price))
    return room


def prices(room: Room, sizes) -> list[str]:
    return [str(room.price_for(size)) for size in sizes]


def test_a_flat_price_is_the_same_for_every_party_size():
    room = room_with(price="89.00")

    assert prices(room, [2, 5, 8]) == ["89.00", "89.00", "89.00"]


def test_a_price_per_player_is_multiplied_by_the_party_size():
    room = room_with(price="25.00", pricing=Room.Pricing.PLAYER)

    assert prices(room, [2, 3, 8]) == ["50.00", "75.00", "200.00"]


def test_tiers_per_player_set_the_rate_from_their_party_size_up():
    room = room_with((6, "20.00"), (4, "22.00"), price="25.00", pricing=Room.Pricing.PLAYER)

    # Below the first tier the room's price; then each tier from its size up.
    assert prices(room, [2, 3, 4, 5, 6, 8]) == [
        "50.00",
        "75.00",
        "88.00",
        "110.00",
        "120.00",
        "160.00",
    ]


def test_tiers_per_game_set_the_price_of_the_game_from_their_party_size_up():
    room = room_with((5, "99.00"), price="89.00")

    assert prices(room, [2, 4, 5, 8]) == ["89.00", "89.00", "99.00", "99.00"]


def test_a_hold_freezes_the_price_of_its_party_size():
    room = room_with((4, "22.00"), price="25.00", pricing=Room.Pricing.PLAYER)

    three, four = (
        reserve(TimeSlotFactory(room=room)),
        reserve(TimeSlotFactory(room=room), party_size=4, customer_email="jane@example.com"),
    )

    assert [(r.price, r.currency) for r in (three, four)] == [
        (Decimal("75.00"), "EUR"),
        (Decimal("88.00"), "EUR"),
    ]


def test_the_pages_show_the_price_table_of_the_party_sizes(client):
    room = room_with((4, "22.00"), price="25.00", pricing=Room.Pricing.PLAYER, slug="sub")
    flat = room_with(price="89.00", slug="tomb", name="The Tomb")
    slot = TimeSlotFactory(room=room)
    table = "25.00 EUR per player; 4+ players 22.00 EUR per player"

    rooms = client.get("/").content.decode()
    page = client.get("/rooms/sub/").content.decode()
    form = client.get(f"/rooms/sub/{slot_key(slot)}/reserve/").content.decode()
    flat_page = client.get(f"/rooms/{flat.slug}/").content.decode()

    assert table in rooms and "89.00 EUR for the game" in rooms
    assert table in page and table in form
    assert "89.00 EUR for the game" in flat_page


def test_a_tier_for_the_smallest_party_replaces_the_rooms_price_in_the_table(client):
    room = room_with((2, "79.00"), (6, "99.00"), price="89.00", slug="tomb")

    page = client.get("/rooms/tomb/").content.decode()

    assert room.price_table() == [(2, Decimal("79.00")), (6, Decimal("99.00"))]
    assert "79.00 EUR for the game; 6+ players 99.00 EUR for the game" in page


def test_the_rooms_api_shows_the_pricing_and_the_tiers():
    room_with((4, "22.00"), (6, "20.00"), price="25.00", pricing=Room.Pricing.PLAYER, slug="sub")

    [shown] = TestClient(router).get("/rooms/").json()

    assert (shown["price"], shown["pricing"]) == ("25.00", "player")
    assert shown["price_tiers"] == [
        {"min_party_size": 4, "price": "22.00"},
        {"min_party_size": 6, "price": "20.00"},
    ]


# The admin -------------------------------------------------------------------


def change_page(client, room: Room) -> dict[str, list[str]]:
    """The room's admin page as staff would submit it, unchanged."""
    page = client.get(f"/admin/rooms/room/{room.pk}/change/").content.decode()
    return form_fields(page, "room_form")


def with_tier(fields: dict, size: str, price: str) -> dict:
    return {
        **fields,
        "price_tiers-TOTAL_FORMS": ["1"],
        "price_tiers-0-min_party_size": [size],
        "price_tiers-0-price": [price],
    }


def test_staff_set_per_player_pricing_and_a_tier_in_the_rooms_admin(admin_client):
    room = room_with(price="89.00", slug="sub")
    TimeSlotFactory(room=room)  # the page's upcoming slots are posted back too
    fields = change_page(admin_client, room)
    fields.update(pricing=["player"], price=["25.00"])

    response = admin_client.post(
        f"/admin/rooms/room/{room.pk}/change/", with_tier(fields, "4", "22.00")
    )

    assert response.status_code == 302
    room.refresh_from_db()
    assert (room.pricing, room.price_for(3), room.price_for(4)) == (
        "player",
        Decimal("75.00"),
        Decimal("88.00"),
    )


@pytest.mark.parametrize("size", ["1", "9"])
def test_a_tier_for_a_party_size_the_room_does_not_take_is_refused(admin_client, size):
    room = room_with(price="89.00")
    fields = change_page(admin_client, room)
    fields.update(price=["99.00"])

    response = admin_client.post(
        f"/admin/rooms/room/{room.pk}/change/", with_tier(fields, size, "79.00")
    )

    assert response.status_code == 200
    assert TIER_OUTSIDE_PLAYERS.format(min=2, max=8) in response.content.decode()
    room.refresh_from_db()
    assert (room.price, room.price_tiers.count()) == (Decimal("89.00"), 0)


def test_a_tier_is_checked_against_the_players_as_just_edited(admin_client):
    room = room_with((6, "79.00"), price="89.00")
    fields = change_page(admin_client, room)
    fields.update(max_players=["5"])

    response = admin_client.post(f"/admin/rooms/room/{room.pk}/change/", fields)

    assert response.status_code == 200
    assert TIER_OUTSIDE_PLAYERS.format(min=2, max=5) in response.content.decode()
    room.refresh_from_db()
    assert room.max_players == 8


def test_the_demo_venue_has_a_room_priced_per_player_with_a_tier(client):
    call_command("load_demo_venue", stdout=StringIO())

    page = client.get("/rooms/submarine-k7/").content.decode()

    assert "28.00 EUR per player; 6+ players 24.00 EUR per player" in page
    assert "89.00 EUR for the game" in client.get("/rooms/the-lost-tomb/").content.decode()
