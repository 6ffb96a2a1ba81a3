"""A room's reset time: slot generation and the slots admin leave it free between games."""

from collections import Counter
from datetime import date, datetime, time, timedelta
from io import StringIO

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from apps.rooms.models import Closure, Room, TimeSlot
from apps.rooms.services import timeslots_generate

from ..conftest import run_together
from ..factories import ReservationFactory, RoomFactory, TimeSlotFactory

pytestmark = pytest.mark.django_db

DAY = date(2030, 6, 3)


def local(hhmm: str, day: date = DAY) -> datetime:
    return datetime.combine(day, time.fromisoformat(hhmm), tzinfo=timezone.get_default_timezone())


def starts(room: Room) -> list[str]:
    slots = TimeSlot.objects.filter(room=room).order_by("starts_at")
    return [f"{timezone.localtime(s.starts_at):%H:%M}" for s in slots]


def test_generated_slots_leave_the_reset_time_between_them():
    room = RoomFactory(duration_minutes=60, reset_minutes=15)

    result = timeslots_generate(
        room=room, start=DAY, end=DAY, times=[local(t).time() for t in ("10:00", "11:00", "11:15")]
    )

    assert starts(room) == ["10:00", "11:15"]  # 11:00 falls in 10:00's reset
    assert (len(result.created), result.overlapping, result.existing) == (2, 1, 0)


def test_generated_slots_keep_clear_of_existing_slots_and_their_reset_time():
    room = RoomFactory(slug="tomb", duration_minutes=60, reset_minutes=15)
    TimeSlotFactory(room=room, starts_at=local("12:00"), ends_at=local("13:00"))
    out = StringIO()

    call_command(
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        DAY.isoformat(),
        "--to",
        DAY.isoformat(),
        "--times",
        "10:45,10:50,12:00,13:10,13:15",
        stdout=out,
    )

    # 10:50 would end at 11:50, less than 15 minutes before 12:00; 13:10 starts
    # within 12:00's reset. 10:45 and 13:15 touch the reset's ends exactly.
    assert starts(room) == ["10:45", "12:00", "13:15"]
    assert "Created 2 slots for" in out.getvalue()
    assert "1 already existed, 2 skipped as overlapping" in out.getvalue()


def test_a_room_without_reset_time_takes_games_back_to_back():
    room = RoomFactory(duration_minutes=60, reset_minutes=0)

    times = [local("10:00").time(), local("11:00").time()]

    timeslots_generate(room=room, start=DAY, end=DAY, times=times)

    assert starts(room) == ["10:00", "11:00"]


def test_the_rooms_admin_action_reports_slots_skipped_for_the_reset_time(client):
    client.force_login(get_user_model().objects.create_superuser("boss", password="pw"))
    room = RoomFactory(name="Tomb", duration_minutes=60, reset_minutes=30)

    response = client.post(
        "/admin/rooms/room/",
        {
            "action": "generate_slots",
            ACTION_CHECKBOX_NAME: [room.pk],
            "apply": "1",
            "start": DAY.isoformat(),
            "end": DAY.isoformat(),
            "times": "10:00, 11:15, 11:30",
        },
        follow=True,
    )

    assert starts(room) == ["10:00", "11:30"]
    assert "Tomb: created 2 time slots, 0 already existed, 1 overlapped others" in (
        response.content.decode()
    )


def slot_form(room: Room, start: str, end: str) -> dict[str, object]:
    return {
        "room": room.pk,
        "starts_at_0": DAY.isoformat(),
        "starts_at_1": start,
        "ends_at_0": DAY.isoformat(),
        "ends_at_1": end,
        # The slot's waiting list, shown read-only below the form.
        "waiting_entries-TOTAL_FORMS": "0",
        "waiting_entries-INITIAL_FORMS": "0",
    }


@pytest.fixture
def staff(client):
    client.force_login(get_user_model().objects.create_superuser("boss", password="pw"))
    return client


def test_the_slots_admin_refuses_a_slot_in_another_games_reset_time(staff):
    room = RoomFactory(name="Tomb", duration_minutes=60, reset_minutes=15)
    TimeSlotFactory(room=room, starts_at=local("12:00"), ends_at=local("13:00"))

    response = staff.post("/admin/rooms/timeslot/add/", slot_form(room, "13:10", "14:10"))

    assert response.status_code == 200
    assert (
        f"Tomb has a game from {DAY} 12:00 to 13:00 that this slot overlaps or leaves less "
        "than the 15 minutes the room needs to be reset."
    ) in response.content.decode()
    assert starts(room) == ["12:00"]


def test_the_slots_admin_refuses_an_overlapping_slot_when_the_room_needs_no_reset(staff):
    room = RoomFactory(name="Tomb", duration_minutes=60, reset_minutes=0)
    TimeSlotFactory(room=room, starts_at=local("12:00"), ends_at=local("13:00"))

    response = staff.post("/admin/rooms/timeslot/add/", slot_form(room, "11:30", "12:30"))

    assert f"Tomb has a game from {DAY} 12:00 to 13:00 that this slot overlaps." in (
        response.content.decode()
    )
    assert starts(room) == ["12:00"]


def test_the_slots_admin_adds_a_slot_once_the_reset_time_has_passed(staff):
    room = RoomFactory(duration_minutes=60, reset_minutes=15)
    other_room = RoomFactory()
    TimeSlotFactory(room=room, starts_at=local("12:00"), ends_at=local("13:00"))
    TimeSlotFactory(room=other_room, starts_at=local("13:00"), ends_at=local("14:00"))

    response = staff.post("/admin/rooms/timeslot/add/", slot_form(room, "13:15", "14:15"))

    assert response.status_code == 302
    assert starts(room) == ["12:00", "13:15"]


def test_the_slots_admin_refuses_to_move_a_slot_into_another_games_reset_time(staff):
    room = RoomFactory(duration_minutes=60, reset_minutes=15)
    TimeSlotFactory(room=room, starts_at=local("12:00"), ends_at=local("13:00"))
    later = TimeSlotFactory(room=room, starts_at=local("14:00"), ends_at=local("15:00"))
    url = f"/admin/rooms/timeslot/{later.pk}/change/"

    refused = staff.post(url, slot_form(room, "13:05", "14:05"))
    moved = staff.post(url, slot_form(room, "14:30", "15:30"))  # overlaps only itself

    assert "that this slot overlaps or leaves less than the 15 minutes" in (
        refused.content.decode()
    )
    assert moved.status_code == 302
    assert starts(room) == ["12:00", "14:30"]


@pytest.mark.parametrize("holder", ["hold", "booking"])
def test_the_slots_admin_keeps_a_held_or_booked_slots_time(staff, holder):
    """Moved in the admin, a slot would take its customer along unasked, perhaps into a closure."""
    room = RoomFactory(duration_minutes=60)
    slot = TimeSlotFactory(room=room, starts_at=local("14:00"), ends_at=local("15:00"))
    held = {"hold": {}, "booking": {"status": "paid", "paid_at": timezone.now()}}[holder]
    ReservationFactory(time_slot=slot, **held)
    url = f"/admin/rooms/timeslot/{slot.pk}/change/"

    refused = staff.post(url, slot_form(room, "16:00", "17:00"))

    assert refused.status_code == 200
    assert "This slot is held or booked, so its room and start cannot change" in (
        refused.content.decode()
    )
    assert starts(room) == ["14:00"]


def test_a_held_slots_end_may_move_but_not_into_a_closure(staff):
    room = RoomFactory(duration_minutes=60)
    slot = TimeSlotFactory(room=room, starts_at=local("14:00"), ends_at=local("15:00"))
    ReservationFactory(time_slot=slot)
    Closure.objects.create(room=room, starts_at=local("15:20"), ends_at=local("18:00"), reason="x")
    url = f"/admin/rooms/timeslot/{slot.pk}/change/"

    longer = staff.post(url, slot_form(room, "14:00", "15:15"))
    into_closure = staff.post(url, slot_form(room, "14:00", "15:30"))

    assert longer.status_code == 302
    assert "a closure would then overlap it" in into_closure.content.decode()
    slot.refresh_from_db()
    assert timezone.localtime(slot.ends_at).strftime("%H:%M") == "15:15"


def test_the_slots_admin_moves_a_slot_whose_hold_has_lapsed(staff):
    room = RoomFactory(duration_minutes=60)
    slot = TimeSlotFactory(room=room, starts_at=local("14:00"), ends_at=local("15:00"))
    ReservationFactory(time_slot=slot, expires_at=timezone.now() - timedelta(seconds=1))

    moved = staff.post(
        f"/admin/rooms/timeslot/{slot.pk}/change/", slot_form(room, "16:00", "17:00")
    )

    assert moved.status_code == 302
    assert starts(room) == ["16:00"]


def test_the_rooms_list_shows_the_reset_time(staff):
    RoomFactory(name="Tomb", reset_minutes=20)

    response = staff.get("/admin/rooms/room/")

    assert "reset minutes" in response.content.decode().lower()
    assert '<td class="field-reset_minutes">20</td>' in response.content.decode()


def test_the_demo_venue_rooms_need_fifteen_minutes_to_reset():
    call_command("load_demo_venue", stdout=StringIO())

    assert set(Room.objects.values_list("reset_minutes", flat=True)) == {15}
    for room in Room.objects.all():
        slots = list(TimeSlot.objects.filter(room=room).order_by("starts_at"))
        gaps = [b.starts_at - a.ends_at for a, b in zip(slots, slots[1:], strict=False)]
        assert min(gaps) >= timedelta(minutes=15)


@pytest.mark.django_db(transaction=True)
def test_two_generations_at_once_never_create_colliding_slots():
    room = RoomFactory(duration_minutes=60, reset_minutes=15)

    def generate(at: str):
        def run():
            result = timeslots_generate(
                room=room, start=DAY, end=DAY, times=[time.fromisoformat(at)]
            )
            return "created" if result.created else "overlapping"

        return run

    outcome = run_together(generate("10:00"), generate("10:30"), generate("11:00"))

    assert outcome == Counter({"created": 1, "overlapping": 2})
    assert len(starts(room)) == 1


@pytest.mark.django_db(transaction=True)
def test_two_staff_adding_colliding_slots_at_once_get_one_slot():
    room = RoomFactory(duration_minutes=60, reset_minutes=15)
    boss = get_user_model().objects.create_superuser("boss", password="pw")

    def add(at: str, until: str):
        def run():
            client = Client()
            client.force_login(boss)
            return client.post("/admin/rooms/timeslot/add/", slot_form(room, at, until)).status_code

        return run

    outcome = run_together(add("10:00", "11:00"), add("10:30", "11:30"), add("11:10", "12:10"))

    assert outcome == Counter({302: 1, 200: 2})
    assert len(starts(room)) == 1
