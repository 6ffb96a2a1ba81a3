from argparse import ArgumentParser
from datetime import UTC
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.rooms.forms import TIMES_HELP, SlotGenerationForm
from apps.rooms.models import Room
from apps.rooms.services import timeslots_generate


class Command(BaseCommand):
    help = (
        "Create a room's missing time slots for each day of a date range, at given start times "
        "in the venue's time zone (TIME_ZONE); existing slots are skipped. Example: "
        "manage.py generate_slots --room the-lost-tomb --from 2026-12-01 --to 2026-12-31 "
        "--times 10:00,12:00,14:00"
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--room", required=True, help="The room's slug.")
        parser.add_argument("--from", dest="start", required=True, help="First day, YYYY-MM-DD.")
        parser.add_argument("--to", dest="end", required=True, help="Last day, YYYY-MM-DD.")
        parser.add_argument("--times", required=True, help=TIMES_HELP)
        parser.add_argument(
            "--dry-run", action="store_true", help="Print what would be created; create nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            room = Room.objects.get(slug=options["room"])
        except Room.DoesNotExist:
            raise CommandError(f"No room with slug {options['room']!r}.") from None
        form = SlotGenerationForm(
            data={"start": options["start"], "end": options["end"], "times": options["times"]}
        )
        if not form.is_valid():
            errors = "; ".join(
                f"--{name if name != 'start' else 'from'}: {' '.join(str(m) for m in messages)}"
                for name, messages in form.errors.items()
            )
            raise CommandError(errors.replace("--end", "--to"))
        result = timeslots_generate(room=room, dry_run=options["dry_run"], **form.cleaned_data)
        verb = "Would create" if options["dry_run"] else "Created"
        for local_time in result.nonexistent:
            self.stderr.write(
                f"Skipped {local_time:%Y-%m-%d %H:%M}: the clocks skip that time in "
                f"{timezone.get_default_timezone_name()}."
            )
        for slot in result.created:
            local = timezone.localtime(slot.starts_at)
            utc = slot.starts_at.astimezone(UTC)
            self.stdout.write(f"{verb} {room.slug} {local:%Y-%m-%d %H:%M %Z} ({utc:%H:%M} UTC)")
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} {len(result.created)} slots for {room.name}; "
                f"{result.existing} already existed, {result.overlapping} skipped as overlapping."
            )
        )
