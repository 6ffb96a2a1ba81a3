from django.db import models
from django.db.models import Q
from django.utils import timezone


class Message(models.Model):
    """
    One message to a customer: a row of the transactional outbox.

    Written in the transaction of the change that causes it, delivered by the
    scheduler's runner after commit. ``key`` makes it unique (one
    confirmation per reservation, one reminder per hold end), so a change
    seen twice never sends twice. The content is rendered when it is
    delivered, from the reservation as it then stands; ``message_id`` is
    fixed at creation, so a resend after a crash carries the same
    ``Message-ID`` header.
    """

    class Kind(models.TextChoices):
        HOLD_PLACED = "hold_placed", "Hold placed"
        REMINDER = "reminder", "Hold ending soon"
        CONFIRMED = "confirmed", "Booking confirmed"
        HOLD_LAPSED = "hold_lapsed", "Hold lapsed"
        CANCELLED = "cancelled", "Booking cancelled"
        REFUND_DUE = "refund_due", "Payment to refund"
        BOOKINGS = "bookings", "Find my booking"
        WAITING = "waiting", "On the waiting list"
        OFFER = "offer", "Waiting-list offer"
        SLOT_BOOKED = "slot_booked", "Waited-for slot booked"
        SLOT_FREE = "slot_free", "Waited-for slot free"
        MOVED = "moved", "Booking moved"
        SLOT_CLOSED = "slot_closed", "Waited-for slot closed"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed (gave up)"
        SKIPPED = "skipped", "Not needed any more"

    key = models.CharField(max_length=100, unique=True, editable=False)
    kind = models.CharField(max_length=12, choices=Kind)
    reservation = models.ForeignKey(
        "reservations.Reservation",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="messages",
        db_index=False,  # message_reservation_kind_idx leads with it
    )
    waiting_entry = models.ForeignKey(
        "reservations.WaitingEntry",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="messages",
        help_text="The place on a waiting list it is about, for waiting-list messages.",
    )
    to_email = models.EmailField(
        max_length=254, blank=True, help_text="The reservation's address, read when it is sent."
    )
    context = models.JSONField(default=dict, blank=True)
    message_id = models.CharField(max_length=255, editable=False)
    status = models.CharField(max_length=8, choices=Status, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A delivery is in flight until then."
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    subject = models.CharField(max_length=200, blank=True)
    last_error = models.TextField(blank=True)
    client_address = models.GenericIPAddressField(
        null=True, blank=True, help_text="Who asked for it (find my booking's rate limit)."
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            # The runner's "pending and due", earliest first.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="message_pending_due_idx",
            ),
            # The backlog's count of failed ones (healthz, scheduler_status).
            models.Index(
                fields=["created_at"],
                condition=Q(status="failed"),
                name="message_failed_idx",
            ),
            models.Index(fields=["reservation", "kind"], name="message_reservation_kind_idx"),
            # Find my booking's rate limit.
            models.Index(
                fields=["created_at"],
                condition=Q(kind="bookings"),
                name="message_bookings_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.status})"
