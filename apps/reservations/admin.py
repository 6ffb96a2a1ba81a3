from django.contrib import admin

from .models import Reservation


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    """Read-only for now: every status change goes through the services."""

    list_display = ["token", "customer_name", "time_slot", "status", "expires_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["customer_name", "customer_email", "token"]
    date_hierarchy = "created_at"
    list_select_related = ["time_slot__room"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
