"""
Measure how late unpaid holds are released, against a running scheduler.

    python manage.py shell < scripts/measure_expiry_lateness.py

Needs a scheduler on the same database and job store (`make run`, or
`python manage.py start_scheduler`) and free future slots
(`python manage.py load_demo_venue`). Reserves up to 50 free slots from this
process, with holds ending spread over 5 seconds starting
SCHEDULER_POLL_SECONDS + 2 s from now (so a worker in another process has
looked at the store before the first one is due), waits, and prints the
lateness of each release: ``cancelled_at - expires_at``, the moment the slot
was set free in the same transaction. The reservations stay in the database as
cancelled; the slots are free again afterwards.
"""

import statistics
import time

from django.conf import settings
from django.utils import timezone

from apps.reservations.models import Reservation
from apps.reservations.services import reservation_create
from apps.rooms.models import TimeSlot

COUNT = 50
SPREAD_SECONDS = 5.0

now = timezone.now()
slots = list(
    TimeSlot.objects.with_availability(now).filter(available=True).select_related("room")[:COUNT]
)
lead = settings.SCHEDULER_POLL_SECONDS + 2
ids = []
for index, slot in enumerate(slots):
    ids.append(
        reservation_create(
            time_slot_id=slot.pk,
            customer_name="Lateness Probe",
            customer_email="probe@example.com",
            party_size=slot.room.min_players,
            hold_seconds=lead + SPREAD_SECONDS * index / max(1, len(slots) - 1),
        ).pk
    )
print(f"Reserved {len(ids)} slots; holds end in {lead:.1f} to {lead + SPREAD_SECONDS:.1f} s")

deadline = time.monotonic() + lead + SPREAD_SECONDS + 30
while time.monotonic() < deadline:
    if not Reservation.objects.filter(pk__in=ids, status=Reservation.Status.PENDING).exists():
        break
    time.sleep(0.5)

rows = Reservation.objects.filter(pk__in=ids).values_list("status", "expires_at", "cancelled_at")
late_ms = sorted(
    (cancelled - expires).total_seconds() * 1000
    for status, expires, cancelled in rows
    if status == Reservation.Status.CANCELLED
)
missing = len(ids) - len(late_ms)
if late_ms:
    quantiles = statistics.quantiles(late_ms, n=100, method="inclusive")
    print(f"released {len(late_ms)}, still pending {missing}")
    print("| p50 ms | p95 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- |")
    p50, p95, p99 = quantiles[49], quantiles[94], quantiles[98]
    print(f"| {p50:.1f} | {p95:.1f} | {p99:.1f} | {late_ms[-1]:.1f} |")
else:
    print(f"Nothing released 30 s after the last hold ({missing} pending): is a scheduler running?")
