from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.timesince import timesince, timeuntil

from apps.payments.services import (
    ProviderRefused,
    booking_cancel_and_refund,
    payment_confirm_price,
)
from config.admin_actions import ChangedOnlyByActions, action_input

from . import services
from .errors import NotRefundable, ReservationError
from .forms import ExtendHoldForm, MarkPaidForm
from .models import Reservation, ReservationEvent

CANCEL_AND_REFUND_INTRO = (
    "Each paid booking below is cancelled, its slot released for sale, and its payment "
    "refunded through the payment provider. A payment the provider did not take (cash at "
    "the desk, a bank transfer, any payment under the simulated provider) is only recorded "
    "as refunded: hand the money back yourself. Reservations that are not paid are skipped."
)


class ReservationEventInline(admin.TabularInline):
    model = ReservationEvent
    verbose_name_plural = "History"
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "at",
        "from_status",
        "to_status",
        "cause",
        "staff_user",
        "lateness_seconds",
        "detail",
    )

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Reservation)
class ReservationAdmin(ChangedOnlyByActions, admin.ModelAdmin):
    """
    Staff see everything and change reservations only through the actions,
    which call the services: the same rules as the customer's API.
    """

    list_display = [
        "short_token",
        "customer_name",
        "customer_email",
        "room",
        "slot_time",
        "current_status",
        "expires_at",
        "time_left",
    ]
    list_filter = [
        "status",
        "cancellation_reason",
        ("time_slot__starts_at", admin.DateFieldListFilter),
    ]
    search_fields = ["customer_name", "customer_email", "^token"]
    date_hierarchy = "time_slot__starts_at"
    list_select_related = ["time_slot__room"]
    readonly_fields = [
        "token",
        "time_slot",
        "customer_name",
        "customer_email",
        "customer_phone",
        "party_size",
        "status",
        "expires_at",
        "created_at",
        "paid_at",
        "cancelled_at",
        "cancellation_reason",
        "payment_reference",
    ]
    inlines = [ReservationEventInline]
    actions = ["mark_paid", "cancel", "cancel_and_refund", "extend_hold"]

    @admin.display(description="token")
    def short_token(self, obj: Reservation) -> str:
        return str(obj.token)[:8]

    @admin.display(description="room", ordering="time_slot__room__name")
    def room(self, obj: Reservation) -> str:
        return obj.time_slot.room.name

    @admin.display(description="slot", ordering="time_slot__starts_at")
    def slot_time(self, obj: Reservation) -> str:
        return f"{timezone.localtime(obj.time_slot.starts_at):%Y-%m-%d %H:%M %Z}"

    @admin.display(description="status", ordering="status")
    def current_status(self, obj: Reservation) -> str:
        now = timezone.now()
        if obj.is_expired_at(now):
            return "expired (release pending)"
        return obj.get_status_display()

    @admin.display(description="time left")
    def time_left(self, obj: Reservation) -> str:
        now = timezone.now()
        if obj.status != Reservation.Status.PENDING:
            return "-"
        if obj.expires_at > now:
            return f"{timeuntil(obj.expires_at, now)} left"
        return f"expired {timesince(obj.expires_at, now)} ago"

    @admin.action(description="Mark paid…", permissions=["change"])
    def mark_paid(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Mark one reservation paid at a time.", messages.WARNING)
            return None
        form = MarkPaidForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return action_input(
                self, request, queryset, form, action="mark_paid", title="Mark paid"
            )
        reference = form.cleaned_data["payment_reference"]

        self._apply(
            request,
            queryset,
            "marked paid",
            lambda r: payment_confirm_price(
                reservation=r, reference=reference, source="staff", actor=request.user
            ),
        )
        return None

    @admin.action(description="Cancel (staff)", permissions=["change"])
    def cancel(self, request, queryset):
        self._apply(
            request,
            queryset,
            "cancelled",
            lambda r: services.reservation_cancel(
                reservation=r, reason="staff", actor=request.user
            ),
        )

    @admin.action(description="Cancel and refund (paid bookings)…", permissions=["change"])
    def cancel_and_refund(self, request, queryset):
        form = forms.Form(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return action_input(
                self,
                request,
                queryset,
                form,
                action="cancel_and_refund",
                title="Cancel and refund",
                intro=CANCEL_AND_REFUND_INTRO,
            )
        done, skipped = 0, 0
        for reservation in queryset.select_related("time_slot__room"):
            name = f"{reservation.customer_name} ({reservation.token})"
            try:
                payment = booking_cancel_and_refund(reservation=reservation, actor=request.user)
            except NotRefundable:
                skipped += 1
                continue
            except ProviderRefused as refused:
                self.message_user(
                    request,
                    f"{name}: cancelled, but the provider refused the refund ({refused}); "
                    "it stays requested. Look the payment up at the provider.",
                    messages.ERROR,
                )
                continue
            if payment.refund_reference:
                done += 1
            else:
                self.message_user(
                    request,
                    f"{name}: cancelled; the provider could not be reached, so the refund "
                    "stays requested and is asked for again on its own.",
                    messages.WARNING,
                )
        if done:
            self.message_user(
                request, f"{done} booking(s) cancelled and refunded.", messages.SUCCESS
            )
        if skipped:
            self.message_user(
                request,
                f"{skipped} reservation(s) skipped: {NotRefundable.default_message}",
                messages.WARNING,
            )
        return None

    @admin.action(description="Extend hold…", permissions=["change"])
    def extend_hold(self, request, queryset):
        form = ExtendHoldForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return action_input(
                self, request, queryset, form, action="extend_hold", title="Extend hold"
            )
        by = timedelta(minutes=form.cleaned_data["minutes"])
        self._apply(
            request,
            queryset,
            f"extended by {form.cleaned_data['minutes']} min",
            lambda r: services.reservation_extend_hold(reservation=r, by=by, actor=request.user),
        )
        return None

    def _apply(self, request, queryset, done: str, change) -> None:
        """Run ``change`` on each reservation; report each refusal by its message."""
        changed = 0
        for reservation in queryset.select_related("time_slot__room"):
            try:
                change(reservation)
            except ReservationError as refused:
                self.message_user(
                    request,
                    f"{reservation.customer_name} ({reservation.token}): {refused.message}",
                    messages.ERROR,
                )
            else:
                changed += 1
        if changed:
            self.message_user(request, f"{changed} reservation(s) {done}.", messages.SUCCESS)
