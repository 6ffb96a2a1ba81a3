from django.contrib import admin

from .models import SchedulerHeartbeat

# The index shows a banner when the expiry machinery needs attention.
admin.site.index_template = "admin/escape_rooms_index.html"


@admin.register(SchedulerHeartbeat)
class SchedulerHeartbeatAdmin(admin.ModelAdmin):
    list_display = [
        "hostname",
        "pid",
        "started_at",
        "beat_at",
        "stopped_at",
        "last_sweep_at",
        "last_sweep_cancelled",
    ]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
