"""
The waiting list on the booking pages, and the messages that lead back to them.

The room page says which times are held, offered or booked, with a way onto
their lists; the join form; a party's own page (its place, its offer, the
way out). Each waiting-list message is rendered as sent and its link
followed: it must open the page that lets the party do what it says.
"""

import re
from datetime import datetime, time, timedelta
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from apps.messaging import compose, services
from apps.messaging.models import Message
from apps.reservations import services as reservations
from apps.reservations import waitlist
from apps.reservations.models import Reservation, ReservationEvent, WaitingEntry

from ..factories import RoomFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db

Entry = WaitingEntry.Status
Kind = Message.Kind


@pytest.fixture
def room():
    return RoomFactory(name="The Lost Tomb", slug="tomb", min_players=2, max_players=6)


def slot_at(room, hh_mm: str, days: int = 1):
    """A slot of ``room`` at ``hh_mm`` venue time, ``days`` from today (on the room page)."""
    day = timezone.localdate() + timedelta(days=days)
    hour, minute = map(int, hh_mm.split(":"))
    starts_at = datetime.combine(day, time(hour, minute), tzinfo=timezone.get_current_timezone())
    return TimeSlotFactory(room=room, starts_at=starts_at, ends_at=starts_at + timedelta(hours=1))


def join(slot, email, **overrides) -> WaitingEntry:
    fields = {"customer_name": email.split("@")[0].title(), "party_size": 3}
    return waitlist.waiting_join(
        time_slot_id=slot.pk, customer_email=email, **{**fields, **overrides}
    )


def held(slot) -> Reservation:
    return reserve(slot, customer_email="holder@example.com")


def wait_url(slot) -> str:
    return f"/rooms/{slot.room.slug}/{slot.key}/wait/"


def party(**changes):
    return {
        "customer_name": "Ada Lovelace",
        "customer_email": "ada@example.com",
        "customer_phone": "",
        "party_size": "3",
        "request_key": "",
        **changes,
    }


def slot_rows(html: str) -> dict[str, tuple[str, str, str]]:
    """The room page's rows by slot key: (state class, status text, action text and link)."""
    rows = {}
    for state, key, cells in re.findall(
        r'<tr class="slot (\w+)" data-slot="(\w+)">(.*?)</tr>', html, re.DOTALL
    ):
        tds = re.findall(r"<td>(.*?)</td>", cells, re.DOTALL)
        link = re.search(r'href="([^"]+)"[^>]*>([^<]*)</a>', tds[2])
        action = f"{link.group(2)} -> {link.group(1)}" if link else ""
        rows[key] = (state, tds[1], action)
    return rows


def local_hm(at: datetime) -> str:
    return f"{timezone.localtime(at):%H:%M}"


# ---------------------------------------------------------------------------
# The room page
# ---------------------------------------------------------------------------


def test_the_room_page_says_held_until_when_offered_or_booked_with_a_way_onto_each_list(
    client, room
):
    free, hold_slot, offer_slot, booked_slot = (
        slot_at(room, t) for t in ("10:00", "12:00", "14:00", "16:00")
    )
    hold = held(hold_slot)
    lapsing = held(offer_slot)
    join(offer_slot, "ada@example.com")
    reservations.reservation_cancel(reservation=lapsing)  # offered to Ada
    booking = held(booked_slot)
    reservations.reservation_pay(reservation=booking, payment_reference="PAY-1")

    response = client.get(f"/rooms/tomb/?date={timezone.localdate(free.starts_at)}")

    assert response.status_code == 200
    rows = slot_rows(response.content.decode())
    zone = timezone.localtime(hold.expires_at).tzname()
    assert rows[free.key] == (
        "available",
        "Available",
        f"Reserve 10:00 -> /rooms/tomb/{free.key}/reserve/",
    )
    assert rows[hold_slot.key] == (
        "held",
        f"Held — may be free at {local_hm(hold.expires_at)} ({zone})",
        f"Join the waiting list for 12:00 -> {wait_url(hold_slot)}",
    )
    assert rows[offer_slot.key] == (
        "offered",
        "Offered to the waiting list",
        f"Join the waiting list for 14:00 -> {wait_url(offer_slot)}",
    )
    assert rows[booked_slot.key] == (
        "booked",
        "Booked",
        f"Join the waiting list for 16:00 -> {wait_url(booked_slot)}",
    )


def test_a_lapsed_hold_that_parties_wait_for_shows_as_offered_before_any_job_runs(client, room):
    slot = slot_at(room, "18:00")
    hold = held(slot)
    ada = join(slot, "ada@example.com")
    Reservation.objects.filter(pk=hold.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = client.get(f"/rooms/tomb/?date={timezone.localdate(slot.starts_at)}")

    assert slot_rows(response.content.decode())[slot.key][:2] == (
        "offered",
        "Offered to the waiting list",
    )
    ada.refresh_from_db()
    assert ada.status == Entry.OFFERED  # the page's read handed it over


# ---------------------------------------------------------------------------
# The join form
# ---------------------------------------------------------------------------


def test_the_join_form_names_the_time_and_the_offers_length(client, room, settings):
    settings.WAITLIST_OFFER_SECONDS = 900
    slot = slot_at(room, "12:00")
    held(slot)

    response = client.get(wait_url(slot))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Join the waiting list" in html
    assert f"The Lost Tomb, {timezone.localtime(slot.starts_at):%A %-d %B %Y}, 12:00" in html
    assert "the time is yours for 15 min to pay" in html
    assert response.context["form"].initial["request_key"]


def test_joining_opens_the_partys_page_and_a_resubmitted_form_makes_one_entry(client, room):
    slot = slot_at(room, "12:00")
    held(slot)
    key = client.get(wait_url(slot)).context["form"].initial["request_key"]

    first = client.post(wait_url(slot), party(request_key=key))
    again = client.post(wait_url(slot), party(request_key=key))

    entry = WaitingEntry.objects.get()
    assert first.status_code == again.status_code == 302
    assert first["Location"] == again["Location"] == f"/waitlist/{entry.token}/"
    assert (entry.customer_name, entry.party_size, entry.status) == ("Ada Lovelace", 3, "waiting")
    assert Message.objects.filter(waiting_entry=entry, kind=Kind.WAITING).count() == 1


def test_the_join_form_shows_field_errors_and_refusals_and_writes_nothing(client, room, settings):
    settings.MAX_WAITING_PER_EMAIL = 2
    slot, other, third = slot_at(room, "12:00"), slot_at(room, "14:00"), slot_at(room, "16:00")
    held(slot), held(other), held(third)
    join(other, "bo@example.com"), join(third, "bo@example.com")

    too_many_players = client.post(wait_url(slot), party(party_size="9"))
    too_many_lists = client.post(wait_url(slot), party(customer_email="bo@example.com"))
    join(slot, "ada@example.com")
    twice = client.post(wait_url(slot), party(customer_email="ADA@example.com"))

    assert too_many_players.status_code == 400
    assert "This room takes 2 to 6 players." in too_many_players.content.decode()
    assert too_many_lists.status_code == 429
    assert "already waiting for as many time slots" in too_many_lists.content.decode()
    assert twice.status_code == 409
    assert "already on this time slot" in twice.content.decode()
    assert WaitingEntry.objects.count() == 3


def test_joining_a_time_that_went_free_sends_the_party_to_reserve_it(client, room):
    slot = slot_at(room, "12:00")
    hold = held(slot)
    key = client.get(wait_url(slot)).context["form"].initial["request_key"]
    reservations.reservation_cancel(reservation=hold)

    response = client.post(wait_url(slot), party(request_key=key), follow=True)

    assert response.redirect_chain[-1][0] == f"/rooms/tomb/{slot.key}/reserve/"
    assert "no one holds this time any more" in response.content.decode()
    assert not WaitingEntry.objects.exists()


def test_opening_the_join_form_of_a_free_time_sends_the_customer_to_reserve_it(client, room):
    slot = slot_at(room, "13:00")

    response = client.get(wait_url(slot), follow=True)

    assert response.redirect_chain[-1][0] == f"/rooms/tomb/{slot.key}/reserve/"
    assert "no one holds this time any more" in response.content.decode()


# ---------------------------------------------------------------------------
# The party's page
# ---------------------------------------------------------------------------


def test_the_waiting_page_shows_the_place_then_the_offer_to_pay(client, room):
    slot = slot_at(room, "12:00")
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")

    waiting = client.get(f"/waitlist/{bo.token}/").content.decode()
    reservations.reservation_cancel(reservation=hold)
    ada.refresh_from_db()
    offered = client.get(f"/waitlist/{ada.token}/").content.decode()
    behind = client.get(f"/waitlist/{bo.token}/").content.decode()

    assert "Number <strong>2</strong> on the list" in waiting
    leave_form = f'<form method="post" action="/waitlist/{bo.token}/leave/"'
    assert leave_form in waiting and "Leave the waiting list</button>" in waiting
    assert "The time is yours to book" in offered
    assert f'href="/reservations/{ada.offer.token}/">Pay for it</a>' in offered
    assert "Let the time go and leave the list</button>" in offered
    assert "Number <strong>1</strong> on the list" in behind


def test_the_offers_pay_for_it_link_opens_the_offer_to_pay(client, room):
    slot = slot_at(room, "12:00")
    hold = held(slot)
    ada = join(slot, "ada@example.com")
    reservations.reservation_cancel(reservation=hold)
    ada.refresh_from_db()

    page = client.get(f"/reservations/{ada.offer.token}/")
    paid = client.post(f"/reservations/{ada.offer.token}/pay/", follow=True)

    assert page.status_code == 200
    assert page.context["status"] == "pending" and page.context["reservation"].is_offer
    assert paid.status_code == 200
    ada.refresh_from_db()
    assert ada.status == Entry.BOOKED
    booked = client.get(f"/waitlist/{ada.token}/").content.decode()
    assert "You're booked!" in booked and "/leave/" not in booked


def test_leaving_from_the_page_takes_the_party_off_and_passes_its_offer_on(client, room):
    slot = slot_at(room, "12:00")
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    reservations.reservation_cancel(reservation=hold)

    response = client.post(f"/waitlist/{ada.token}/leave/", follow=True)

    assert response.redirect_chain[-1][0] == f"/waitlist/{ada.token}/"
    html = response.content.decode()
    assert "You have left the waiting list." in html
    assert "You left the waiting list" in html and "/leave/" not in html
    ada.refresh_from_db(), bo.refresh_from_db()
    assert (ada.status, ada.offer.status, bo.status) == (Entry.LEFT, "cancelled", Entry.OFFERED)


def test_leaving_a_place_that_ended_says_why(client, room):
    slot = slot_at(room, "12:00")
    hold = held(slot)
    ada = join(slot, "ada@example.com")
    reservations.reservation_cancel(reservation=hold)
    ada.refresh_from_db()
    reservations.reservation_pay(reservation=ada.offer, payment_reference="PAY-ADA")

    response = client.post(f"/waitlist/{ada.token}/leave/", follow=True)

    assert "This place on the waiting list has ended" in response.content.decode()
    ada.refresh_from_db()
    assert ada.status == Entry.BOOKED


def test_a_lapsed_offer_reads_as_ended_on_the_page_before_any_job_runs(client, room):
    slot = slot_at(room, "12:00")
    hold = held(slot)
    ada = join(slot, "ada@example.com")
    reservations.reservation_cancel(reservation=hold)
    Reservation.objects.filter(is_offer=True).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    html = client.get(f"/waitlist/{ada.token}/").content.decode()

    assert "Your offer has ended" in html
    assert "Pay for it" not in html and "/leave/" not in html


def test_unknown_waiting_tokens_are_404(client):
    assert client.get("/waitlist/not-a-token/").status_code == 404
    assert client.post("/waitlist/00000000-0000-0000-0000-000000000000/leave/").status_code == 404


# ---------------------------------------------------------------------------
# The messages, and where their links lead
# ---------------------------------------------------------------------------


def message_of(kind, **lookup) -> Message:
    return Message.objects.get(kind=kind, **lookup)


def links(body: str) -> list[str]:
    """The site's paths linked from a plain-text body, in order."""
    site = django_settings.SITE_URL.rstrip("/")
    return [
        urlsplit(url).path + (f"?{urlsplit(url).query}" if urlsplit(url).query else "")
        for url in re.findall(re.escape(site) + r"/\S*", body)
    ]


def subject(kind, slot, **extra) -> str:
    return compose.SUBJECTS[kind].format(
        room=slot.room.name, when=compose.when(slot.starts_at), **extra
    )


def test_the_waiting_message_arrives_and_its_link_opens_the_page_whose_button_leaves(
    client, room, mail_server
):
    slot = slot_at(room, "12:00")
    held(slot)
    join(slot, "bo@example.com")
    ada = join(slot, "ada@example.com")

    services.messages_deliver()

    [received] = mail_server.to("ada@example.com")
    assert received["Subject"] == subject(Kind.WAITING, slot)
    body = received.get_body(("plain",)).get_content()
    assert "number 2" in body
    assert "the time is yours for 15 minutes to pay for it" in " ".join(body.split())
    [page_path] = links(body)
    assert page_path == f"/waitlist/{ada.token}/"
    page = client.get(page_path).content.decode()
    assert "Number <strong>2</strong> on the list" in page
    leave = re.search(r'<form method="post" action="([^"]+)"', page).group(1)
    client.post(leave)
    ada.refresh_from_db()
    assert ada.status == Entry.LEFT


def test_the_offer_message_names_its_end_and_links_the_offer_to_pay(client, room):
    slot = slot_at(room, "12:00")
    hold = held(slot)
    ada = join(slot, "ada@example.com")
    reservations.reservation_cancel(reservation=hold)
    ada.refresh_from_db()
    offer = ada.offer

    email = compose.message_email(message_of(Kind.OFFER, reservation=offer))

    assert email.to == ["ada@example.com"]
    assert email.subject == subject(Kind.OFFER, slot, ends=compose.clock(offer.expires_at))
    assert f"it is yours until {compose.when(offer.expires_at)}" in email.body
    assert links(email.body) == [f"/reservations/{offer.token}/"]
    page = client.get(links(email.body)[0])
    assert page.context["reservation"] == offer and page.context["status"] == "pending"


def test_the_slot_booked_message_keeps_the_party_on_the_list_and_links_its_place(client, room):
    slot = slot_at(room, "12:00")
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    reservations.reservation_cancel(reservation=hold)
    ada.refresh_from_db()
    reservations.reservation_pay(reservation=ada.offer, payment_reference="PAY-ADA")

    email = compose.message_email(message_of(Kind.SLOT_BOOKED, waiting_entry=bo))

    assert email.to == ["bo@example.com"]
    assert email.subject == subject(Kind.SLOT_BOOKED, slot)
    assert "You stay on the waiting list, number 1" in email.body
    assert links(email.body) == [f"/waitlist/{bo.token}/"]
    assert (
        "Number <strong>1</strong> on the list" in client.get(links(email.body)[0]).content.decode()
    )


def test_the_slot_free_message_links_the_time_to_reserve(client, room, settings):
    settings.WAITLIST_OFFER_SECONDS = 900
    slot = TimeSlotFactory(
        room=room, starts_at=(timezone.now() + timedelta(minutes=10)).replace(microsecond=0)
    )
    hold = reserve(slot, customer_email="holder@example.com", hold_seconds=60)
    ada = join(slot, "ada@example.com")
    reservations.reservation_cancel(reservation=hold)  # too close to the game for an offer

    email = compose.message_email(message_of(Kind.SLOT_FREE, waiting_entry=ada))

    assert email.subject == subject(Kind.SLOT_FREE, slot)
    assert links(email.body) == [f"/rooms/tomb/{slot.key}/reserve/"]
    page = client.get(links(email.body)[0])
    assert page.status_code == 200 and page.context["slot"] == slot  # the form to reserve it
    ada.refresh_from_db()
    assert ada.status == Entry.CLOSED


def test_the_lapsed_offer_message_says_the_offer_ended_and_where_to_look_next(client, room):
    slot = slot_at(room, "12:00")
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    reservations.reservation_cancel(reservation=hold)
    ada.refresh_from_db()
    offer = ada.offer
    reservations.lapsed_holds_release(
        cause=ReservationEvent.Cause.EXPIRY_JOB, now=offer.expires_at + timedelta(seconds=1)
    )
    bo.refresh_from_db()
    assert bo.status == Entry.OFFERED

    email = compose.message_email(
        message_of(Kind.HOLD_LAPSED, reservation=offer), now=offer.expires_at
    )

    assert email.subject == compose.OFFER_LAPSED_SUBJECT.format(
        room=room.name, when=compose.when(slot.starts_at)
    )
    assert "your offer from the waiting list ended at" in email.body
    assert "your place on the list has ended" in email.body
    [room_page] = links(email.body)  # the time went to the next party: other times
    assert room_page == f"/rooms/tomb/?date={timezone.localdate(slot.starts_at)}"
    assert client.get(room_page).status_code == 200


def test_a_holder_who_lets_the_time_go_is_told_it_went_to_the_waiting_list(client, room):
    slot = slot_at(room, "19:00", days=3)
    hold = held(slot)
    join(slot, "dave@example.com")
    lone = held(slot_at(room, "21:00", days=3))  # no one waits for this one

    client.post(f"/reservations/{hold.token}/cancel/")
    client.post(f"/reservations/{lone.token}/cancel/")

    page = client.get(f"/reservations/{hold.token}/").content.decode()
    alone = client.get(f"/reservations/{lone.token}/").content.decode()
    assert "The time went to the next party on its waiting list." in page
    assert "The slot is free for others." in alone
