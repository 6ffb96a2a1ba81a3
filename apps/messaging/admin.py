from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from config.admin_actions import ChangedOnlyByActions

from . import services
from .models import Message


@admin.register(Message)
class MessageAdmin(ChangedOnlyByActions, admin.ModelAdmin):
    """
    The outbox: what was sent to whom, what waits, what fails and why.

    Read-only but for *retry*: a saved page would write every column back
    over what a delivery running meanwhile had marked.
    """

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

    @admin.display(description="To")
    def recipient(self, obj: Message) -> str:
        if obj.to_email:
            return obj.to_email
        return obj.reservation.customer_email if obj.reservation else ""

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: Message) -> str:
        # Failing as outbox_backlog counts it: a retried message is pending
        # until its next attempt fails.
        if obj.status == Message.Status.PENDING and obj.attempts and obj.last_error:
            return format_html(
                'failing: <span title="{}">{}</span>', obj.last_error, obj.last_error[:60]
            )
        return obj.get_status_display()

    @admin.action(
        description="Send the selected messages again as soon as possible",
        permissions=["change"],
    )
    def retry(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        # Counted from the selection as read: with the list filtered by
        # status, the queryset read again would miss the retried ones.
        selected = list(queryset)
        retried = sum(services.message_retry(message=m) for m in selected)
        skipped = len(selected) - retried
        self.message_user(request, f"{retried} messages will be sent again.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request, f"{skipped} were sent or not needed: nothing to retry.", messages.WARNING
            )
