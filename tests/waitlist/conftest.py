from collections import Counter

from django.utils import timezone

from apps.reservations import waitlist
from apps.reservations.models import Reservation, WaitingEntry
from apps.rooms.models import TimeSlot

Entry = WaitingEntry.Status


def join(slot, email: str, **overrides) -> WaitingEntry:
    """Put a party of 3 named after ``email`` on ``slot``'s waiting list, through the service."""
    fields = {"customer_name": email.split("@")[0].title(), "party_size": 3}
    return waitlist.waiting_join(
        time_slot_id=slot.pk, customer_email=email, **{**fields, **overrides}
    )


def join_over_api(client, slot, email: str) -> dict:
    """Join ``slot``'s waiting list as a customer would, over the API; the place it shows."""
    response = client.post(
        "/api/waitlist/",
        {
            "slot_id": slot.pk,
            "customer_name": email.split("@")[0].title(),
            "customer_email": email,
            "party_size": 3,
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def entry_of(email: str) -> WaitingEntry:
    """The one place on a waiting list held by ``email``, read from the database."""
    return WaitingEntry.objects.select_related("offer").get(customer_email=email)


def offers_per_slot() -> Counter[int]:
    """How many offers were ever made on each slot."""
    return Counter(Reservation.objects.filter(is_offer=True).values_list("time_slot_id", flat=True))


def holders(slot) -> list[Reservation]:
    """The reservations holding ``slot`` as stored: pending or paid (the constraint allows one)."""
    return list(
        Reservation.objects.filter(
            time_slot_id=slot.pk,
            status__in=[Reservation.Status.PENDING, Reservation.Status.PAID],
        )
    )


def available(slot) -> bool:
    return TimeSlot.objects.with_availability(timezone.now()).get(pk=slot.pk).available
