from urllib.parse import urlencode

from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from config.admin_actions import action_input

from .forms import PriceTierFormSet, SlotGenerationForm, TimeSlotForm
from .models import PriceTier, Room, TimeSlot
from .services import timeslots_generate

# The room's page lists this many of its next slots; the rest are a link away.
UPCOMING_SHOWN = 5


class PriceTierInline(admin.TabularInline):
    model = PriceTier
    formset = PriceTierFormSet
    verbose_name_plural = "Price tiers (the rate from a party size up; per game or per player)"
    extra = 0
    fields = ["min_party_size", "price"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "duration_minutes",
        "min_players",
        "max_players",
        "price",
        "currency",
        "pricing",
        "reset_minutes",
        "is_active",
    ]
    list_filter = ["is_active"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name", "slug"]
    inlines = [PriceTierInline]
    # A summary, not an inline: a form field per slot would pass
    # DATA_UPLOAD_MAX_NUMBER_FIELDS (an HTTP 400 on save) with a few months of slots.
    readonly_fields = ["upcoming_slots"]
    actions = ["generate_slots"]

    @admin.display(description="Upcoming time slots")
    def upcoming_slots(self, room: Room) -> str:
        if room.pk is None:
            return "Generate them once the room is saved."
        now = timezone.now()
        upcoming = TimeSlot.objects.filter(room=room, starts_at__gte=now).order_by("starts_at")
        count = upcoming.count()
        if not count:
            return "None."
        listed = format_html_join(
            "",
            '<li><a href="{}">{}</a> ({})</li>',
            (
                (
                    reverse("admin:rooms_timeslot_change", args=[slot.pk]),
                    f"{timezone.localtime(slot.starts_at):%a %Y-%m-%d %H:%M}",
                    slot.get_status_display(),
                )
                for slot in upcoming[:UPCOMING_SHOWN]
            ),
        )
        query = urlencode({"room__id__exact": room.pk, "starts_at__gte": now.isoformat()})
        return format_html(
            '{} upcoming, the next:<ul>{}</ul><a href="{}?{}">All upcoming time slots</a>',
            count,
            listed,
            reverse("admin:rooms_timeslot_changelist"),
            query,
        )

    @admin.action(description="Generate time slots…", permissions=["add_slots"])
    def generate_slots(self, request, queryset):
        form = SlotGenerationForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for room in queryset:
                result = timeslots_generate(room=room, **form.cleaned_data)
                self.message_user(
                    request,
                    f"{room}: created {len(result.created)} time slots, "
                    f"{result.existing} already existed, {result.overlapping} overlapped others, "
                    f"{len(result.nonexistent)} skipped "
                    "(times the clocks skip).",
                )
            return None
        return action_input(
            self,
            request,
            queryset,
            form,
            action="generate_slots",
            title="Generate time slots",
            intro="Missing slots are created for each selected room; existing ones are kept.",
        )

    def has_add_slots_permission(self, request) -> bool:
        return request.user.has_perm("rooms.add_timeslot")


@admin.register(TimeSlot)
class TimeSlotAdmin(admin.ModelAdmin):
    """
    The slots; the reservations app registers this admin again with each slot's waiting list.

    This app may not import that one (reservations depend on rooms), so the
    waiting list is added from there: ``apps.reservations.admin``.
    """

    form = TimeSlotForm
    list_display = ["room", "starts_at", "ends_at", "status"]
    list_filter = ["room", "status", ("starts_at", admin.DateFieldListFilter)]
    date_hierarchy = "starts_at"
    readonly_fields = ["status"]
    list_select_related = ["room"]
