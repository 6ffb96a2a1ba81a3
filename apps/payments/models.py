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

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["outcome", "refunded_at"], name="payment_refunds_idx")]

    def __str__(self) -> str:
        return f"{self.reference} {self.amount} {self.currency} ({self.outcome})"
