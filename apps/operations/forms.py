from datetime import timedelta
from typing import Any

from django import forms
from django.utils import timezone

from apps.rooms.selectors import DATE_OUT_OF_RANGE, day_within_reach

MAX_REPORT_DAYS = 3 * 366
DAY_PICKER = forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


class ReportRangeForm(forms.Form):
    """The weeks the occupancy report covers: those of ``start`` and ``end`` and between."""

    start = forms.DateField(label="From", help_text="A day in the first week.", widget=DAY_PICKER)
    end = forms.DateField(label="To", help_text="A day in the last week.", widget=DAY_PICKER)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        today = timezone.localdate()
        for name, day in (("start", start), ("end", end)):
            if day and not day_within_reach(day, today):
                self.add_error(name, DATE_OUT_OF_RANGE)
                data[name] = None
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end < start:
                self.add_error("end", "The last day is before the first.")
            elif end - start > timedelta(days=MAX_REPORT_DAYS):
                self.add_error("end", f"Report at most {MAX_REPORT_DAYS} days at a time.")
        return data
