"""The venue's time zone by name on the pages, even in the hour that the clocks repeat."""

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def tzname(value: object) -> str:
    """
    The name of the venue's zone at ``value``, an aware datetime: "CET", "CEST".

    Django's ``date:"T"`` prints nothing for a time in the hour that the
    clocks repeat when they go back: it takes any such time for ambiguous,
    although an aware one is not. That hour is where a customer most needs
    the name; the local time's own ``tzname()`` tells its two halves apart.
    """
    if not isinstance(value, datetime) or timezone.is_naive(value):
        return ""
    return timezone.localtime(value).tzname() or ""
