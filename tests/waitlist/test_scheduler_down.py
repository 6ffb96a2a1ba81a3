"""
The waiting list when the scheduler is down: the reads and the sweep make the offer, once.

With no scheduler running, a hold that parties wait for lapses and stays
pending: every read counts the slot as taken, and the first read of its
list, a public reservation's attempt or the sweep hands it to the first
party. A worker killed with an offer out leaves it to the next worker, which
passes it on at its end. Nothing is ever offered twice.
"""

import time
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.booking.views import SLOT_TAKEN_MESSAGE, slot_key
from apps.messaging.models import Message
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation, ReservationEvent
from escape_rooms_backend.scheduler import cancel_expired_reservations

from ..conftest import arrival, subjects, wait_for
from ..factories import TimeSlotFactory, reserve
from .conftest import (
    Entry,
    available,
    entry_of,
    holders,
    join,
    offers_per_slot,
)

pytestmark = pytest.mark.django_db(transaction=True)

OFFERED = "Yours if you pay by"


def lapsed_hold_with_two_waiting(slot):
    """A hold on ``slot`` that lapsed a second ago, still pending; Ada, then Bo, waiting for it."""
    now = timezone.now()
    hold = reserve(
        slot,
        customer_email="holder@example.com",
        now=now - timedelta(seconds=60),
        hold_seconds=59,
    )
    ada = join(slot, "ada@example.com", now=now - timedelta(seconds=30))
    bo = join(slot, "bo@example.com", now=now - timedelta(seconds=20))
    return hold, ada, bo


def listed(client, slot) -> bool:
    """The slot's ``available`` in the API's list of its room's slots on its day."""
    day = timezone.localdate(slot.starts_at)
    response = client.get(f"/api/rooms/{slot.room.slug}/slots/?date={day}")
    assert response.status_code == 200, response.content
    [row] = [row for row in response.json() if row["id"] == slot.pk]
    return row["available"]


def room_page_state(client, slot) -> str:
    day = timezone.localdate(slot.starts_at)
    response = client.get(f"/rooms/{slot.room.slug}/?date={day}")
    assert response.status_code == 200
    [row] = [row for row in response.context["rows"] if row["slot"].pk == slot.pk]
    return row["state"]


def public_reservation(client, slot) -> None:
    response = client.post(
        "/api/reservations/",
        {
            "slot_id": slot.pk,
            "customer_name": "Eve Public",
            "customer_email": "eve@example.com",
            "party_size": 3,
        },
        content_type="application/json",
    )
    assert (response.status_code, response.json()["error"]["code"]) == (409, "slot_taken")


def booking_form(client, slot) -> None:
    response = client.post(
        f"/rooms/{slot.room.slug}/{slot_key(slot)}/reserve/",
        {
            "customer_name": "Eve Public",
            "customer_email": "eve@example.com",
            "customer_phone": "",
            "party_size": "3",
            "request_key": "",
        },
        follow=True,
    )
    assert SLOT_TAKEN_MESSAGE in response.content.decode()


def waiting_read(client, email: str) -> dict:
    response = client.get(f"/api/waitlist/{entry_of(email).token}/")
    assert response.status_code == 200
    return response.json()


def waiting_page(client, email: str) -> None:
    assert client.get(f"/waitlist/{entry_of(email).token}/").status_code == 200


# Every way the offer can be made without a scheduler: reads, a refused
# reservation, the sweep.
WAYS = {
    "the room page": lambda client, slot: room_page_state(client, slot),
    "the first party's read": lambda client, slot: waiting_read(client, "ada@example.com"),
    "the second party's read": lambda client, slot: waiting_read(client, "bo@example.com"),
    "the second party's page": lambda client, slot: waiting_page(client, "bo@example.com"),
    "a public reservation": public_reservation,
    "the booking form": booking_form,
    "the sweep": lambda client, slot: cancel_expired_reservations(),
}


@pytest.mark.parametrize("first", WAYS)
def test_with_no_scheduler_a_lapsed_hold_with_parties_waiting_is_taken_and_offered_once(
    first, client, job_store
):
    slot = TimeSlotFactory()
    hold, ada, bo = lapsed_hold_with_two_waiting(slot)

    # Nobody has touched it: it reads as taken, not free.
    assert listed(client, slot) is False
    assert not available(slot)
    hold.refresh_from_db()
    assert hold.status == Reservation.Status.PENDING  # the list read changed nothing

    WAYS[first](client, slot)

    ada, bo = entry_of("ada@example.com"), entry_of("bo@example.com")
    assert (ada.status, bo.status) == (Entry.OFFERED, Entry.WAITING)
    offer = ada.offer
    assert (offer.status, offer.is_offer) == (Reservation.Status.PENDING, True)
    assert HOLD_END.job_id(offer.pk) in job_store.jobs()  # a scheduler back up ends it on time

    # Then every other way, and the first again: nothing more happens.
    for way in WAYS.values():
        way(client, slot)

    assert offers_per_slot() == {slot.pk: 1}
    assert [h.pk for h in holders(slot)] == [offer.pk]
    assert entry_of("ada@example.com").status == Entry.OFFERED
    assert waiting_read(client, "bo@example.com")["place"] == 1
    assert room_page_state(client, slot) == "offered"
    assert listed(client, slot) is False
    assert not Reservation.objects.filter(customer_email="eve@example.com").exists()
    assert ReservationEvent.objects.filter(reservation=hold, to_status="cancelled").count() == 1


def test_the_offer_a_read_made_lapses_to_the_next_party_at_the_next_read(client, settings):
    settings.WAITLIST_OFFER_SECONDS = 1
    slot = TimeSlotFactory()
    lapsed_hold_with_two_waiting(slot)
    first = waiting_read(client, "ada@example.com")
    assert (first["status"], first["offer"]["seconds_left"]) == ("offered", 1)

    assert wait_for(
        lambda: waiting_read(client, "ada@example.com")["status"] == "lapsed", timeout=3
    )

    bo = waiting_read(client, "bo@example.com")
    assert (bo["status"], bo["place"], bo["offer"]["status"]) == ("offered", None, "pending")
    assert offers_per_slot() == {slot.pk: 2}
    assert [h.customer_email for h in holders(slot)] == ["bo@example.com"]


@pytest.mark.integration
def test_a_worker_killed_with_an_offer_out_leaves_it_to_the_next_which_passes_it_on(
    start_worker, mail_server, settings
):
    offer_seconds = 3  # the next worker is up before the offer ends, unless the machine crawls
    settings.WAITLIST_OFFER_SECONDS = offer_seconds
    environ = {"WAITLIST_OFFER_SECONDS": str(offer_seconds), "EMAIL_URL": mail_server.url}
    first = start_worker(**environ)
    slot = TimeSlotFactory()
    reserve(slot, customer_email="holder@example.com", hold_seconds=1)
    join(slot, "ada@example.com")
    join(slot, "bo@example.com")

    # The worker offers the lapsed hold to Ada and tells her; everything sent, it is killed.
    assert wait_for(lambda: arrival(mail_server, "ada@example.com", OFFERED), timeout=4), (
        first.log()
    )
    assert wait_for(lambda: not Message.objects.exclude(status="sent").exists(), timeout=3)
    first.kill()  # SIGKILL: no clean stop
    first.wait()
    offer = entry_of("ada@example.com").offer
    second = start_worker(**environ)
    up = time.time()

    told_bo = wait_for(
        lambda: arrival(mail_server, "bo@example.com", OFFERED), timeout=offer_seconds + 5
    )
    assert told_bo, second.log()
    # On time: within a second of the offer's end, or of the worker's start if that was later.
    due = max(offer.expires_at.timestamp(), up)
    print(f"\nnext offer told {told_bo - offer.expires_at.timestamp():.3f} s after the first ended")
    assert told_bo - due < 1.0
    time.sleep(1)  # anything doubled would have come by now

    ada, bo = entry_of("ada@example.com"), entry_of("bo@example.com")
    assert (ada.status, ada.offer.status, bo.status) == (Entry.LAPSED, "cancelled", Entry.OFFERED)
    assert offers_per_slot() == {slot.pk: 2}
    assert ReservationEvent.objects.filter(reservation=offer, to_status="cancelled").count() == 1
    assert subjects(mail_server, "holder@example.com") == ["Held for you", "Hold ended, not booked"]
    assert subjects(mail_server, "ada@example.com") == [
        "On the waiting list",
        OFFERED,
        "Offer ended, not booked",
    ]
    assert subjects(mail_server, "bo@example.com") == ["On the waiting list", OFFERED]
    sent = Counter(m["Message-ID"] for m in mail_server.received)
    assert max(sent.values()) == 1
    assert set(sent) == set(Message.objects.values_list("message_id", flat=True))
