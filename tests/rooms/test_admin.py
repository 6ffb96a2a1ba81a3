"""Staff generate a room's slots from the rooms admin."""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.rooms.models import TimeSlot

from ..factories import RoomFactory

pytestmark = pytest.mark.django_db


def test_rooms_admin_generates_slots(client):
    admin_user = get_user_model().objects.create_superuser("boss", password="pw")
    client.force_login(admin_user)
    room = RoomFactory(slug="tomb")
    day = timezone.localdate() + timedelta(days=3)

    client.post(
        "/admin/rooms/room/",
        {
            "action": "generate_slots",
            ACTION_CHECKBOX_NAME: [room.pk],
            "apply": "1",
            "start": day.isoformat(),
            "end": (day + timedelta(days=1)).isoformat(),
            "times": "10:00, 14:00",
        },
    )

    assert TimeSlot.objects.filter(room=room).count() == 4
