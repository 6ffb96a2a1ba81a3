from datetime import datetime
from typing import Any

from django import forms
from django.utils import timezone

from apps.rooms.models import Closure
from apps.rooms.selectors import DATE_OUT_OF_RANGE, day_within_reach, venue_day_bounds


class MarkPaidForm(forms.Form):
    payment_reference = forms.CharField(
        max_length=100, help_text="The payment's reference at the bank or payment provider."
    )


class ExtendHoldForm(forms.Form):
    minutes = forms.IntegerField(
        min_value=1, max_value=24 * 60, help_text="Move the hold's end later by this many minutes."
    )


class ClosureForm(forms.ModelForm):
    """
    A closure in the venue's time zone: from the first day to the last, whole days or from a time.

    ``from_time`` starts it at that time of the first day, ``until_time``
    ends it at that time of the last day; without them the days are closed
    from midnight to midnight.
    """

    first_day = forms.DateField(help_text="The first day closed, in the venue's time zone.")
    from_time = forms.TimeField(
        required=False, help_text="Closed from this time of the first day. Empty: midnight."
    )
    last_day = forms.DateField(
        required=False, help_text="The last day closed. Empty: the first day."
    )
    until_time = forms.TimeField(
        required=False,
        help_text="Closed until this time of the last day. Empty: the end of that day.",
    )

    class Meta:
        model = Closure
        fields = ["room", "reason"]
        help_texts = {"room": "Leave empty to close the whole venue."}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        today = timezone.localdate()
        for name in ("first_day", "last_day"):
            if (day := data.get(name)) and not day_within_reach(day, today):
                self.add_error(name, DATE_OUT_OF_RANGE)
                return data
        first = data.get("first_day")
        last = data.get("last_day") or first
        if first is None or last is None:
            return data
        zone = timezone.get_default_timezone()
        starts_at = venue_day_bounds(first)[0]
        if (from_time := data.get("from_time")) is not None:
            starts_at = datetime.combine(first, from_time, tzinfo=zone)
        ends_at = venue_day_bounds(last)[1]
        if (until_time := data.get("until_time")) is not None:
            ends_at = datetime.combine(last, until_time, tzinfo=zone)
        if ends_at <= starts_at:
            self.add_error(None, CLOSURE_ENDS_BEFORE_START)
        else:
            self.instance.starts_at, self.instance.ends_at = starts_at, ends_at
        return data


CLOSURE_ENDS_BEFORE_START = "The closure must end after it starts: check the days and times."
