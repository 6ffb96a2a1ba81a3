"""A room with years of time slots is edited in the admin like any other."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.rooms.models import Room, TimeSlot

from ..conftest import form_fields
from ..factories import RoomFactory

pytestmark = pytest.mark.django_db

YEARS_OF_DAYS = 3 * 365


@pytest.fixture
def staff(client):
    client.force_login(get_user_model().objects.create_superuser("boss", password="pw"))
    return client


@pytest.fixture
def busy_room() -> Room:
    """A room with a slot every day for three years from tomorrow, and one in the past."""
    room = RoomFactory(name="Tomb", slug="tomb", duration_minutes=60)
    first = (timezone.now() + timedelta(days=1)).replace(microsecond=0)
    starts = [first - timedelta(days=2)] + [first + timedelta(days=n) for n in range(YEARS_OF_DAYS)]
    TimeSlot.objects.bulk_create(
        TimeSlot(room=room, starts_at=at, ends_at=at + timedelta(hours=1)) for at in starts
    )
    return room


def test_a_room_with_years_of_slots_is_saved_from_its_admin_page(staff, busy_room):
    url = f"/admin/rooms/room/{busy_room.pk}/change/"
    data = form_fields(staff.get(url).content.decode(), "room_form")  # as the browser sends it
    data.update(
        description=["Darker than before."], reset_minutes=["15"], price=["95.50"], _save=["Save"]
    )
    del data["is_active"]  # the checkbox unticked

    response = staff.post(url, data)

    assert response.status_code == 302
    busy_room.refresh_from_db()
    assert (busy_room.price, busy_room.description, busy_room.is_active) == (
        Decimal("95.50"),
        "Darker than before.",
        False,
    )
    assert busy_room.reset_minutes == 15
    assert TimeSlot.objects.filter(room=busy_room).count() == YEARS_OF_DAYS + 1


def test_a_rooms_page_summarises_its_upcoming_slots_in_a_few_queries(
    staff, busy_room, django_assert_max_num_queries
):
    with django_assert_max_num_queries(8):
        html = staff.get(f"/admin/rooms/room/{busy_room.pk}/change/").content.decode()

    assert f"{YEARS_OF_DAYS} upcoming, the next:" in html
    first = TimeSlot.objects.filter(room=busy_room, starts_at__gte=timezone.now()).first()
    assert first is not None
    assert f"{timezone.localtime(first.starts_at):%a %Y-%m-%d %H:%M}" in html
    assert len(re.findall(r'href="/admin/rooms/timeslot/\d+/change/"', html)) == 5
    assert 'name="time_slots-TOTAL_FORMS"' not in html


def test_the_summary_links_to_the_rooms_upcoming_slots(staff, busy_room):
    other = RoomFactory()
    TimeSlot.objects.create(
        room=other,
        starts_at=timezone.now() + timedelta(days=1),
        ends_at=timezone.now() + timedelta(days=1, hours=1),
    )
    html = staff.get(f"/admin/rooms/room/{busy_room.pk}/change/").content.decode()
    link = html.split('">All upcoming time slots</a>')[0].rsplit('<a href="', 1)[1]

    listed = staff.get(link.replace("&amp;", "&"))

    assert listed.status_code == 200
    assert listed.context["cl"].result_count == YEARS_OF_DAYS  # this room's, from now on
