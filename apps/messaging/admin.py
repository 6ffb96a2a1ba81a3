from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from . import services
from .models import Message


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """The outbox: what was sent to whom, what waits, what fails and why."""

    list_display = [
        "created_at",
        "kind",
        "recipient",
        "status_shown",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "subject",
    ]
    list_filter = ["status", "kind"]
    search_fields = ["to_email", "reservation__customer_email", "subject", "message_id"]
    list_select_related = ["reservation"]
    date_hierarchy = "created_at"
    actions = ["retry"]
    readonly_fields = [f.name for f in Message._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    @admin.display(description="To")
    def recipient(self, obj: Message) -> str:
        if obj.to_email:
            return obj.to_email
        return obj.reservation.customer_email if obj.reservation else ""

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: Message) -> str:
        if obj.status == Message.Status.PENDING and obj.last_error:
            return format_html(
                'failing: <span title="{}">{}</span>', obj.last_error, obj.last_error[:60]
            )
        return obj.get_status_display()

    @admin.action(description="Send the selected messages again as soon as possible")
    def retry(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        retried = sum(services.message_retry(message=m) for m in queryset)
        skipped = queryset.count() - retried
        self.message_user(request, f"{retried} messages will be sent again.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request, f"{skipped} were sent or not needed: nothing to retry.", messages.WARNING
            )
