from datetime import timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from apps.messaging.models import Message
from apps.reservations.models import Reservation
from apps.rooms.models import Room, TimeSlot


class RoomFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Room
        django_get_or_create = ["slug"]

    name = factory.Sequence(lambda n: f"Room {n}")
    slug = factory.Sequence(lambda n: f"room-{n}")
    description = "A room for tests."
    duration_minutes = 60
    min_players = 2
    max_players = 6
    price = Decimal("80.00")
    currency = "EUR"
    is_active = True


class TimeSlotFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TimeSlot

    room = factory.SubFactory(RoomFactory)
    # Within the days the booking pages show (14), whichever test runs first.
    starts_at = factory.Sequence(
        lambda n: (timezone.now() + timedelta(days=1, hours=n % 240)).replace(microsecond=0)
    )
    ends_at = factory.LazyAttribute(lambda slot: slot.starts_at + timedelta(minutes=60))


class ReservationFactory(factory.django.DjangoModelFactory):
    """A pending reservation written directly, bypassing the services (for set-ups only)."""

    class Meta:
        model = Reservation

    time_slot = factory.SubFactory(TimeSlotFactory, status=TimeSlot.Status.RESERVED)
    customer_name = "John Doe"
    customer_email = "john@example.com"
    party_size = 3
    price = factory.LazyAttribute(lambda r: r.time_slot.room.price_for(r.party_size))
    currency = factory.LazyAttribute(lambda r: r.time_slot.room.currency)
    status = Reservation.Status.PENDING
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=30))


class MessageFactory(factory.django.DjangoModelFactory):
    """A queued message written directly, bypassing the outbox (for set-ups only)."""

    class Meta:
        model = Message

    key = factory.Sequence(lambda n: f"test:{n}")
    kind = Message.Kind.HOLD_PLACED
    reservation = factory.SubFactory(ReservationFactory)
    message_id = factory.Sequence(lambda n: f"<test.{n}@example.com>")


def reserve(slot=None, **overrides):
    """Reserve through the service as a customer would: John Doe, a party of 3, on ``slot``."""
    from apps.reservations.services import reservation_create

    fields = {"customer_name": "John Doe", "customer_email": "john@example.com", "party_size": 3}
    return reservation_create(
        time_slot_id=(slot or TimeSlotFactory()).pk, **{**fields, **overrides}
    )


def bookings_of(email: str) -> dict[str, Reservation]:
    """
    One customer's reservations in each state that "find my booking" tells apart.

    Written directly, so that no message is queued for them. ``held`` (a
    running hold) and ``paid`` are current: their links are sent. ``lapsed``
    (a hold that ended unpaid, not yet expired by a job), ``cancelled`` and
    ``played`` (paid, for a time that has passed) are not.
    """
    now = timezone.now()
    paid = {"status": Reservation.Status.PAID, "paid_at": now, "payment_reference": "PAY-1"}
    return {
        "held": ReservationFactory(customer_email=email),
        "paid": ReservationFactory(customer_email=email, **paid),
        "lapsed": ReservationFactory(customer_email=email, expires_at=now - timedelta(minutes=1)),
        "cancelled": ReservationFactory(
            customer_email=email,
            status=Reservation.Status.CANCELLED,
            cancelled_at=now,
            cancellation_reason=Reservation.CancellationReason.CUSTOMER,
        ),
        "played": ReservationFactory(
            customer_email=email,
            time_slot=TimeSlotFactory(
                starts_at=(now - timedelta(days=1)).replace(microsecond=0),
                status=TimeSlot.Status.RESERVED,
            ),
            **paid,
        ),
    }
