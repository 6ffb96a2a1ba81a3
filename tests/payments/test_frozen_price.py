"""
A booking's price is frozen when its slot is held: staff repricing the room change no hold.

The story from the venue: a customer held a slot at 89.00 EUR, staff then
changed the room's price to 99.00 in the admin, and the customer's payment of
89.00 within the hold must be applied. Every price here is set as staff set
it (the rooms admin) and paid as customers pay (the webhooks, the pages).
"""

from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core import mail

from apps.messaging.services import messages_deliver
from apps.payments.models import Payment
from apps.reservations import services as reservations
from apps.reservations.models import Reservation
from apps.rooms.models import PriceTier, Room

from ..conftest import form_fields
from ..factories import RoomFactory, TimeSlotFactory, reserve
from ..waitlist.conftest import join
from .test_stripe import at_provider, intent_event, signed
from .test_webhook import event, webhook

pytestmark = pytest.mark.django_db


def reprice(admin_client, room: Room, **changes: str) -> None:
    """Staff change the room's fields (``price``, ``price_tiers-0-price``...) on its admin page."""
    url = f"/admin/rooms/room/{room.pk}/change/"
    fields = form_fields(admin_client.get(url).content.decode(), "room_form")
    fields.update({name.replace("__", "-"): [value] for name, value in changes.items()})
    assert admin_client.post(url, fields).status_code == 302


@pytest.fixture
def held_then_repriced(admin_client) -> Reservation:
    """A party of 3 holds a slot at 89.00 EUR; staff then change the room's price to 99.00."""
    room = RoomFactory(price=Decimal("89.00"), slug="tomb", name="The Tomb")
    reservation = reserve(TimeSlotFactory(room=room))
    reprice(admin_client, room, price="99.00")
    room.refresh_from_db()
    assert (room.price, room.price_for(3)) == (Decimal("99.00"), Decimal("99.00"))
    return reservation


def pay_by_webhook(client, reservation: Reservation, amount: str, reference: str) -> dict:
    response = webhook(
        client,
        event(reservation, id=f"evt_{reference}", payment_reference=reference, amount=amount),
    )
    assert response.status_code == 200
    return response.json()


def test_the_held_price_paid_within_the_hold_after_a_price_rise_books_the_game(
    client, held_then_repriced
):
    reservation = held_then_repriced

    answer = pay_by_webhook(client, reservation, "89.00", "psp_89")

    reservation.refresh_from_db()
    assert (answer["outcome"], answer["reason"]) == ("applied", "")
    assert (reservation.status, reservation.payment_reference) == ("paid", "psp_89")
    assert list(Payment.objects.values_list("outcome", "amount")) == [("applied", Decimal("89.00"))]
    assert not Payment.objects.filter(outcome="refund_due").exists()


def test_the_new_price_is_not_the_bookings_and_is_refused_as_an_amount_mismatch(
    client, held_then_repriced
):
    reservation = held_then_repriced

    answer = pay_by_webhook(client, reservation, "99.00", "psp_99")

    reservation.refresh_from_db()
    assert (answer["outcome"], answer["reason"]) == ("refund_due", "amount_mismatch")
    assert reservation.status == "pending"
    messages_deliver()
    [told] = [m for m in mail.outbox if m.subject.startswith("Your payment will be refunded")]
    assert "99.00 EUR" in told.body and "the amount is not the booking's price" in told.body


def test_with_stripe_the_intent_is_for_the_held_price_and_is_captured(
    provider, client, held_then_repriced
):
    reservation = held_then_repriced

    started = client.post(f"/api/reservations/{reservation.token}/payment/").json()
    intent_id = started["payment_intent"]
    intent = provider.client.v1.payment_intents.retrieve(intent_id)
    provider.authorise(intent_id)
    answer = signed(client, intent_event("payment_intent.amount_capturable_updated", intent_id))

    reservation.refresh_from_db()
    assert (started["amount"], started["currency"]) == ("89.00", "EUR")
    assert (intent.amount, intent.currency) == (8900, "eur")
    assert answer.status_code == 200
    assert reservation.status == "paid"
    assert at_provider(provider, intent_id) == ("succeeded", True)
    assert list(Payment.objects.values_list("outcome", "amount", "reference")) == [
        ("applied", Decimal("89.00"), intent_id)
    ]


def test_the_pay_button_and_staffs_mark_paid_take_the_held_price(
    client, admin_client, held_then_repriced
):
    at_the_desk = reserve(TimeSlotFactory(room=held_then_repriced.time_slot.room), party_size=2)
    # Held before: 89.00; held after the rise: 99.00.
    assert (held_then_repriced.price, at_the_desk.price) == (Decimal("89.00"), Decimal("99.00"))

    client.post(f"/reservations/{held_then_repriced.token}/pay/")
    admin_client.post(
        "/admin/reservations/reservation/",
        {
            "action": "mark_paid",
            ACTION_CHECKBOX_NAME: [at_the_desk.pk],
            "apply": "1",
            "payment_reference": "DESK-1",
        },
    )

    paid = Payment.objects.order_by("received_at")
    assert [(p.source, p.outcome, p.amount) for p in paid] == [
        ("customer", "applied", Decimal("89.00")),
        ("staff", "applied", Decimal("99.00")),
    ]
    assert set(Reservation.objects.values_list("status", flat=True)) == {"paid"}


def test_the_page_the_api_the_admin_and_the_messages_show_the_held_price(
    client, admin_client, held_then_repriced
):
    reservation = held_then_repriced

    page = client.get(f"/reservations/{reservation.token}/").content.decode()
    api = client.get(f"/api/reservations/{reservation.token}/").json()
    listed = admin_client.get("/admin/reservations/reservation/").content.decode()
    detail = admin_client.get(f"/admin/reservations/reservation/{reservation.pk}/change/")
    messages_deliver()  # the hold's message, while it is needed
    pay_by_webhook(client, reservation, "89.00", "psp_89")
    messages_deliver()

    assert "<dd>89.00 EUR</dd>" in page and "Pay 89.00 EUR" in page and "99.00" not in page
    assert (api["price"], api["currency"]) == ("89.00", "EUR")
    assert "89.00 EUR" in listed
    assert "89.00" in detail.content.decode() and "99.00" not in detail.content.decode()
    held, booked = mail.outbox
    assert (held.subject.split(":")[0], booked.subject.split(":")[0]) == ("Held for you", "Booked")
    for message in (held, booked):
        assert "Price:   89.00 EUR" in message.body
        assert "89.00 EUR" in message.alternatives[0][0] and "99.00" not in message.body


# The waiting list ----------------------------------------------------------------


def test_an_offer_carries_the_price_of_the_partys_size_when_it_is_offered(client, admin_client):
    room = RoomFactory(price=Decimal("25.00"), pricing=Room.Pricing.PLAYER, max_players=6)
    PriceTier.objects.create(room=room, min_party_size=4, price=Decimal("22.00"))
    slot = TimeSlotFactory(room=room)
    hold = reserve(slot)  # a party of 3: 75.00
    ada = join(slot, "ada@example.com", party_size=4)  # 88.00 then
    messages_deliver()
    [waiting] = [m for m in mail.outbox if m.to == ["ada@example.com"]]
    reprice(admin_client, room, price_tiers__0__price="20.00")  # 80.00 from now

    reservations.reservation_cancel(reservation=hold)
    ada.refresh_from_db()
    offer = ada.offer
    reprice(admin_client, room, price_tiers__0__price="21.00")  # after the offer: not its price

    page = client.get(f"/waitlist/{ada.token}/").content.decode()
    api = client.get(f"/api/waitlist/{ada.token}/").json()
    messages_deliver()  # the offer's message, while it is needed
    answer = pay_by_webhook(client, offer, "80.00", "psp_ada")

    # Waiting, the party is shown the price of the moment; the offer froze the one it was made at.
    assert (
        waiting.subject.startswith("On the waiting list") and "Price:   88.00 EUR" in waiting.body
    )
    assert (hold.price, offer.price, offer.currency) == (Decimal("75.00"), Decimal("80.00"), "EUR")
    assert "<dd>80.00 EUR</dd>" in page
    assert (api["offer"]["price"], api["offer"]["currency"]) == ("80.00", "EUR")
    assert answer["outcome"] == "applied"
    [offered] = [m for m in mail.outbox if m.to == ["ada@example.com"] and "Yours if" in m.subject]
    assert "Price:   80.00 EUR" in offered.body


def test_the_join_page_shows_the_rooms_price_table(client):
    room = RoomFactory(price=Decimal("25.00"), pricing=Room.Pricing.PLAYER, slug="sub")
    PriceTier.objects.create(room=room, min_party_size=4, price=Decimal("22.00"))
    slot = TimeSlotFactory(room=room)
    reserve(slot)

    page = client.get(f"/rooms/sub/{slot.key}/wait/").content.decode()

    assert "25.00 EUR per player; 4+ players 22.00 EUR per player" in page
