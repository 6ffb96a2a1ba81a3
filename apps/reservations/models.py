import math
import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower, Upper
from django.utils import timezone


class ReservationQuerySet(models.QuerySet):
    def holding(self, now):
        """Reservations that hold their slot at ``now``: paid, or pending within the hold."""
        return self.filter(
            Q(status=Reservation.Status.PAID)
            | Q(status=Reservation.Status.PENDING, expires_at__gt=now)
        )

    def due_for_expiry(self, now):
        """Pending reservations whose hold lapsed at or before ``now`` (served by an index)."""
        return self.filter(status=Reservation.Status.PENDING, expires_at__lte=now)


class Reservation(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending payment"
        PAID = "paid", "Paid"
        CANCELLED = "cancelled", "Cancelled"

    class CancellationReason(models.TextChoices):
        EXPIRED = "expired", "Hold expired"
        CUSTOMER = "customer", "Cancelled by the customer"
        STAFF = "staff", "Cancelled by staff"
        CLOSED = "closed", "The venue closed the room"

    class Attendance(models.TextChoices):
        CHECKED_IN = "checked_in", "Checked in"
        NO_SHOW = "no_show", "No-show"

    token = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    time_slot = models.ForeignKey(
        "rooms.TimeSlot", on_delete=models.PROTECT, related_name="reservations"
    )
    customer_name = models.CharField(max_length=100)
    customer_email = models.EmailField(max_length=254)
    customer_phone = models.CharField(max_length=32, blank=True)
    party_size = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    status = models.CharField(max_length=10, choices=Status, default=Status.PENDING)
    expires_at = models.DateTimeField(help_text="End of the payment hold.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    paid_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancellation_reason = models.CharField(max_length=10, choices=CancellationReason, blank=True)
    payment_reference = models.CharField(max_length=100, blank=True)
    extensions = models.PositiveSmallIntegerField(
        default=0, help_text="How often the customer kept the slot (extended the hold)."
    )
    client_address = models.GenericIPAddressField(
        null=True, blank=True, help_text="Where the reservation came from (hold limits)."
    )
    checkout_started_at = models.DateTimeField(
        null=True, blank=True, help_text="When the customer started paying (payment window)."
    )
    request_key = models.UUIDField(
        null=True,
        blank=True,
        unique=True,
        editable=False,
        help_text="The booking form's submission key: a resubmission finds this reservation.",
    )
    price = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        help_text="The price of the game when the slot was held, in currency: what is charged.",
    )
    currency = models.CharField(max_length=3, help_text="ISO 4217 code")
    attendance = models.CharField(max_length=10, choices=Attendance, blank=True)
    attendance_at = models.DateTimeField(null=True, blank=True)
    is_offer = models.BooleanField(
        default=False,
        help_text="Offered to a party from the slot's waiting list: its hold is the offer's.",
    )

    objects = ReservationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # The database, not only Python, guarantees one holder per slot.
            models.UniqueConstraint(
                fields=["time_slot"],
                condition=Q(status__in=["pending", "paid"]),
                name="reservation_one_holder_per_slot",
            ),
            models.CheckConstraint(
                condition=Q(party_size__gte=1), name="reservation_party_size_positive"
            ),
            models.CheckConstraint(
                condition=~Q(status="paid") | Q(paid_at__isnull=False),
                name="reservation_paid_has_paid_at",
            ),
            models.CheckConstraint(
                condition=~Q(status="cancelled")
                | (Q(cancelled_at__isnull=False) & ~Q(cancellation_reason="")),
                name="reservation_cancelled_has_reason",
            ),
        ]
        indexes = [
            # Serves the sweep's "pending and expires_at before now".
            models.Index(
                fields=["expires_at"],
                condition=Q(status="pending"),
                name="reservation_pending_expiry_idx",
            ),
            # Serve the hold limits' counts of one customer's live holds.
            models.Index(
                Upper("customer_email"),
                "expires_at",
                condition=Q(status="pending"),
                name="reservation_held_email_idx",
            ),
            models.Index(
                fields=["client_address", "expires_at"],
                condition=Q(status="pending"),
                name="reservation_held_address_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Reservation {self.pk} ({self.status}) for {self.customer_name}"

    @property
    def is_expired(self) -> bool:
        """True when the reservation is pending and its hold has lapsed (the seed's property)."""
        return self.is_expired_at(timezone.now())

    def is_expired_at(self, now) -> bool:
        return self.status == self.Status.PENDING and self.expires_at <= now

    def current_status(self, now) -> str:
        """The status as of ``now``: a lapsed hold reads as cancelled before any job runs."""
        return self.Status.CANCELLED if self.is_expired_at(now) else self.status

    def current_cancellation_reason(self, now) -> str:
        if self.is_expired_at(now):
            return self.CancellationReason.EXPIRED
        return self.cancellation_reason

    def seconds_left(self, now) -> int:
        """Seconds until the hold lapses, rounded up (0 only once it has); 0 if not pending."""
        if self.status != self.Status.PENDING:
            return 0
        return max(0, math.ceil((self.expires_at - now).total_seconds()))


class ReservationEvent(models.Model):
    """
    One change of a reservation, written in the transaction that made it.

    The audit trail: never updated, never deleted with jobs. ``from_status`` is
    blank for the creation; hold extensions are recorded as pending to pending.
    """

    class Cause(models.TextChoices):
        CUSTOMER = "customer", "Customer"
        STAFF = "staff", "Staff"
        EXPIRY_JOB = "expiry_job", "Expiry job"
        SWEEP = "sweep", "Sweep"
        RECLAIM = "reclaim", "Reclaimed by a new reservation"
        RECONCILE = "reconcile", "Reconcile"
        PAYMENT = "payment", "Payment provider"
        WAITLIST = "waitlist", "Waiting list"
        CLOSURE = "closure", "Room closed"

    # PROTECT: a reservation with a history cannot be deleted with it.
    reservation = models.ForeignKey(Reservation, on_delete=models.PROTECT, related_name="events")
    from_status = models.CharField(max_length=10, choices=Reservation.Status, blank=True)
    to_status = models.CharField(max_length=10, choices=Reservation.Status)
    at = models.DateTimeField()
    cause = models.CharField(max_length=12, choices=Cause)
    staff_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    lateness_seconds = models.FloatField(
        null=True,
        blank=True,
        help_text="Expiries only: seconds from expires_at until the slot was released.",
    )
    detail = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["at", "pk"]
        indexes = [models.Index(fields=["cause", "at"], name="reservationevent_cause_at_idx")]

    def __str__(self) -> str:
        before = self.from_status or "new"
        at = timezone.localtime(self.at)
        return f"{before} → {self.to_status} by {self.cause} at {at:%Y-%m-%d %H:%M:%S %Z}"


class WaitingEntry(models.Model):
    """
    One party on a time slot's waiting list.

    Parties are served in the order they joined (``pk``). When the slot's
    holder lets it go, the first party still ``waiting`` is given an *offer*:
    a pending reservation with a hold of ``WAITLIST_OFFER_SECONDS`` (``offer``).
    An entry is *live* while waiting or offered; every other status ends it.
    """

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting"
        OFFERED = "offered", "Offered the slot"
        BOOKED = "booked", "Booked the slot"
        LAPSED = "lapsed", "Let the offer lapse"
        LEFT = "left", "Left the list"
        CLOSED = "closed", "List closed: the slot went free to everyone, or was closed"

    LIVE = (Status.WAITING, Status.OFFERED)

    token = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    time_slot = models.ForeignKey(
        "rooms.TimeSlot", on_delete=models.PROTECT, related_name="waiting_entries"
    )
    customer_name = models.CharField(max_length=100)
    customer_email = models.EmailField(max_length=254)
    customer_phone = models.CharField(max_length=32, blank=True)
    party_size = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    status = models.CharField(max_length=8, choices=Status, default=Status.WAITING)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    offer = models.OneToOneField(
        Reservation,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="waiting_entry",
        help_text="The reservation this party was offered, once it was.",
    )
    offered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    request_key = models.UUIDField(
        null=True,
        blank=True,
        unique=True,
        editable=False,
        help_text="The join form's submission key: a resubmission finds this entry.",
    )

    class Meta:
        ordering = ["time_slot", "pk"]
        verbose_name_plural = "waiting entries"
        constraints = [
            # One live place per party and slot: joining twice is an error.
            models.UniqueConstraint(
                Lower("customer_email"),
                "time_slot",
                condition=Q(status__in=["waiting", "offered"]),
                name="waitingentry_one_live_per_email_and_slot",
            ),
            models.CheckConstraint(
                condition=Q(party_size__gte=1), name="waitingentry_party_size_positive"
            ),
        ]
        indexes = [
            # The hand-over's and the slot lists' "who is waiting on these slots".
            models.Index(
                fields=["time_slot", "id"],
                condition=Q(status="waiting"),
                name="waitingentry_waiting_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer_name} ({self.status}) waiting for {self.time_slot}"

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE

    def current_status(self, now) -> str:
        """The status as of ``now``: an offer past its hold reads as lapsed before any job runs."""
        if self.status == self.Status.OFFERED and self.offer and self.offer.is_expired_at(now):
            return self.Status.LAPSED
        return self.status
