from typing import Any

from django import forms

from apps.reservations.services import party_size_problem
from apps.reservations.text import (
    NEEDS_A_LETTER,
    NO_CONTROL_CHARACTERS,
    has_a_letter_or_digit,
    has_control_characters,
)
from apps.rooms.models import Room


def _printable(value: str) -> None:
    if has_control_characters(value):
        raise forms.ValidationError(NO_CONTROL_CHARACTERS)


def _legible(value: str) -> None:
    if not has_a_letter_or_digit(value):
        raise forms.ValidationError(NEEDS_A_LETTER)


class ReserveForm(forms.Form):
    """The customer's details; the room's player limits are checked by the service."""

    customer_name = forms.CharField(
        label="Your name", max_length=100, validators=[_printable, _legible]
    )
    customer_email = forms.EmailField(label="Email", max_length=254)
    customer_phone = forms.CharField(
        label="Phone (optional)",
        max_length=32,
        required=False,
        validators=[_printable],
        widget=forms.TextInput(attrs={"type": "tel"}),
    )
    party_size = forms.IntegerField(label="Players", min_value=1, max_value=100)
    # A key per rendered form: submitting it twice finds the first reservation.
    # Checked by the view against the keys this browser was given; a missing
    # or foreign key just makes the submission a new one.
    request_key = forms.CharField(widget=forms.HiddenInput, required=False, max_length=64)

    def __init__(self, *args: Any, room: Room | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.room = room
        if room is not None:
            # A hint for the browser; the service enforces the room's limits.
            size = self.fields["party_size"]
            size.widget.attrs.update({"min": room.min_players, "max": room.max_players})
            size.help_text = f"{room.min_players} to {room.max_players} players"
        self.fields["customer_email"].widget.attrs["autocomplete"] = "email"
        self.fields["customer_name"].widget.attrs["autocomplete"] = "name"
        self.fields["customer_phone"].widget.attrs["autocomplete"] = "tel"

    def clean_party_size(self) -> int:
        # The service's own rule, asked early so that every error shows at once.
        size: int = self.cleaned_data["party_size"]
        if self.room is not None and (problem := party_size_problem(self.room, size)):
            raise forms.ValidationError(problem)
        return size


class FindBookingForm(forms.Form):
    """The address to send the links of its current bookings to."""

    email = forms.EmailField(label="Email", max_length=254)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["email"].widget.attrs["autocomplete"] = "email"
