from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.rooms.models import Room, TimeSlot

pytestmark = pytest.mark.django_db


def test_the_demo_venue_has_rooms_with_two_weeks_of_slots_and_loads_once():
    call_command("load_demo_venue", stdout=StringIO())
    rooms, slots = Room.objects.count(), TimeSlot.objects.count()

    again = StringIO()
    call_command("load_demo_venue", stdout=again)

    assert rooms == 3
    assert slots == 3 * 14 * 6
    assert (Room.objects.count(), TimeSlot.objects.count()) == (rooms, slots)
    assert "0 new slots" in again.getvalue()
    days = {timezone.localtime(s.starts_at).date() for s in TimeSlot.objects.all()}
    assert min(days) == timezone.localdate() and len(days) == 14
