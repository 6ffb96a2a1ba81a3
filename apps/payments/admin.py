from django.contrib import admin, messages

from config.admin_actions import ChangedOnlyByActions

from .models import Payment
from .services import payment_mark_refunded


class RefundFilter(admin.SimpleListFilter):
    title = "refund"
    parameter_name = "refund"

    def lookups(self, request, model_admin):
        return [("due", "Refund due"), ("done", "Refunded")]

    def queryset(self, request, queryset):
        refunds = queryset.filter(outcome=Payment.Outcome.REFUND_DUE)
        if self.value() == "due":
            return refunds.filter(refunded_at__isnull=True)
        if self.value() == "done":
            return refunds.filter(refunded_at__isnull=False)
        return queryset


@admin.register(Payment)
class PaymentAdmin(ChangedOnlyByActions, admin.ModelAdmin):
    """Every confirmation received; staff refund those whose outcome is refund_due."""

    list_display = [
        "reference",
        "received_at",
        "amount",
        "currency",
        "outcome",
        "reason",
        "reservation",
        "source",
        "refunded_at",
    ]
    list_filter = [RefundFilter, "outcome", "reason", "source"]
    search_fields = ["reference", "reservation_token", "event_id"]
    date_hierarchy = "received_at"
    readonly_fields = [field.name for field in Payment._meta.fields]
    actions = ["mark_refunded"]

    @admin.action(description="Mark refunded", permissions=["change"])
    def mark_refunded(self, request, queryset):
        done = sum(payment_mark_refunded(payment=p, actor=request.user) for p in queryset)
        skipped = queryset.count() - done
        if done:
            self.message_user(request, f"{done} payment(s) marked refunded.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"{skipped} payment(s) skipped: no refund was due, or it was already made.",
                messages.WARNING,
            )
