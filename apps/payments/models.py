from django.conf import settings
from django.db import models


class Payment(models.Model):
    """
    One payment confirmation received, and what became of it. Never deleted.

    Every confirmation ends here with an outcome, whatever the state of its
    reservation: money that arrived is never dropped.
    """

    class Outcome(models.TextChoices):
        APPLIED = "applied", "Applied"
        APPLIED_LATE = "applied_late", "Applied after the hold lapsed"
        REFUND_DUE = "refund_due", "Refund due"

    class Reason(models.TextChoices):
        NONE = "", "-"
        UNKNOWN_RESERVATION = "unknown_reservation", "No such reservation"
        AMOUNT_MISMATCH = "amount_mismatch", "Amount or currency does not match the price"
        ALREADY_PAID = "already_paid", "The reservation was already paid"
        CANCELLED = "cancelled", "The reservation was cancelled by the customer or staff"
        SLOT_TAKEN = "slot_taken", "The hold lapsed and the slot belongs to someone else"
        SLOT_STARTED = "slot_started", "The hold lapsed and the game has started"

    class Flag(models.TextChoices):
        NONE = "", "-"
        REFUNDED_AT_PROVIDER = "refunded_at_provider", "Refunded at the provider"
        DISPUTED = "disputed", "Disputed by the cardholder"
        REFUND_REFUSED = "refund_refused", "Refund refused by the provider"

    reference = models.CharField(
        max_length=100, unique=True, help_text="The payment provider's reference."
    )
    reservation = models.ForeignKey(
        "reservations.Reservation",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="payments",
    )
    reservation_token = models.CharField(
        max_length=100, help_text="The reservation token as the confirmation named it."
    )
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3)
    received_at = models.DateTimeField()
    source = models.CharField(max_length=20, help_text="webhook, customer or staff")
    event_id = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=12, choices=Outcome)
    reason = models.CharField(max_length=20, choices=Reason, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    refunded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    refund_reference = models.CharField(
        max_length=100, blank=True, help_text="The provider's id of the refund."
    )
    refund_requested_at = models.DateTimeField(
        null=True, blank=True, help_text="When staff asked the provider to refund it."
    )
    flag = models.CharField(max_length=24, choices=Flag, blank=True)
    flagged_at = models.DateTimeField(null=True, blank=True)
    flag_detail = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["outcome", "refunded_at"], name="payment_refunds_idx")]

    def __str__(self) -> str:
        return f"{self.reference} {self.amount} {self.currency} ({self.outcome})"


class ProviderPayment(models.Model):
    """
    A payment a customer started at a provider that authorises (a Stripe PaymentIntent).

    One per reservation. ``status`` mirrors the provider's as last read;
    ``outcome`` is what this product did with it: captured (the booking is
    paid, see ``payment``) or voided (the authorisation was cancelled, so
    nothing was charged), with the reason.
    """

    class Status(models.TextChoices):
        CREATING = "creating", "Being created at the provider"
        REQUIRES_PAYMENT_METHOD = "requires_payment_method", "Waiting for a card"
        REQUIRES_CONFIRMATION = "requires_confirmation", "Waiting for confirmation"
        REQUIRES_ACTION = "requires_action", "Waiting for the customer (3-D Secure)"
        PROCESSING = "processing", "Processing at the provider"
        REQUIRES_CAPTURE = "requires_capture", "Authorised, not captured"
        SUCCEEDED = "succeeded", "Captured"
        CANCELED = "canceled", "Cancelled at the provider"

    class Outcome(models.TextChoices):
        OPEN = "", "Open"
        CAPTURED = "captured", "Captured: the booking is paid"
        VOIDED = "voided", "Voided: the authorisation was cancelled, nothing charged"

    class Reason(models.TextChoices):
        NONE = "", "-"
        HOLD_LAPSED = "hold_lapsed", "The hold lapsed before the payment was authorised"
        SLOT_TAKEN = "slot_taken", "Authorised after the hold lapsed; the slot was taken"
        SLOT_STARTED = "slot_started", "Authorised after the game had started"
        CANCELLED = "cancelled", "The reservation was cancelled by the customer or staff"
        ALREADY_PAID = "already_paid", "The reservation was already paid"
        AMOUNT_MISMATCH = "amount_mismatch", "Amount or currency does not match the price"
        CANCELED_AT_PROVIDER = "canceled_at_provider", "Cancelled at the provider"

    OPEN_STATUSES = (
        Status.CREATING,
        Status.REQUIRES_PAYMENT_METHOD,
        Status.REQUIRES_CONFIRMATION,
        Status.REQUIRES_ACTION,
        Status.PROCESSING,
        Status.REQUIRES_CAPTURE,
    )

    reservation = models.OneToOneField(
        "reservations.Reservation", on_delete=models.PROTECT, related_name="provider_payment"
    )
    provider = models.CharField(max_length=20)
    provider_id = models.CharField(
        max_length=100, unique=True, null=True, blank=True, help_text="The PaymentIntent's id."
    )
    client_secret = models.CharField(max_length=200, blank=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=24, choices=Status, default=Status.CREATING)
    outcome = models.CharField(max_length=10, choices=Outcome, blank=True)
    reason = models.CharField(max_length=24, choices=Reason, blank=True)
    created_at = models.DateTimeField()
    checked_at = models.DateTimeField(null=True, blank=True, help_text="Last read at the provider.")
    in_flight_since = models.DateTimeField(
        null=True, blank=True, help_text="First seen authorised or processing."
    )
    capture_attempted_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="First asked to capture: the slot is kept until the provider answers.",
    )
    settled_at = models.DateTimeField(null=True, blank=True)
    payment = models.OneToOneField(
        Payment, on_delete=models.PROTECT, null=True, blank=True, related_name="provider_payment"
    )
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["created_at"],
                condition=models.Q(outcome=""),
                name="providerpayment_open_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.provider_id or 'new'} {self.amount} {self.currency} ({self.status})"
