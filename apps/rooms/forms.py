from datetime import time, timedelta
from typing import Any

from django import forms
from django.db.models import Q
from django.utils import timezone

from .models import Closure, Room, TimeSlot
from .selectors import timeslot_list_conflicting
from .services import room_lock

MAX_DAYS = 366
TIER_OUTSIDE_PLAYERS = "A tier starts at a party size the room takes: {min} to {max} players."
TIMES_HELP = "Start times in the venue's time zone, comma-separated: 10:00,12:00,14:30"
SLOT_OVERLAPS = (
    "{room} has a game from {start:%Y-%m-%d %H:%M} to {end:%H:%M} that this slot overlaps"
)
SLOT_OVERLAPS_RESET = " or leaves less than the {reset} minutes the room needs to be reset"
SLOT_HELD = (
    "This slot is held or booked, so its room and start cannot change under the customer: "
    "move the booking to another slot (from its page), or cancel it, first."
)
SLOT_HELD_CLOSED = (
    "This slot is held or booked, and a closure would then overlap it: end it before the closure."
)


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


class TimeSlotForm(forms.ModelForm):
    """
    A slot as staff add or change it: one game at a time, with the room's reset time between.

    A slot held or booked keeps its room and start (a customer is never
    moved without being asked), and its end may not reach into a closure.
    Validate it in the transaction that saves it (the admin's): validation
    locks the room, and the slot, until then, so that two slots saved at
    once cannot both pass the check, nor a reservation slip in between.
    """

    class Meta:
        model = TimeSlot
        fields = ["room", "starts_at", "ends_at"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        room, starts_at, ends_at = data.get("room"), data.get("starts_at"), data.get("ends_at")
        if room is None or starts_at is None or ends_at is None or ends_at <= starts_at:
            return data  # a missing field, or the model's own check, says what is wrong
        room_lock(room_id=room.pk)
        if self.instance.pk is not None and {"room", "starts_at", "ends_at"} & set(
            self.changed_data
        ):
            now = timezone.now()
            held = TimeSlot.objects.select_for_update().filter(pk=self.instance.pk)
            if held.filter(
                Q(reservations__status="paid")
                | Q(reservations__status="pending", reservations__expires_at__gt=now)
            ).exists():
                if {"room", "starts_at"} & set(self.changed_data):
                    raise forms.ValidationError(SLOT_HELD, code="held")
                closures = Closure.objects.over(
                    room_id=room.pk, starts_at=starts_at, ends_at=ends_at
                )
                if closures.exists():
                    raise forms.ValidationError(SLOT_HELD_CLOSED, code="held_closed")
        other = timeslot_list_conflicting(
            room=room, starts_at=starts_at, ends_at=ends_at, exclude_pk=self.instance.pk
        ).first()
        if other is not None:
            message = SLOT_OVERLAPS.format(
                room=room,
                start=timezone.localtime(other.starts_at),
                end=timezone.localtime(other.ends_at),
            )
            if room.reset_minutes:
                message += SLOT_OVERLAPS_RESET.format(reset=room.reset_minutes)
            raise forms.ValidationError(message + ".", code="overlap")
        return data
