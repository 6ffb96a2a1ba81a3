from django.contrib.admin import ModelAdmin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.forms import Form
from django.http import HttpRequest
from django.template.response import TemplateResponse


class ChangedOnlyByActions:
    """
    Admin mixin: records are read-only and change only through admin actions.

    The actions call the services, with their rules and audit trail; the
    change permission is what they need (``permissions=["change"]``), while a
    record's own page stays a read-only view.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return obj is None and super().has_change_permission(request)  # type: ignore[misc]


def action_input(
    modeladmin: ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    form: Form,
    *,
    action: str,
    title: str,
    intro: str = "",
) -> TemplateResponse:
    """
    The intermediate page of an admin action that needs input.

    Bind the form to ``request.POST`` when it holds ``apply``; while the form is
    not valid, return this page: it posts the same action and selection again.
    """
    return TemplateResponse(
        request,
        "admin/action_form.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": title,
            "intro": intro,
            "form": form,
            "queryset": queryset,
            "action": action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "opts": modeladmin.model._meta,
        },
    )
