"""Slot generation: the room's missing slots in venue time, never twice, never overlapping."""

from datetime import date, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from apps.rooms.models import TimeSlot

from ..factories import RoomFactory


@pytest.mark.django_db
def test_generate_slots_keeps_venue_time_across_daylight_saving(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    room = RoomFactory(slug="tomb", duration_minutes=60)
    out = StringIO()

    # Berlin moves from UTC+1 to UTC+2 in the night of 28-29 March 2026.
    call_command(
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2026-03-28",
        "--to",
        "2026-03-29",
        "--times",
        "10:00,18:30",
        stdout=out,
    )

    starts = [
        timezone.localtime(s.starts_at)
        for s in TimeSlot.objects.filter(room=room).order_by("starts_at")
    ]
    assert [(s.date(), s.strftime("%H:%M"), s.utcoffset()) for s in starts] == [
        (date(2026, 3, 28), "10:00", timedelta(hours=1)),
        (date(2026, 3, 28), "18:30", timedelta(hours=1)),
        (date(2026, 3, 29), "10:00", timedelta(hours=2)),
        (date(2026, 3, 29), "18:30", timedelta(hours=2)),
    ]
    assert "Created 4 slots" in out.getvalue()


@pytest.mark.django_db
def test_generate_slots_skips_existing_and_dry_run_creates_nothing():
    RoomFactory(slug="tomb")
    args = [
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2030-01-01",
        "--to",
        "2030-01-03",
        "--times",
        "10:00",
    ]
    dry = StringIO()

    call_command(*args, "--dry-run", stdout=dry)
    assert "Would create 3 slots" in dry.getvalue()
    assert TimeSlot.objects.count() == 0

    call_command(*args, stdout=StringIO())
    again = StringIO()
    call_command(*args, stdout=again)
    assert TimeSlot.objects.count() == 3
    assert "Created 0 slots" in again.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--room", "nope", "--from", "2030-01-01", "--to", "2030-01-02", "--times", "10:00"],
            "No room",
        ),
        (
            ["--room", "tomb", "--from", "2030-01-05", "--to", "2030-01-02", "--times", "10:00"],
            "--to",
        ),
        (
            ["--room", "tomb", "--from", "2030-01-01", "--to", "2030-01-02", "--times", "ten"],
            "--times",
        ),
        (
            ["--room", "tomb", "--from", "someday", "--to", "2030-01-02", "--times", "10:00"],
            "--from",
        ),
    ],
)
def test_generate_slots_refuses_operator_mistakes(args, message):
    RoomFactory(slug="tomb")

    with pytest.raises(CommandError, match=message):
        call_command("generate_slots", *args)

    assert TimeSlot.objects.count() == 0


@pytest.mark.django_db
def test_generate_slots_reports_times_the_clocks_skip_and_measures_slots_in_real_time(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    room = RoomFactory(slug="tomb", duration_minutes=60)
    err = StringIO()

    # 26 March 2028: 02:00 -> 03:00 (02:30 does not exist). 29 October 2028: 03:00 -> 02:00.
    call_command(
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2028-03-26",
        "--to",
        "2028-03-26",
        "--times",
        "02:30,03:30",
        stdout=StringIO(),
        stderr=err,
    )
    call_command(
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2028-10-29",
        "--to",
        "2028-10-29",
        "--times",
        "02:30",
        stdout=StringIO(),
    )
    again = StringIO()
    call_command(
        "generate_slots",
        "--room",
        "tomb",
        "--from",
        "2028-10-29",
        "--to",
        "2028-10-29",
        "--times",
        "02:30",
        stdout=again,
    )

    assert "Skipped 2028-03-26 02:30: the clocks skip that time" in err.getvalue()
    slots = list(TimeSlot.objects.filter(room=room).order_by("starts_at"))
    assert [(s.starts_at.isoformat(), s.ends_at - s.starts_at) for s in slots] == [
        ("2028-03-26T01:30:00+00:00", timedelta(hours=1)),  # 03:30 CEST
        ("2028-10-29T00:30:00+00:00", timedelta(hours=1)),  # the first 02:30, CEST
    ]
    assert "Created 0 slots for" in again.getvalue()


@pytest.mark.django_db
def test_generate_slots_never_overlaps_existing_slots_after_a_time_zone_change(settings):
    room = RoomFactory(slug="tomb", duration_minutes=75)
    args = ["generate_slots", "--room", "tomb", "--from", "2030-06-01", "--to", "2030-06-01"]
    with override_settings(TIME_ZONE="UTC"):  # the venue's zone before the change
        call_command(*args, "--times", "10:00,12:00", stdout=StringIO())
    settings.TIME_ZONE = "Europe/Berlin"  # 10:00 CEST is 08:00 UTC, 12:00 CEST 10:00 UTC
    out = StringIO()

    call_command(*args, "--times", "10:00,12:00,15:00", stdout=out)

    starts = sorted(s.starts_at.strftime("%H:%M") for s in TimeSlot.objects.filter(room=room))
    assert starts == ["08:00", "10:00", "12:00"]  # 15:00 CEST would overlap 12:00 UTC
    assert "Created 1 slots for" in out.getvalue()
    assert "1 already existed, 1 skipped as overlapping" in out.getvalue()
