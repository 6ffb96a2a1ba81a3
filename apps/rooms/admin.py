from django.contrib import admin
from django.utils import timezone

from config.admin_actions import action_input

from .forms import SlotGenerationForm, TimeSlotForm
from .models import Room, TimeSlot
from .services import timeslots_generate


class UpcomingTimeSlotInline(admin.TabularInline):
    model = TimeSlot
    verbose_name_plural = "Upcoming time slots"
    extra = 0
    fields = ["starts_at", "ends_at", "status"]
    readonly_fields = ["status"]
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).filter(starts_at__gte=timezone.now())


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
        "reset_minutes",
        "is_active",
    ]
    list_filter = ["is_active"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name", "slug"]
    inlines = [UpcomingTimeSlotInline]
    actions = ["generate_slots"]

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
