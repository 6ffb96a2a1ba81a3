"""
The waiting list's cascade with a running scheduler, real time and a real SMTP server.

A hold of a second and a half, offers of two seconds: the lapsing hold goes to
the first party waiting, its lapsing offer to the next, whose payment books
the slot; each party is told by mail as it happens. Every wait polls with a
deadline.
"""

import time
from datetime import timedelta

import pytest

from apps.messaging.compose import clock
from apps.messaging.models import Message
from escape_rooms_backend.scheduler import start_scheduler

from ..conftest import arrival, subjects, wait_for
from ..factories import TimeSlotFactory, reserve
from .conftest import Entry, available, entry_of, join_over_api, offers_per_slot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

HOLD = 1.5  # seconds
OFFER = 2  # seconds (WAITLIST_OFFER_SECONDS is whole seconds)
OFFERED = "Yours if you pay by"


@pytest.fixture
def mail(settings, mail_server):
    """The scheduler running in this process, offers of ``OFFER`` seconds, mail to a real server."""
    settings.WAITLIST_OFFER_SECONDS = OFFER
    start_scheduler()
    return mail_server


def test_a_lapsed_hold_passes_down_the_list_until_a_party_pays_and_each_is_told(mail, client):
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email="holder@example.com", hold_seconds=HOLD)
    places = [join_over_api(client, slot, f"{name}@example.com") for name in ("ada", "bo", "cy")]
    assert [place["place"] for place in places] == [1, 2, 3]

    # The hold lapses: Ada is offered the slot, and told so, within a second.
    hold_end = hold.expires_at.timestamp()
    told_ada = wait_for(lambda: arrival(mail, "ada@example.com", OFFERED), timeout=HOLD + 3)
    assert told_ada, subjects(mail, "ada@example.com")
    ada = entry_of("ada@example.com")
    assert ada.status == Entry.OFFERED
    first_offer = ada.offer
    print(f"\noffer to the first party: its message {told_ada - hold_end:.3f} s after the hold")
    assert 0 <= told_ada - hold_end < 1.0
    assert 0 <= (ada.offered_at - hold.expires_at).total_seconds() < 1.0
    assert first_offer.expires_at == ada.offered_at + timedelta(seconds=OFFER)
    [offer_mail] = [m for m in mail.to("ada@example.com") if m["Subject"].startswith(OFFERED)]
    assert offer_mail["Subject"].startswith(f"{OFFERED} {clock(first_offer.expires_at)}: ")
    assert not available(slot)

    # Ada does not pay: the offer lapses and passes to Bo, told within a second.
    offer_end = first_offer.expires_at.timestamp()
    told_bo = wait_for(lambda: arrival(mail, "bo@example.com", OFFERED), timeout=OFFER + 3)
    assert told_bo, subjects(mail, "bo@example.com")
    print(f"offer to the second party: its message {told_bo - offer_end:.3f} s after the first")
    assert 0 <= told_bo - offer_end < 1.0
    ada, bo = entry_of("ada@example.com"), entry_of("bo@example.com")
    assert (ada.status, ada.offer.status, bo.status) == (Entry.LAPSED, "cancelled", Entry.OFFERED)

    # Bo pays within the offer: the slot is booked; Cy is told and keeps waiting.
    paid = client.post(
        f"/api/reservations/{bo.offer.token}/pay/",
        {"payment_reference": "PAY-BO"},
        content_type="application/json",
    )
    assert paid.status_code == 200, paid.content
    assert (paid.json()["status"], paid.json()["is_offer"]) == ("paid", True)
    assert wait_for(lambda: arrival(mail, "cy@example.com", "Booked by another"), timeout=3)
    assert wait_for(lambda: arrival(mail, "bo@example.com", "Booked:"), timeout=3)
    time.sleep(0.5)  # anything doubled would have come by now

    assert subjects(mail, "holder@example.com") == ["Held for you", "Hold ended, not booked"]
    assert subjects(mail, "ada@example.com") == [
        "On the waiting list",
        OFFERED,
        "Offer ended, not booked",
    ]
    assert subjects(mail, "bo@example.com") == ["On the waiting list", OFFERED, "Booked"]
    assert subjects(mail, "cy@example.com") == ["On the waiting list", "Booked by another party"]
    bo, cy = entry_of("bo@example.com"), entry_of("cy@example.com")
    assert (bo.status, bo.offer.status, cy.status) == (Entry.BOOKED, "paid", Entry.WAITING)
    assert client.get(f"/api/waitlist/{cy.token}/").json()["place"] == 1
    assert offers_per_slot() == {slot.pk: 2}
    assert not available(slot)
    assert len(mail.received) == Message.objects.filter(status=Message.Status.SENT).count() == 10
