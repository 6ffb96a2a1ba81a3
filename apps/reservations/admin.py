from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince, timeuntil

from apps.payments.services import (
    ProviderRefused,
    booking_cancel_and_refund,
    payment_confirm_price,
)
from apps.rooms import admin as rooms_admin
from apps.rooms.models import Closure, TimeSlot
from config.admin_actions import ChangedOnlyByActions, action_input

from . import offers, services, waitlist
from .closures import ClosureResult, closure_bookings, closure_create
from .errors import NotRefundable, ReservationError
from .forms import ClosureForm, ExtendHoldForm, MarkPaidForm
from .models import Reservation, ReservationEvent, WaitingEntry

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

    def has_view_permission(self, request, obj=None):
        # A reservation's history is part of it: whoever may see it sees that.
        return request.user.has_perm("reservations.view_reservation")

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
        "price_shown",
        "expires_at",
        "time_left",
        "is_offer",
    ]
    list_filter = [
        "status",
        "cancellation_reason",
        "is_offer",
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
        "price",
        "currency",
        "status",
        "expires_at",
        "created_at",
        "paid_at",
        "cancelled_at",
        "cancellation_reason",
        "payment_reference",
        "is_offer",
        "waiting_entry_link",
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

    @admin.display(description="price", ordering="price")
    def price_shown(self, obj: Reservation) -> str:
        """Frozen when the slot was held: what is charged, whatever the room's price now."""
        return f"{obj.price} {obj.currency}"

    @admin.display(description="status", ordering="status")
    def current_status(self, obj: Reservation) -> str:
        now = timezone.now()
        if obj.is_expired_at(now):
            return "expired (release pending)"
        return obj.get_status_display()

    @admin.display(description="offered to waiting party")
    def waiting_entry_link(self, obj: Reservation) -> str:
        entry = WaitingEntry.objects.filter(offer=obj).first()
        if entry is None:
            return "-"
        url = reverse("admin:reservations_waitingentry_change", args=[entry.pk])
        return format_html(
            '<a href="{}">{} ({})</a>', url, entry.customer_name, entry.get_status_display()
        )

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


# ---------------------------------------------------------------------------
# The waiting lists
# ---------------------------------------------------------------------------


def _slot_time(slot: TimeSlot) -> str:
    return f"{timezone.localtime(slot.starts_at):%Y-%m-%d %H:%M %Z}"


def _place_or_status(entry: WaitingEntry) -> str:
    place = offers.waiting_place(entry)
    if place is not None:
        return f"waiting, number {place}"
    if entry.current_status(timezone.now()) != entry.status:
        return f"{WaitingEntry.Status.LAPSED.label} (release pending)"
    return entry.get_status_display()


def _offer_link(entry: WaitingEntry) -> str:
    """The offer's page, with where it stands: time left, paid, or how it ended."""
    offer = entry.offer
    if offer is None:
        return "-"
    now = timezone.now()
    if offer.is_expired_at(now):
        state = "lapsed"
    elif offer.status == Reservation.Status.PENDING:
        state = f"pending, {timeuntil(offer.expires_at, now)} left"
    elif offer.status == Reservation.Status.CANCELLED:
        state = offer.get_cancellation_reason_display().lower()
    else:
        state = offer.get_status_display().lower()
    url = reverse("admin:reservations_reservation_change", args=[offer.pk])
    return format_html('<a href="{}">{}: {}</a>', url, str(offer.token)[:8], state)


WAITING_ENTRY_FIELDS = (
    "token",
    "time_slot",
    "customer_name",
    "customer_email",
    "customer_phone",
    "party_size",
    "place_or_status",
    "created_at",
    "offer_link",
    "offered_at",
    "ended_at",
    "client_address",
)


@admin.register(WaitingEntry)
class WaitingEntryAdmin(ChangedOnlyByActions, admin.ModelAdmin):
    """
    The slots' waiting lists: who waits, in which order, and the offers made.

    Read-only: parties join and leave through the booking pages and the API.
    Staff take a party off a list with the action, which calls
    ``waiting_leave``: an offer the party holds is cancelled and passes to the
    next party, as when the party leaves itself.
    """

    list_display = [
        "slot_time",
        "room",
        "customer_name",
        "customer_email",
        "party_size",
        "place_or_status",
        "offered_at",
        "offer_link",
        "created_at",
    ]
    list_filter = ["status", "time_slot__room", ("time_slot__starts_at", admin.DateFieldListFilter)]
    search_fields = ["customer_name", "customer_email", "^token"]
    date_hierarchy = "time_slot__starts_at"
    list_select_related = ["time_slot__room", "offer"]
    fields = readonly_fields = WAITING_ENTRY_FIELDS
    actions = ["remove_from_list"]

    @admin.display(description="slot", ordering="time_slot__starts_at")
    def slot_time(self, obj: WaitingEntry) -> str:
        return _slot_time(obj.time_slot)

    @admin.display(description="room", ordering="time_slot__room__name")
    def room(self, obj: WaitingEntry) -> str:
        return obj.time_slot.room.name

    @admin.display(description="place / status", ordering="status")
    def place_or_status(self, obj: WaitingEntry) -> str:
        return _place_or_status(obj)

    @admin.display(description="offer")
    def offer_link(self, obj: WaitingEntry) -> str:
        return _offer_link(obj)

    @admin.action(description="Remove from the list", permissions=["change"])
    def remove_from_list(self, request, queryset):
        removed, passed_on, ended = 0, 0, 0
        for entry in queryset.select_related("time_slot__room", "offer"):
            if not entry.is_live:
                ended += 1
                continue
            offered = entry.status == WaitingEntry.Status.OFFERED
            try:
                waitlist.waiting_leave(entry=entry, actor=request.user)
            except ReservationError as refused:
                self.message_user(
                    request,
                    f"{entry.customer_name} ({entry.customer_email}): {refused.message}",
                    messages.ERROR,
                )
                continue
            removed += 1
            passed_on += offered
        if removed:
            done = f"{removed} party(ies) removed from the waiting list."
            if passed_on:
                done += f" {passed_on} offer(s) cancelled and passed to the next party waiting."
            self.message_user(request, done, messages.SUCCESS)
        if ended:
            self.message_user(
                request,
                f"{ended} skipped: their place on the list had already ended.",
                messages.WARNING,
            )


class WaitingEntryInline(admin.TabularInline):
    model = WaitingEntry
    verbose_name_plural = "Waiting list"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = (
        "customer_name",
        "customer_email",
        "party_size",
        "place_or_status",
        "created_at",
        "offer_link",
        "offered_at",
        "ended_at",
    )

    @admin.display(description="place / status")
    def place_or_status(self, obj: WaitingEntry) -> str:
        return _place_or_status(obj)

    @admin.display(description="offer")
    def offer_link(self, obj: WaitingEntry) -> str:
        return _offer_link(obj)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("offer").order_by("pk")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# The slot's page shows its waiting list. The rooms app may not import this
# one (reservations depend on rooms, never the reverse: the import contracts),
# so the slot's admin is extended here, in the app above it.
admin.site.unregister(TimeSlot)


@admin.register(TimeSlot)
class TimeSlotWithWaitingListAdmin(rooms_admin.TimeSlotAdmin):
    """The rooms app's slot admin, with the slot's waiting list: a column and an inline."""

    list_display = [*rooms_admin.TimeSlotAdmin.list_display, "waiting_list"]
    inlines = [*rooms_admin.TimeSlotAdmin.inlines, WaitingEntryInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                waiting=Count(
                    "waiting_entries", filter=Q(waiting_entries__status=WaitingEntry.Status.WAITING)
                ),
                offered=Count(
                    "waiting_entries", filter=Q(waiting_entries__status=WaitingEntry.Status.OFFERED)
                ),
            )
        )

    @admin.display(description="waiting list")
    def waiting_list(self, obj: TimeSlot) -> str:
        waiting, offered = obj.waiting, obj.offered  # type: ignore[attr-defined]  # annotated
        if not waiting and not offered:
            return "-"
        url = reverse("admin:reservations_waitingentry_changelist")
        label = f"{waiting} waiting" + (f", {offered} offered" if offered else "")
        return format_html('<a href="{}?time_slot__id__exact={}">{}</a>', url, obj.pk, label)


@admin.register(Closure)
class ClosureAdmin(admin.ModelAdmin):
    """
    Closing a room or the venue goes through ``closure_create``: its holds end, its lists close.

    A closure is never edited, only deleted, which reopens its slots (what it
    ended stays ended). Its page lists the paid bookings on its slots, for
    staff to move or refund.
    """

    list_display = ["where", "starts_at", "ends_at", "reason", "created_by"]
    list_filter = ["room"]
    date_hierarchy = "starts_at"
    list_select_related = ["room", "created_by"]
    form = ClosureForm
    add_fields = ["room", "first_day", "from_time", "last_day", "until_time", "reason"]
    shown_fields = [
        "where",
        "starts_at",
        "ends_at",
        "reason",
        "created_at",
        "created_by",
        "paid_bookings",
    ]

    @admin.display(description="closed", ordering="room__name")
    def where(self, obj: Closure) -> str:
        return obj.room.name if obj.room is not None else "The whole venue"

    @admin.display(description="paid bookings to move or refund")
    def paid_bookings(self, obj: Closure) -> str:
        bookings = closure_bookings(obj)
        if not bookings:
            return "None"
        items = format_html_join(
            "",
            '<li><a href="{}">{}</a>: {}, party of {}, {} {}</li>',
            (
                (
                    reverse("admin:reservations_reservation_change", args=[booking.pk]),
                    _slot_time(booking.time_slot),
                    booking.customer_name,
                    booking.party_size,
                    booking.customer_email,
                    booking.customer_phone,
                )
                for booking in bookings
            ),
        )
        return format_html(
            '<ul>{}</ul><p><a href="{}">All {} in the reservations list</a> '
            "(select them there to cancel and refund).</p>",
            items,
            _bookings_url(bookings),
            len(bookings),
        )

    def get_fields(self, request, obj=None):
        return self.add_fields if obj is None else self.shown_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.shown_fields

    def has_change_permission(self, request, obj=None) -> bool:
        # Existing closures are shown, not edited: delete one to reopen its slots.
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request, obj: Closure, form, change: bool) -> None:
        result = closure_create(
            room=obj.room,
            starts_at=obj.starts_at,
            ends_at=obj.ends_at,
            reason=obj.reason,
            actor=request.user,
        )
        obj.pk, obj.created_at, obj.created_by = (
            result.closure.pk,
            result.closure.created_at,
            result.closure.created_by,
        )
        setattr(request, CLOSURE_RESULT, result)  # for response_add's message

    def response_add(self, request, obj, post_url_continue=None):
        result: ClosureResult | None = getattr(request, CLOSURE_RESULT, None)
        if result is not None:
            self.message_user(request, closure_summary(result), messages.SUCCESS)
            if result.bookings:
                self.message_user(
                    request,
                    format_html(
                        '{} paid booking(s) on the closed slots: <a href="{}">move or refund '
                        "them</a>.",
                        len(result.bookings),
                        _bookings_url(result.bookings),
                    ),
                    messages.WARNING,
                )
        return super().response_add(request, obj, post_url_continue)


CLOSURE_RESULT = "closure_result"


def closure_summary(result: ClosureResult) -> str:
    """What a closure did, in a line for staff."""
    return (
        f"{result.closure}: {len(result.slot_ids)} slot(s) closed, "
        f"{len(result.holds_ended)} hold(s) ended, "
        f"{len(result.waiting_told)} waiting part{'y' if len(result.waiting_told) == 1 else 'ies'}"
        " told."
    )


def _bookings_url(bookings: list[Reservation]) -> str:
    ids = ",".join(str(booking.pk) for booking in bookings)
    return f"{reverse('admin:reservations_reservation_changelist')}?id__in={ids}"
