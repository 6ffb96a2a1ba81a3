from datetime import time, timedelta
from typing import Any

from django import forms

from .models import Room

MAX_DAYS = 366
TIER_OUTSIDE_PLAYERS = "A tier starts at a party size the room takes: {min} to {max} players."
TIMES_HELP = "Start times in the venue's time zone, comma-separated: 10:00,12:00,14:30"


def parse_times(value: str) -> list[time]:
    """Parse ``"10:00,12:30"`` into sorted, distinct times; ``ValidationError`` on anything else."""
    times = set()
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            times.add(time.fromisoformat(part))
        except ValueError:
            raise forms.ValidationError(f"{part!r} is not a time like 10:00.") from None
    if not times:
        raise forms.ValidationError("Give at least one start time.")
    return sorted(times)


class SlotGenerationForm(forms.Form):
    """What ``generate_slots`` and the rooms' admin action both validate."""

    start = forms.DateField(label="From", help_text="First day (YYYY-MM-DD).")
    end = forms.DateField(label="To", help_text="Last day, inclusive (YYYY-MM-DD).")
    times = forms.CharField(help_text=TIMES_HELP)

    def clean_times(self) -> list[time]:
        return parse_times(self.cleaned_data["times"])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end < start:
                self.add_error("end", "The last day is before the first.")
            elif end - start > timedelta(days=MAX_DAYS):
                self.add_error("end", f"Generate at most {MAX_DAYS} days at a time.")
        return data


class PriceTierFormSet(forms.BaseInlineFormSet):
    """A room's price tiers: each starts at a party size the room takes, as just edited."""

    instance: Room

    def clean(self) -> None:
        super().clean()
        room = self.instance  # with the room form's values, saved or not
        for form in self.forms:
            data = getattr(form, "cleaned_data", None) or {}
            size = data.get("min_party_size")
            if size is None or data.get("DELETE"):
                continue
            if not room.min_players <= size <= room.max_players:
                form.add_error(
                    "min_party_size",
                    TIER_OUTSIDE_PLAYERS.format(min=room.min_players, max=room.max_players),
                )
