from typing import Any

from django import forms

from apps.rooms.models import Closure
from apps.rooms.selectors import venue_day_bounds


class MarkPaidForm(forms.Form):
    payment_reference = forms.CharField(
        max_length=100, help_text="The payment's reference at the bank or payment provider."
    )


class ExtendHoldForm(forms.Form):
    minutes = forms.IntegerField(
        min_value=1, max_value=24 * 60, help_text="Move the hold's end later by this many minutes."
    )


class ClosureForm(forms.ModelForm):
    """A closure of whole days in the venue's time zone: the first day, and the last (or none)."""

    first_day = forms.DateField(help_text="The first day closed, in the venue's time zone.")
    last_day = forms.DateField(
        required=False, help_text="The last day closed. Leave empty to close the first day only."
    )

    class Meta:
        model = Closure
        fields = ["room", "reason"]
        help_texts = {"room": "Leave empty to close the whole venue."}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        first = data.get("first_day")
        last = data.get("last_day") or first
        if first is not None and last is not None:
            if last < first:
                self.add_error("last_day", LAST_DAY_BEFORE_FIRST)
            else:
                self.instance.starts_at = venue_day_bounds(first)[0]
                self.instance.ends_at = venue_day_bounds(last)[1]
        return data


LAST_DAY_BEFORE_FIRST = "The last day cannot come before the first."
