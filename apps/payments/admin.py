from collections import Counter

from django.contrib import admin, messages

from config.admin_actions import ChangedOnlyByActions

from .models import Payment, ProviderPayment
from .providers import ProviderRefused, ProviderUnavailable
from .services import payment_mark_refunded, payment_settle, refunds_due_to_staff


class RefundFilter(admin.SimpleListFilter):
    title = "refund"
    parameter_name = "refund"

    def lookups(self, request, model_admin):
        return [
            ("due", "Refund due"),
            ("requested", "Requested, not made yet"),
            ("done", "Refunded"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "due":
            return queryset.filter(pk__in=refunds_due_to_staff().values("pk"))
        if self.value() == "requested":
            # Those a provider is to make, refused ones included.
            return queryset.filter(
                refund_requested_at__isnull=False,
                refund_reference="",
                provider_payment__isnull=False,
            )
        if self.value() == "done":
            return queryset.filter(refunded_at__isnull=False)
        return queryset


class FlaggedFilter(admin.SimpleListFilter):
    title = "flagged"
    parameter_name = "flagged"

    def lookups(self, request, model_admin):
        flags = [(value, label) for value, label in Payment.Flag.choices if value]
        return [("any", "Any flag"), *flags]

    def queryset(self, request, queryset):
        if self.value() == "any":
            return queryset.exclude(flag="")
        if self.value() in Payment.Flag.values:
            return queryset.filter(flag=self.value())
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
        "refund_reference",
        "refund_requested_at",
        "flag",
    ]
    list_filter = [RefundFilter, FlaggedFilter, "outcome", "reason", "source"]
    search_fields = ["reference", "reservation_token", "event_id", "refund_reference"]
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


@admin.register(ProviderPayment)
class ProviderPaymentAdmin(ChangedOnlyByActions, admin.ModelAdmin):
    """
    Payments started at the provider (Stripe's PaymentIntents) and what became of each.

    The client secret is not shown: with the publishable key it lets anyone
    confirm the payment.
    """

    list_display = [
        "provider_id",
        "reservation",
        "amount",
        "currency",
        "status",
        "outcome",
        "reason",
        "created_at",
        "checked_at",
        "settled_at",
    ]
    list_filter = ["outcome", "reason", "status"]
    list_select_related = ["reservation"]
    search_fields = ["provider_id", "^reservation__token"]
    date_hierarchy = "created_at"
    exclude = ["client_secret"]
    readonly_fields = [f.name for f in ProviderPayment._meta.fields if f.name != "client_secret"]
    actions = ["ask_provider"]

    @admin.action(description="Ask the provider now", permissions=["change"])
    def ask_provider(self, request, queryset):
        outcomes: Counter[str] = Counter()
        for row in queryset:
            name = row.provider_id or f"reservation {row.reservation_id}"
            try:
                row = payment_settle(row)
            except ProviderUnavailable as exc:
                self.message_user(
                    request,
                    f"{name}: the provider could not be reached, nothing changed ({exc}).",
                    messages.ERROR,
                )
            except ProviderRefused as exc:
                self.message_user(request, f"{name}: the provider refused ({exc}).", messages.ERROR)
            else:
                outcomes[row.outcome or "still open"] += 1
        if outcomes:
            counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
            self.message_user(
                request,
                f"{outcomes.total()} payment(s) read back from the provider: {counts}.",
                messages.SUCCESS,
            )
