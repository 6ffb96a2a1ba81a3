from django.contrib import admin

from .models import Room, TimeSlot


class TimeSlotInline(admin.TabularInline):
    model = TimeSlot
    extra = 0
    fields = ["starts_at", "ends_at", "status"]
    readonly_fields = ["status"]


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
        "is_active",
    ]
    list_filter = ["is_active"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name", "slug"]


@admin.register(TimeSlot)
class TimeSlotAdmin(admin.ModelAdmin):
    list_display = ["room", "starts_at", "ends_at", "status"]
    list_filter = ["room", "status"]
    date_hierarchy = "starts_at"
    readonly_fields = ["status"]
