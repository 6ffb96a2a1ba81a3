from django.contrib.admin import ModelAdmin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.forms import Form
from django.http import HttpRequest
from django.template.response import TemplateResponse


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
