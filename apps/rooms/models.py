from datetime import UTC, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

# A slot's public name in URLs: its start in UTC (TimeSlot.key).
SLOT_KEY_FORMAT = "%Y%m%dT%H%M%SZ"


class Room(models.Model):
    class Pricing(models.TextChoices):
        ROOM = "room", "Per game, whatever the party size"
        PLAYER = "player", "Per player"

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    duration_minutes = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    min_players = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    max_players = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    price = models.DecimalField(
        max_digits=8, decimal_places=2, validators=[MinValueValidator(Decimal("0"))]
    )
    currency = models.CharField(max_length=3, default="EUR", help_text="ISO 4217 code")
    pricing = models.CharField(
        max_length=6,
        choices=Pricing,
        default=Pricing.ROOM,
        help_text="Whether the price (and each tier's) is for the game or for each player.",
    )
    reset_minutes = models.PositiveSmallIntegerField(
        default=0, help_text="Minutes the room needs between two games to be reset."
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(min_players__gte=1) & Q(max_players__gte=models.F("min_players")),
                name="room_player_range_valid",
            ),
            models.CheckConstraint(
                condition=Q(duration_minutes__gte=1), name="room_duration_positive"
            ),
            models.CheckConstraint(condition=Q(price__gte=0), name="room_price_not_negative"),
        ]

    def __str__(self) -> str:
        return self.name

    def price_for(self, party_size: int, tiers: "list[PriceTier] | None" = None) -> Decimal:
        """
        The price of one game for ``party_size`` players, in ``currency``.

        The tier with the largest ``min_party_size`` not above ``party_size``
        sets the rate, else ``price`` does; a rate is for the game or for each
        player, as ``pricing`` says. ``tiers`` saves a query when the caller
        has them (in any order).
        """
        rate = self._rate(party_size, self._tiers(tiers))
        if self.pricing == self.Pricing.PLAYER:
            return rate * party_size
        return rate

    def price_table(self, tiers: "list[PriceTier] | None" = None) -> list[tuple[int, Decimal]]:
        """
        The rates for the party sizes the room takes: ``(from_size, rate)`` pairs.

        The first pair starts at ``min_players``; each next one is where the
        rate changes, up to ``max_players``. A rate is for the game or for
        each player, as ``pricing`` says.
        """
        tiers = self._tiers(tiers)
        table: list[tuple[int, Decimal]] = []
        for size in range(self.min_players, self.max_players + 1):
            rate = self._rate(size, tiers)
            if not table or table[-1][1] != rate:
                table.append((size, rate))
        return table

    def _tiers(self, tiers: "list[PriceTier] | None") -> "list[PriceTier]":
        if tiers is not None:
            return tiers
        # ``all()`` uses a prefetch_related("price_tiers") when there is one.
        return list(self.price_tiers.all()) if self.pk is not None else []

    def _rate(self, party_size: int, tiers: "list[PriceTier]") -> Decimal:
        fitting = [tier for tier in tiers if tier.min_party_size <= party_size]
        if fitting:
            return max(fitting, key=lambda tier: tier.min_party_size).price
        return self.price


class PriceTier(models.Model):
    """A room's rate from ``min_party_size`` players up, per game or per player (``pricing``)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="price_tiers")
    min_party_size = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1)], help_text="The rate applies from this party size up."
    )
    price = models.DecimalField(
        max_digits=8, decimal_places=2, validators=[MinValueValidator(Decimal("0"))]
    )

    class Meta:
        ordering = ["room", "min_party_size"]
        constraints = [
            models.UniqueConstraint(
                fields=["room", "min_party_size"], name="pricetier_unique_room_size"
            ),
            models.CheckConstraint(condition=Q(price__gte=0), name="pricetier_price_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.room}: from {self.min_party_size} players, {self.price} {self.room.currency}"


class ClosureQuerySet(models.QuerySet):
    def over(self, *, room_id, starts_at, ends_at):
        """
        Closures of room ``room_id``, or of the venue, overlapping ``starts_at`` to ``ends_at``.

        The arguments may be ``OuterRef`` expressions: a slot's closures in a
        subquery. A closure ending when a game starts does not overlap it.
        """
        return self.filter(
            Q(room_id=room_id) | Q(room__isnull=True), starts_at__lt=ends_at, ends_at__gt=starts_at
        )


class Closure(models.Model):
    """
    A period in which a room (or, with no room, the whole venue) takes no games.

    A slot overlapping a closure is not offered; closing ends the live holds
    on such slots (``apps.reservations.closures``).
    """

    room = models.ForeignKey(
        Room,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="closures",
        help_text="Empty: the whole venue is closed.",
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    reason = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
    )

    objects = ClosureQuerySet.as_manager()

    class Meta:
        ordering = ["starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__gt=models.F("starts_at")), name="closure_ends_after_start"
            ),
        ]

    def __str__(self) -> str:
        where = self.room.name if self.room is not None else "The venue"
        start = timezone.localtime(self.starts_at)
        return f"{where} closed from {start:%Y-%m-%d %H:%M}: {self.reason}"


def _closures_of_slot():
    """The closures over the slot of the outer query (``OuterRef``)."""
    return Closure.objects.over(
        room_id=OuterRef("room_id"), starts_at=OuterRef("starts_at"), ends_at=OuterRef("ends_at")
    )


class TimeSlotQuerySet(models.QuerySet):
    def closed(self):
        """The slots a closure of their room, or of the whole venue, overlaps."""
        return self.filter(Exists(_closures_of_slot()))

    def closed_by(self, closure: "Closure"):
        """The slots ``closure`` overlaps: of its room, or of every room when it has none."""
        slots = self.filter(starts_at__lt=closure.ends_at, ends_at__gt=closure.starts_at)
        return slots if closure.room_id is None else slots.filter(room_id=closure.room_id)

    def with_availability(self, now):
        """
        Annotate ``available``: bookable at ``now`` (an aware datetime); and ``closed``.

        ``closed``: a closure of the room, or of the whole venue, overlaps the
        slot (``Closure``). A slot is available when it starts after ``now``,
        its room is active, it is not closed and no reservation holds it.
        Only a paid reservation, or a pending one whose hold has not lapsed,
        holds a slot: a lapsed hold counts as free whether or not its expiry
        job has run yet (correctness never waits for the
        scheduler), so the stored ``status`` is not consulted. Unless a party
        the room takes waits for the slot: a lapsed hold then goes to the
        waiting list's first such party (an offer, if the slot starts later
        than ``WAITLIST_OFFER_SECONDS`` from ``now``), so the slot is not
        available even before its expiry job has run.
        """
        from apps.reservations.models import Reservation, WaitingEntry

        holders = Reservation.objects.holding(now).filter(time_slot=OuterRef("pk"))
        lapsed = Reservation.objects.due_for_expiry(now).filter(time_slot=OuterRef("pk"))
        waiting = WaitingEntry.objects.filter(
            time_slot=OuterRef("pk"),
            status=WaitingEntry.Status.WAITING,
            party_size__gte=OuterRef("room__min_players"),
            party_size__lte=OuterRef("room__max_players"),
        )
        offer_from = now + timedelta(seconds=settings.WAITLIST_OFFER_SECONDS)
        return self.annotate(
            closed=Exists(_closures_of_slot()),
            available=models.ExpressionWrapper(
                Q(starts_at__gt=now)
                & Q(room__is_active=True)
                & ~Exists(_closures_of_slot())
                & ~Exists(holders)
                & ~(Q(starts_at__gt=offer_from) & Exists(lapsed) & Exists(waiting)),
                output_field=models.BooleanField(),
            ),
        )


class TimeSlot(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        RESERVED = "reserved", "Reserved"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="time_slots")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status, default=Status.ACTIVE)

    objects = TimeSlotQuerySet.as_manager()

    class Meta:
        ordering = ["starts_at", "room__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["room", "starts_at"], name="timeslot_unique_room_start"
            ),
            models.CheckConstraint(
                condition=Q(ends_at__gt=models.F("starts_at")), name="timeslot_ends_after_start"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.room} at {timezone.localtime(self.starts_at):%Y-%m-%d %H:%M %Z}"

    @property
    def key(self) -> str:
        """The start in UTC, ``20261204T180000Z``: the slot's public name in URLs."""
        return self.starts_at.astimezone(UTC).strftime(SLOT_KEY_FORMAT)
