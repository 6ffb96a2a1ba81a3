"""
Watch one reservation expire, by hand.

    python manage.py shell < scripts/test_scheduler_manual.py

Creates a reservation with a 5-second hold on the first free future slot and
prints its status every second until it has expired. A scheduler must be
running against the same job store: `make run` in another terminal, or
`python manage.py start_scheduler`. Without one, the reservation still *reads*
as expired once the hold lapses, but nothing releases the slot until a
scheduler starts.
"""

import time

from django.utils import timezone

from apps.reservations.models import Reservation
from apps.reservations.services import reservation_create
from apps.rooms.models import TimeSlot

HOLD_SECONDS = 5

now = timezone.now()
slot = TimeSlot.objects.with_availability(now).filter(available=True).order_by("starts_at").first()
if slot is None:
    print("No free future slot: run `python manage.py load_demo_venue` first.")
else:
    reservation = reservation_create(
        time_slot_id=slot.pk,
        customer_name="Manual Test",
        customer_email="manual@example.com",
        party_size=slot.room.min_players,
        hold_seconds=HOLD_SECONDS,
    )
    print(
        f"Reservation {reservation.pk} ({reservation.token}) on {slot}, "
        f"expires at {reservation.expires_at:%H:%M:%S.%f} UTC"
    )
    deadline = time.monotonic() + HOLD_SECONDS + 30
    while time.monotonic() < deadline:
        reservation.refresh_from_db()
        slot.refresh_from_db()
        print(f"{timezone.now():%H:%M:%S} status={reservation.status} slot={slot.status}")
        if reservation.status == Reservation.Status.CANCELLED and reservation.cancelled_at:
            late = (reservation.cancelled_at - reservation.expires_at).total_seconds()
            print(f"Expired {late:.3f} s after expires_at ({reservation.cancellation_reason}).")
            break
        time.sleep(1)
    else:
        print("Still pending 30 s after its hold: is a scheduler running on this job store?")
