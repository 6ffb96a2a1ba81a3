"""
Attacks on the waiting list's guarantees.

Each test states the guarantee it attacks and how: a hostile or unlucky
customer, a careless staff member, a crashing worker, a racing second
runner. It then checks what a customer or staff would see: who holds the
slot, each party's place and offer, the messages queued, what every read
path says. ``lists_hold`` checks the invariants that every test ends with.

The races run real threads on the test database (both SQLite and
PostgreSQL); the crashes kill real ``manage.py start_scheduler`` workers.
Every wait polls with a deadline.
"""

import signal
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.messaging import compose
from apps.messaging.models import Message
from apps.payments.models import Payment, ProviderPayment
from apps.payments.services import (
    booking_cancel_and_refund,
    payment_confirm_price,
    payment_settle,
    payment_start,
)
from apps.reservations import errors, offers, waitlist
from apps.reservations import services as reservations
from apps.reservations.models import Reservation, ReservationEvent, WaitingEntry
from apps.rooms.models import Room, TimeSlot
from escape_rooms_backend import scheduler as scheduler_module

from ..conftest import reconcile_command, run_together, wait_for
from ..factories import RoomFactory, TimeSlotFactory, reserve

Entry = WaitingEntry.Status
Kind = Message.Kind
POSTGRES = django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
PENDING, PAID, CANCELLED = (
    Reservation.Status.PENDING,
    Reservation.Status.PAID,
    Reservation.Status.CANCELLED,
)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def join(slot, email, **overrides) -> WaitingEntry:
    fields = {"customer_name": email.split("@")[0].title(), "party_size": 3}
    return waitlist.waiting_join(
        time_slot_id=slot.pk, customer_email=email, **{**fields, **overrides}
    )


def tomorrow_slot() -> TimeSlot:
    """A slot tomorrow: within the days the room page shows, however many slots came before."""
    return TimeSlotFactory(starts_at=(timezone.now() + timedelta(days=1)).replace(microsecond=0))


def held(slot, email="holder@example.com", **overrides) -> Reservation:
    return reserve(slot, customer_email=email, **overrides)


def let_lapse(*holds: Reservation) -> None:
    """The holds' ends pass with no job run: only the timestamp says they lapsed."""
    Reservation.objects.filter(pk__in=[h.pk for h in holds]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    for hold in holds:
        hold.refresh_from_db()


def expiry_job(now=None) -> list:
    """What the hold's-end job does when it runs: release every lapsed hold."""
    return reservations.lapsed_holds_release(cause=ReservationEvent.Cause.EXPIRY_JOB, now=now)


def ran(action):
    """``action`` for ``run_together``: "ran" when it returned, its code when refused."""

    def run():
        action()
        return "ran"

    return run


def fresh(entry: WaitingEntry) -> WaitingEntry:
    return WaitingEntry.objects.select_related("offer").get(pk=entry.pk)


def available(slot, now=None) -> bool:
    return TimeSlot.objects.with_availability(now or timezone.now()).get(pk=slot.pk).available


def api_slot_available(client: Client, slot) -> bool:
    day = timezone.localdate(slot.starts_at).isoformat()
    slots = client.get(f"/api/rooms/{slot.room.slug}/slots/?date={day}").json()
    return next(s["available"] for s in slots if s["id"] == slot.pk)


def api_post(client: Client, path: str, body=None, **extra):
    return client.post(f"/api{path}", body or {}, content_type="application/json", **extra)


def body_of(slot, email="eve@example.com", **overrides) -> dict:
    return {
        "slot_id": slot.pk,
        "customer_name": email.split("@")[0].title(),
        "customer_email": email,
        "party_size": 3,
        **overrides,
    }


def error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def counts() -> tuple[int, ...]:
    """Rows of every table a waiting-list change writes to."""
    return (
        Reservation.objects.count(),
        ReservationEvent.objects.count(),
        WaitingEntry.objects.count(),
        Message.objects.count(),
        TimeSlot.objects.filter(status=TimeSlot.Status.RESERVED).count(),
    )


def lists_hold() -> None:
    """
    The waiting lists' invariants, read back from the database.

    An entry is in one state, and its offer agrees: waiting with no offer,
    offered with a pending offer of its slot for its party, booked with a
    paid one (or one staff cancelled after), lapsed with an expired one. A
    pending offer belongs to an offered entry. No party holds two pending
    offers at overlapping times. Each offer queued its message once.
    """
    by_offer = {}
    for entry in WaitingEntry.objects.select_related("offer"):
        offer = entry.offer
        where = f"entry {entry.pk} ({entry.status})"
        if offer is not None:
            by_offer[offer.pk] = entry
        if entry.status == Entry.WAITING:
            assert offer is None, where
        elif entry.status == Entry.OFFERED:
            assert offer is not None and offer.status == PENDING and offer.is_offer, where
            assert offer.time_slot_id == entry.time_slot_id, where
            assert offer.customer_email == entry.customer_email, where
        elif entry.status == Entry.BOOKED:
            assert offer.status == PAID or offer.cancellation_reason == "staff", where
        elif entry.status == Entry.LAPSED:
            assert (offer.status, offer.cancellation_reason) == (CANCELLED, "expired"), where
        elif offer is not None:  # left (with its offer let go) or closed
            assert offer.status == CANCELLED, where
    games: dict[str, list[tuple[datetime, datetime]]] = {}
    for offer in Reservation.objects.filter(is_offer=True).select_related("time_slot"):
        assert offer.pk in by_offer, f"offer {offer.pk} has no place on a list"
        if offer.status != PENDING:
            continue
        assert by_offer[offer.pk].status == Entry.OFFERED, offer
        slot = offer.time_slot
        mine = games.setdefault(offer.customer_email.lower(), [])
        assert not any(s < slot.ends_at and slot.starts_at < e for s, e in mine), (
            f"{offer.customer_email} holds two offers at once"
        )
        mine.append((slot.starts_at, slot.ends_at))
    told = Counter(Message.objects.filter(kind=Kind.OFFER).values_list("reservation_id", flat=True))
    assert told == Counter(set(by_offer)), "an offer told twice, or not at all"


# ---------------------------------------------------------------------------
# A lapsed hold that parties wait for is never won by the public
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_public_way_into_a_lapsed_hold_that_parties_wait_for_is_shut(client):
    """
    Guarantee: a hold that lapsed while parties wait goes to the first of
    them; until the offer is made the slot reads as not available everywhere,
    and no one else can take it.

    Attack: Eve watches a held slot with two parties waiting. The hold
    lapses and no job runs. She reads the API's slot list, opens the reserve
    form, posts it, posts the API, and — once the first party's offer has
    lapsed too, still with no job — reads the list, the form and the room
    page, and posts both again.
    """
    slot = tomorrow_slot()
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    let_lapse(hold)
    reserve_url = f"/rooms/{slot.room.slug}/{slot.key}/reserve/"
    form = {
        "customer_name": "Eve",
        "customer_email": "eve@example.com",
        "party_size": "3",
        "request_key": "",
    }

    assert api_slot_available(client, slot) is False
    assert not available(slot)
    assert client.get(reserve_url).status_code == 302  # "taken", no form
    assert client.post(reserve_url, form).status_code == 302  # the reclaim hands it over
    assert fresh(ada).status == Entry.OFFERED
    assert error(api_post(client, "/reservations/", body_of(slot))) == (409, "slot_taken")

    let_lapse(fresh(ada).offer)
    assert api_slot_available(client, slot) is False
    assert client.get(reserve_url).status_code == 302
    room_page = client.get(f"/rooms/{slot.room.slug}/?date={timezone.localdate(slot.starts_at)}")
    assert f'<tr class="slot offered" data-slot="{slot.key}">' in room_page.content.decode()
    assert fresh(bo).status == Entry.OFFERED  # the page's read handed it over
    assert error(api_post(client, "/reservations/", body_of(slot))) == (409, "slot_taken")
    assert client.post(reserve_url, form).status_code == 302
    assert not Reservation.objects.filter(customer_email="eve@example.com").exists()
    lists_hold()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["api", "page", "staff", "provider_hold"])
def test_the_holders_late_payment_never_takes_a_lapsed_hold_from_the_list(client, path):
    """
    Guarantee: a hold that lapsed while parties wait is theirs, not its
    holder's: a late payment is refused (a refund is due) and the slot
    reads as not available.

    Attack: the holder pays a moment after the hold's end, before any job
    ran, through each way money reaches a reservation: the API's pay, the
    page's Pay button (checkout, then the payment), staff's mark paid, and
    the provider's hold for an authorised payment
    (``reservation_hold_for_payment``).
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    ada = join(slot, "ada@example.com")
    let_lapse(hold)

    if path == "api":
        response = api_post(client, f"/reservations/{hold.token}/pay/", {"payment_reference": "L"})
        assert error(response) == (409, "hold_expired")
    elif path == "page":
        assert client.post(f"/reservations/{hold.token}/pay/").status_code == 302
    elif path == "staff":
        with pytest.raises(errors.HoldExpired):
            payment_confirm_price(reservation=hold, reference="DESK-1", source="staff")
    else:
        before = counts()
        with pytest.raises(errors.SlotTaken):
            reservations.reservation_hold_for_payment(
                reservation=hold,
                until=timezone.now() + timedelta(minutes=5),
                detail="Payment authorised: slot kept for the capture",
            )
        assert counts() == before, "a refused hold for payment wrote something"

    hold.refresh_from_db()
    assert hold.status != PAID
    assert not available(slot)
    expiry_job()
    assert fresh(ada).status == Entry.OFFERED
    if path != "provider_hold":
        payment = Payment.objects.get()
        assert (payment.outcome, payment.reason) == ("refund_due", "slot_taken")
    lists_hold()


@pytest.fixture
def stripe_provider(localstripe, settings):
    settings.PAYMENT_PROVIDER = "stripe"
    settings.STRIPE_SECRET_KEY = "sk_test_local"
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_local"
    settings.STRIPE_API_BASE = localstripe.api_base
    settings.STRIPE_TIMEOUT_SECONDS = 3
    return localstripe


@pytest.mark.django_db
def test_a_card_authorised_after_the_hold_lapsed_is_voided_when_parties_wait(stripe_provider):
    """
    Guarantee: the provider's path is no back door: money authorised for a
    hold that lapsed while parties wait is never captured for it.

    Attack: the holder starts paying by card, dawdles past the hold's end
    (no job ran), then the card is authorised and the payment settled.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    row = payment_start(reservation=hold)
    ada = join(slot, "ada@example.com")
    let_lapse(hold)
    stripe_provider.authorise(row.provider_id)

    row = payment_settle(row)

    assert (row.outcome, row.reason) == (
        ProviderPayment.Outcome.VOIDED,
        ProviderPayment.Reason.SLOT_TAKEN,
    )
    hold.refresh_from_db()
    assert hold.status != PAID
    expiry_job()
    assert fresh(ada).status == Entry.OFFERED
    lists_hold()


@pytest.mark.django_db(transaction=True)
def test_customers_racing_the_expiry_job_for_a_listed_slot_never_win_it():
    """
    Guarantee: between a hold's end and its hand-over no one else books the
    slot, whoever runs first.

    Attack: at the hold's end, three customers reserve, the expiry job runs,
    and a room page read hands over lazily, all at the same moment; three
    rounds.
    """
    for round_ in range(3):
        slot = TimeSlotFactory()
        hold = held(slot)
        ada = join(slot, f"ada{round_}@example.com")
        let_lapse(hold)

        def customer(n, slot=slot):
            return lambda: reserve(slot, customer_email=f"eve{n}@example.com") and "reserved"

        outcome = run_together(
            customer(1),
            ran(expiry_job),
            customer(2),
            ran(lambda slot=slot: waitlist.waiting_lists_refresh([slot.pk])),
            customer(3),
        )

        assert outcome["slot_taken"] == 3, outcome
        assert fresh(ada).status == Entry.OFFERED
    lists_hold()


@pytest.mark.django_db
def test_a_lapsed_hold_message_never_calls_free_a_time_the_list_is_about_to_get():
    """
    Guarantee: the messages' wording follows the slot's reads: a time that
    parties wait for is never "still free" to its old holder while a lapsed
    hold on it is theirs.

    Attack: the holder's "Hold ended" message is delivered late (the mail
    server was slow), after the first party's offer lapsed too, before that
    offer's job ran; a second party waits for it.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    ada, _ = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    expiry_job(now=hold.expires_at + timedelta(milliseconds=1))
    offer = fresh(ada).offer
    lapsed = Message.objects.get(reservation=hold, kind=Kind.HOLD_LAPSED)

    body = compose.message_email(lapsed, offer.expires_at + timedelta(seconds=1)).body

    assert not available(slot, offer.expires_at + timedelta(seconds=1))
    assert "still free" not in body
    assert "gone to the next party on the waiting list" in body


# ---------------------------------------------------------------------------
# One slot, one offer; one party, one offer at a time
# ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_one_party_waiting_for_two_games_at_once_is_never_offered_both_by_two_runners():
    """
    Guarantee: no party gets two offers at overlapping times.

    Attack: Pat waits for two rooms at the same hour. Both holds lapse; two
    hand-overs run at the same moment in two transactions (the expiry job
    for one room, and a room page read or a reclaim for the other): the
    second starts while the first is still open.
    """
    x = TimeSlotFactory()
    y = TimeSlotFactory(starts_at=x.starts_at, room=RoomFactory())
    hx, hy = held(x, "hx@example.com"), held(y, "hy@example.com")
    join(x, "pat@example.com"), join(y, "PAT@example.com")
    bo = join(y, "bo@example.com")
    let_lapse(hx, hy)
    first_open, first_may_commit = threading.Event(), threading.Event()

    def first():
        try:
            with transaction.atomic():
                reservations.lapsed_holds_expire(reservation_ids=[hx.pk])
                first_open.set()
                first_may_commit.wait(5)
        finally:
            connection.close()

    def second():
        try:
            waitlist.waiting_lists_refresh([y.pk])
        finally:
            connection.close()

    one = threading.Thread(target=first)
    one.start()
    assert first_open.wait(5)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.5)  # SQLite: waits for the first's write lock; PostgreSQL: may run through
    first_may_commit.set()
    one.join(10), two.join(10)

    pat = Reservation.objects.filter(customer_email__iexact="pat@example.com", status=PENDING)
    assert pat.count() == 1, "Pat holds two offers at once"
    assert fresh(bo).status == Entry.OFFERED  # the second room goes to the next party
    lists_hold()


@pytest.mark.django_db(transaction=True)
def test_every_way_a_lapsed_slot_is_handed_over_racing_makes_one_offer_and_one_of_each_message():
    """
    Guarantee: no slot is offered to two parties, no entry is both waiting
    and offered, no message is queued twice.

    Attack: at a lapsed hold, two expiry runs (a job and the sweep), the
    lazy read of a waiting page, a new party joining and a public reserve
    all race.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    let_lapse(hold)

    outcome = run_together(
        ran(expiry_job),
        ran(lambda: reservations.lapsed_holds_release(cause=ReservationEvent.Cause.SWEEP)),
        ran(lambda: waitlist.waiting_lists_refresh([slot.pk])),
        lambda: join(slot, "cy@example.com") and "joined",
        lambda: reserve(slot, customer_email="eve@example.com") and "reserved",
    )

    assert outcome["joined"] == 1 and outcome["slot_taken"] == 1, outcome
    assert Reservation.objects.filter(time_slot=slot, status=PENDING).count() == 1
    assert fresh(ada).status == Entry.OFFERED and fresh(bo).status == Entry.WAITING
    assert WaitingEntry.objects.get(customer_email="cy@example.com").status == Entry.WAITING
    hold.refresh_from_db()
    assert [e.to_status for e in hold.events.all()] == [PENDING, CANCELLED]
    kinds = Counter(Message.objects.values_list("kind", flat=True))
    assert (kinds[Kind.OFFER], kinds[Kind.HOLD_LAPSED], kinds[Kind.WAITING]) == (1, 1, 3), kinds
    lists_hold()


@pytest.mark.django_db(transaction=True)
def test_a_party_leaving_while_its_offer_is_paid_or_lapses_ends_with_one_story():
    """
    Guarantee: no offer survives its party leaving; a paid offer is not
    undone by a leave.

    Attack: the offered party presses "Let the time go" while its payment
    arrives (round 1), and while its offer's job runs at its end (round 2).
    """
    # Round 1: leave and pay at once.
    slot = TimeSlotFactory()
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    reservations.reservation_cancel(reservation=hold)
    offer = fresh(ada).offer

    outcome = run_together(
        lambda: waitlist.waiting_leave(entry=fresh(ada)) and "left",
        lambda: (
            reservations.reservation_pay(
                reservation=Reservation.objects.get(pk=offer.pk), payment_reference="PAY-ADA"
            )
            and "paid"
        ),
    )

    offer.refresh_from_db()
    if outcome["left"]:
        assert outcome["already_cancelled"] == 1, outcome
        assert (fresh(ada).status, offer.status) == (Entry.LEFT, CANCELLED)
        assert fresh(bo).status == Entry.OFFERED
    else:
        assert outcome == Counter({"paid": 1, "not_waiting": 1}), outcome
        assert (fresh(ada).status, offer.status) == (Entry.BOOKED, PAID)
        assert fresh(bo).status == Entry.WAITING

    # Round 2: leave as the offer's job runs at its end.
    slot = TimeSlotFactory()
    hold = held(slot)
    cy, dee = join(slot, "cy@example.com"), join(slot, "dee@example.com")
    reservations.reservation_cancel(reservation=hold)
    let_lapse(fresh(cy).offer)

    run_together(lambda: waitlist.waiting_leave(entry=fresh(cy)) and "left", ran(expiry_job))

    assert fresh(cy).status in (Entry.LAPSED, Entry.LEFT)
    assert fresh(cy).offer.status == CANCELLED
    assert fresh(dee).status == Entry.OFFERED
    lists_hold()


@pytest.mark.django_db
def test_a_lapsed_offer_paid_late_on_a_free_slot_books_its_partys_place(client):
    """
    Guarantee: no entry tells a story its offer contradicts: a party whose
    offer is paid is booked, everywhere it looks.

    Attack: Ada's offer lapses and its job runs; no one else waits, so the
    slot is free. Ada's card payment arrives late and is applied (the slot
    was still free): she has a booking. Her waiting page and the API.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    ada = join(slot, "ada@example.com")
    expiry_job(now=hold.expires_at + timedelta(milliseconds=1))
    offer = fresh(ada).offer
    let_lapse(offer)
    expiry_job()
    assert fresh(ada).status == Entry.LAPSED

    response = api_post(client, f"/reservations/{offer.token}/pay/", {"payment_reference": "L"})

    assert response.status_code == 200 and response.json()["status"] == "paid"
    assert client.get(f"/api/waitlist/{ada.token}/").json()["status"] == "booked"
    assert "You're booked!" in client.get(f"/waitlist/{ada.token}/").content.decode()
    lists_hold()


# ---------------------------------------------------------------------------
# Joins: racing the hand-over, limits, bad input, refusals
# ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_join_racing_the_hand_over_waits_or_is_offered_never_both():
    """
    Guarantee: a join racing the hand-over of its slot ends with the
    newcomer waiting behind the parties already there, never with an offer
    and a place at once, and never ahead of them.

    Attack: at the hold's end the newcomer joins exactly as the expiry job
    runs; five rounds.
    """
    for round_ in range(5):
        slot = TimeSlotFactory()
        hold = held(slot)
        ada = join(slot, f"ada{round_}@example.com")
        let_lapse(hold)
        newcomer = f"new{round_}@example.com"

        outcome = run_together(lambda s=slot, e=newcomer: join(s, e) and "joined", ran(expiry_job))

        assert outcome["joined"] == 1, outcome
        assert fresh(ada).status == Entry.OFFERED
        assert WaitingEntry.objects.get(customer_email=newcomer).status == Entry.WAITING
    lists_hold()


@pytest.mark.django_db(transaction=True)
def test_the_limits_on_places_hold_under_concurrent_joins(settings):
    """
    Guarantee: ``MAX_WAITING_PER_EMAIL`` live places per email address and
    ``MAX_PENDING_HOLDS_PER_ADDRESS`` per client address hold however the
    joins interleave.

    Attack: one address joins six held slots' lists at once (the limit is
    two); then six addresses from one network join six more at once (the
    limit is three).
    """
    settings.MAX_WAITING_PER_EMAIL = 2
    slots = [TimeSlotFactory() for _ in range(12)]
    for slot in slots:
        held(slot)
    settings.MAX_PENDING_HOLDS_PER_ADDRESS = 3

    by_email = run_together(
        *(lambda s=slot: join(s, "hoarder@example.com") and "joined" for slot in slots[:6])
    )
    by_address = run_together(
        *(
            lambda s=slot, n=n: (
                join(s, f"n{n}@example.com", client_address="203.0.113.9") and "joined"
            )
            for n, slot in enumerate(slots[6:])
        )
    )

    assert by_email == Counter({"joined": 2, "too_many_waiting": 4}), by_email
    assert by_address == Counter({"joined": 3, "too_many_waiting": 3}), by_address
    assert WaitingEntry.objects.count() == 5
    assert Message.objects.filter(kind=Kind.WAITING).count() == 5


HOSTILE_BODIES = [
    ({"slot_id": "1"}, "slot_id"),
    ({"slot_id": True}, "slot_id"),
    ({"slot_id": 1.0}, "slot_id"),
    ({"slot_id": -1}, "slot_id"),
    ({"party_size": 3.5}, "party_size"),
    ({"party_size": True}, "party_size"),
    ({"party_size": 10**6}, "party_size"),
    ({"customer_email": "ada@example.com\r\nBcc: all@example.com"}, "customer_email"),
    ({"customer_email": ["ada@example.com"]}, "customer_email"),
    ({"customer_name": "Ada\x00"}, "customer_name"),
    ({"customer_name": "   "}, "customer_name"),
    ({"customer_name": "x" * 101}, "customer_name"),
    ({"customer_phone": "+49\n30"}, "customer_phone"),
    ({"status": "offered"}, "status"),
    ({"offer": str(uuid.uuid4())}, "offer"),
    ({"place": 1}, "place"),
    ({"token": str(uuid.uuid4())}, "token"),
]


@pytest.mark.django_db
def test_hostile_joins_are_400_with_field_errors_and_write_nothing(client):
    """
    Guarantee: bad input is a 400 naming the field, and writes nothing.

    Attack: the join API with strings for numbers, booleans, floats, huge
    and negative ids, header injection in the email, NUL and blank names,
    a line break in the phone, and fields that try to set the state
    (status, offer, place, token); then bodies that are not a JSON object.
    """
    slot = TimeSlotFactory()
    held(slot)
    before = counts()

    for change, field in HOSTILE_BODIES:
        response = api_post(client, "/waitlist/", {**body_of(slot), **change})
        assert error(response) == (400, "invalid"), (change, response.content)
        assert field in response.json()["error"]["fields"], (change, response.json())
    for raw in ("[]", "null", '"ada"', "{", ""):
        response = client.post("/api/waitlist/", raw, content_type="application/json")
        assert response.status_code == 400, (raw, response.content)
    form = client.post("/api/waitlist/", body_of(slot))  # form-encoded, not JSON
    assert form.status_code in (400, 415), form.content
    huge = api_post(client, "/waitlist/", body_of(slot, slot_id=2**63))  # past every id
    assert error(huge) == (404, "slot_not_found")

    assert counts() == before


@pytest.mark.django_db
def test_every_malformed_or_unknown_waiting_token_is_404_everywhere(client):
    """
    Guarantee: unknown tokens and malformed ones are 404, on the API and the
    pages, and a 404 changes nothing (the lazy hand-over is not run for a
    token that names no place).

    Attack: the token's non-canonical spellings (braces, URN, no dashes,
    surrounding space), near misses, numbers, path tricks, a reservation's
    token used as a place's, and a very long one.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    entry = join(slot, "ada@example.com")
    let_lapse(hold)
    known = str(entry.token)
    tokens = [
        f"{{{known}}}",
        f"urn:uuid:{known}",
        known.replace("-", ""),
        f" {known}",
        f"{known} ",
        known[:-1] + ("0" if known[-1] != "0" else "1"),
        known[:-1],
        "0",
        "-1",
        "null",
        "..",
        "%00",
        str(hold.token),
        "a" * 4000,
    ]
    before = counts()

    for token in tokens:
        for response in (
            client.get(f"/api/waitlist/{token}/"),
            api_post(client, f"/waitlist/{token}/leave/"),
            client.get(f"/waitlist/{token}/"),
            client.post(f"/waitlist/{token}/leave/"),
        ):
            assert response.status_code == 404, (token, response.request["PATH_INFO"])

    assert counts() == before
    assert fresh(entry).status == Entry.WAITING
    # The canonical token in capitals names the same place.
    assert client.get(f"/api/waitlist/{known.upper()}/").status_code == 200


@pytest.mark.django_db
def test_each_refused_join_is_409_with_its_code_and_writes_nothing(client):
    """
    Guarantee: a refused join answers 409 with the code that says why, and
    writes nothing, not even the hand-over it may have started.

    Attack: join a slot no one holds, one whose hold lapsed with no one
    waiting (its expiry is started, then refused), the same list again in
    another case while the hold lapsed (the hand-over is started, then the
    join refused), a started slot and a closed room's slot.
    """
    free = TimeSlotFactory()
    lapsed_alone = TimeSlotFactory()
    let_lapse(held(lapsed_alone))
    listed = TimeSlotFactory()
    listed_hold = held(listed)
    ada = join(listed, "ada@example.com")
    let_lapse(listed_hold)
    started = TimeSlotFactory(starts_at=timezone.now() - timedelta(minutes=5))
    closed = TimeSlotFactory()
    held(closed)
    closed.room.is_active = False
    closed.room.save()
    before = counts()

    assert error(api_post(client, "/waitlist/", body_of(free))) == (409, "slot_available")
    assert error(api_post(client, "/waitlist/", body_of(lapsed_alone))) == (409, "slot_available")
    again = body_of(listed, "ADA@example.com")
    assert error(api_post(client, "/waitlist/", again)) == (409, "already_waiting")
    assert error(api_post(client, "/waitlist/", body_of(started))) == (409, "slot_unavailable")
    assert error(api_post(client, "/waitlist/", body_of(closed))) == (409, "slot_unavailable")

    assert counts() == before
    assert fresh(ada).status == Entry.WAITING  # still, until a job or a read hands over


# ---------------------------------------------------------------------------
# Crashes and restarts
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_hand_over_that_fails_half_way_leaves_nothing_and_the_next_run_makes_it(monkeypatch):
    """
    Guarantee: the hand-over is in the expiry's transaction: a failure at
    any point leaves the hold as it was (lapsed, not expired), no offer,
    the party waiting, no message, and the next run makes the offer once.

    Attack: the expiry job runs; its hand-over fails after the offer's
    reservation, the entry's update and its events were written (queueing
    the offer's message raises), in the bulk pass and in its one-by-one
    fallback alike. Then the fault clears and the sweep runs.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    ada = join(slot, "ada@example.com")
    let_lapse(hold)
    before = counts()
    from apps.messaging import receivers

    queue = receivers.services.messages_enqueue_for_states

    def crash_on_offers(reservations_, **kwargs):
        if any(r.status == PENDING for r in reservations_):
            raise RuntimeError("the disk filled up")
        return queue(reservations_, **kwargs)

    monkeypatch.setattr(receivers.services, "messages_enqueue_for_states", crash_on_offers)

    assert expiry_job() == []

    assert counts() == before
    hold.refresh_from_db()
    assert (hold.status, hold.events.count()) == (PENDING, 1)
    assert fresh(ada).status == Entry.WAITING
    assert not available(slot)

    monkeypatch.undo()
    released = reservations.lapsed_holds_release(cause=ReservationEvent.Cause.SWEEP)

    assert [h.reservation_id for h in released] == [hold.pk]
    assert fresh(ada).status == Entry.OFFERED
    lists_hold()


def _blocked_on_the_entry() -> bool:
    """PostgreSQL: a backend of another process waits for a row lock on the waiting entries."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE %s AND pid <> pg_backend_pid()",
            ['%UPDATE "reservations_waitingentry"%'],
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_hand_over_leaves_nothing_and_the_next_worker_offers_once(
    start_worker,
):
    """
    Guarantee: a worker that dies in the middle of a hand-over leaves
    nothing half done: the hold is not expired without its offer, no offer
    exists without its entry's update, and the next worker makes the offer
    once, with one message.

    Attack: a worker runs; a hold with a party waiting lapses. While its
    expiry job is inside the hand-over (on PostgreSQL: the hold expired, the
    offer inserted, its update of the party's entry waiting for a row lock
    the test holds; on SQLite: waiting for the database's write lock the
    test holds), the worker is killed with SIGKILL. The lock is let go; a
    new worker starts.
    """
    env = {"SCHEDULER_LOCK_TIMEOUT": "30", "SCHEDULER_SWEEP_SECONDS": "600"}
    worker = start_worker(**env)
    slot = TimeSlotFactory()
    hold = held(slot, hold_seconds=1.5)
    ada = join(slot, "ada@example.com")
    locked, let_go = threading.Event(), threading.Event()

    def hold_the_lock():
        try:
            with transaction.atomic():
                WaitingEntry.objects.select_for_update().filter(pk=ada.pk).exists()
                locked.set()
                let_go.wait(20)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert locked.wait(5)
        if connection.vendor == "postgresql":
            assert wait_for(_blocked_on_the_entry, timeout=10), worker.log()
        else:
            time.sleep(max(0.0, (hold.expires_at - timezone.now()).total_seconds()) + 0.8)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        let_go.set()
        holder.join(10)
    if connection.vendor == "postgresql":  # the dead worker's backend rolls back and ends
        assert wait_for(lambda: not _blocked_on_the_entry(), timeout=10)
        time.sleep(0.3)

    hold.refresh_from_db()
    assert (hold.status, hold.events.count()) == (PENDING, 1)
    assert not Reservation.objects.filter(is_offer=True).exists()
    assert fresh(ada).status == Entry.WAITING
    assert not available(slot)

    second = start_worker(**env)
    assert wait_for(lambda: fresh(ada).status == Entry.OFFERED, timeout=10), second.log()
    hold.refresh_from_db()
    assert [e.to_status for e in hold.events.all()] == [PENDING, CANCELLED]
    lists_hold()


@pytest.mark.django_db(transaction=True)
def test_offers_out_when_the_job_store_is_deleted_still_lapse_and_pass_on(job_store):
    """
    Guarantee: an offer's end is data: with its job lost, the reconcile and
    the sweep still lapse it and pass the slot on, each to the next party.

    Attack: an offer is out; the operator deletes the job store (its
    files); the offer's end passes with no job, long enough ago that the
    reconcile counts it overdue. ``reconcile_expiry_jobs --fix`` runs; the
    store is deleted again under the next offer, and only the sweep is left.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    ada, bo, cy = (join(slot, f"{n}@example.com") for n in ("ada", "bo", "cy"))
    reservations.reservation_cancel(reservation=hold)
    offer = fresh(ada).offer
    assert f"expire_reservation:{offer.pk}" in job_store.jobs()

    def store_lost_and_offer_over(offer):
        scheduler_module.stop_scheduler()
        job_store.delete()
        Reservation.objects.filter(pk=offer.pk).update(
            expires_at=timezone.now() - timedelta(seconds=30)
        )

    store_lost_and_offer_over(offer)
    assert not available(slot)  # the lapsed offer is the list's, not the public's
    assert reconcile_command("--fix")[0] in (0, 1)

    assert (fresh(ada).status, fresh(bo).status) == (Entry.LAPSED, Entry.OFFERED)
    next_offer = fresh(bo).offer
    assert f"expire_reservation:{next_offer.pk}" in job_store.jobs()
    store_lost_and_offer_over(next_offer)
    scheduler_module.cancel_expired_reservations()

    assert (fresh(bo).status, fresh(cy).status) == (Entry.LAPSED, Entry.OFFERED)
    lists_hold()


@pytest.mark.django_db
def test_with_no_scheduler_at_all_the_reads_carry_the_cascade_to_its_end(client):
    """
    Guarantee: with the scheduler down, every offer is made by the next
    read, and the slot goes free only when no one is left waiting.

    Attack: no worker, no job, no sweep. A hold lapses; then each offer
    lapses in turn; the only things that happen are customers reading.
    """
    slot = tomorrow_slot()
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    room_page = f"/rooms/{slot.room.slug}/?date={timezone.localdate(slot.starts_at)}"

    let_lapse(hold)
    assert api_slot_available(client, slot) is False
    assert client.get(f"/api/waitlist/{bo.token}/").json()["place"] == 1
    assert fresh(ada).status == Entry.OFFERED  # made by Bo's read

    let_lapse(fresh(ada).offer)
    assert api_slot_available(client, slot) is False
    client.get(room_page)
    assert (fresh(ada).status, fresh(bo).status) == (Entry.LAPSED, Entry.OFFERED)

    let_lapse(fresh(bo).offer)
    assert api_slot_available(client, slot) is True  # no one left: free for all
    assert api_post(client, "/reservations/", body_of(slot)).status_code == 201
    assert fresh(bo).status == Entry.LAPSED
    lists_hold()


# ---------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_closed_rooms_slot_is_offered_to_no_one_and_its_parties_are_not_told_it_is_free(client):
    """
    Guarantee: a slot whose room staff closed is offered to no one and
    reads as not available; its parties' places end, and nothing tells them
    the time is free to book.

    Attack: staff deactivate the room while a hold with two parties waiting
    runs; the hold lapses and its job runs. The parties open their page.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    slot.room.is_active = False
    slot.room.save()

    expiry_job(now=hold.expires_at + timedelta(milliseconds=1))

    assert not Reservation.objects.filter(is_offer=True).exists()
    assert (fresh(ada).status, fresh(bo).status) == (Entry.CLOSED, Entry.CLOSED)
    assert not available(slot)
    assert not Message.objects.filter(kind=Kind.SLOT_FREE).exists()
    page = client.get(f"/waitlist/{ada.token}/").content.decode()
    assert "free for everyone" not in page
    assert "will not be offered to anyone" in page
    lists_hold()


@pytest.mark.django_db
def test_a_slot_starting_exactly_the_offer_time_away_goes_free_and_a_microsecond_more_is_offered(
    settings,
):
    """
    Guarantee: a slot that starts within ``WAITLIST_OFFER_SECONDS`` is
    offered to no one and every read agrees it is free; one that starts
    later is offered and every read agrees it is not: the reads and the
    hand-over draw the line at the same instant.

    Attack: two slots start exactly 900 s and 900 s plus a microsecond after
    their holds' end; the holds lapse at that end, read and then expired
    with that same ``now``.
    """
    settings.WAITLIST_OFFER_SECONDS = 900
    now = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    edge = TimeSlotFactory(starts_at=now + timedelta(seconds=900))
    beyond = TimeSlotFactory(starts_at=now + timedelta(seconds=900, microseconds=1))
    holds = [held(edge, "h1@example.com"), held(beyond, "h2@example.com")]
    ada, bo = join(edge, "ada@example.com"), join(beyond, "bo@example.com")
    Reservation.objects.filter(pk__in=[h.pk for h in holds]).update(expires_at=now)

    assert (available(edge, now), available(beyond, now)) == (True, False)
    assert (offers.waiting_on(edge.pk, now=now), offers.waiting_on(beyond.pk, now=now)) == (
        False,
        True,
    )
    expiry_job(now=now)

    assert (fresh(ada).status, fresh(bo).status) == (Entry.CLOSED, Entry.OFFERED)
    assert Message.objects.filter(waiting_entry=ada, kind=Kind.SLOT_FREE).exists()
    assert fresh(bo).offer.expires_at < beyond.starts_at
    lists_hold()


@pytest.mark.django_db
def test_a_party_the_room_no_longer_takes_neither_gets_the_offer_nor_keeps_the_slot_from_others(
    client,
):
    """
    Guarantee: a party whose size the room no longer takes is skipped (it
    stays waiting); a lapsed hold that only such parties wait for is not
    theirs, so it reads as free and its holder's late payment is applied,
    as with no one waiting.

    Attack: staff lower the room's most players below Ada's party of six.
    First Bo (three) waits behind Ada and is offered; then, on another slot,
    Ada alone waits and the holder pays a moment late.
    """
    room = RoomFactory(min_players=2, max_players=6)
    first, second = TimeSlotFactory(room=room), TimeSlotFactory(room=room)
    hold1, hold2 = held(first, "h1@example.com"), held(second, "h2@example.com")
    ada1 = join(first, "ada@example.com", party_size=6)
    bo = join(first, "bo@example.com")
    ada2 = join(second, "ada@example.com", party_size=6)
    room.max_players = 4
    room.save()

    expiry_job(now=hold1.expires_at + timedelta(milliseconds=1))
    assert (fresh(ada1).status, fresh(bo).status) == (Entry.WAITING, Entry.OFFERED)

    let_lapse(hold2)
    assert api_slot_available(client, second) is True
    response = api_post(client, f"/reservations/{hold2.token}/pay/", {"payment_reference": "L2"})
    assert response.status_code == 200 and response.json()["status"] == "paid"
    assert fresh(ada2).status == Entry.WAITING
    lists_hold()


@pytest.mark.django_db
def test_the_holder_cannot_wait_for_its_own_slot(client):
    """
    Guarantee: a party never waits for a slot it holds: its hold is its
    place. (Were it on the list first, its own lapsed hold would come back
    to it as a fresh offer, ahead of the parties waiting, past the hold's
    limits; paying the hold would tell its own place "Booked by another
    party".)

    Attack: the holder joins its own slot's list, first, through the API
    and the join form, in another case of its email.
    """
    slot = TimeSlotFactory()
    hold = held(slot, "dana@example.com")
    before = counts()

    response = api_post(client, "/waitlist/", body_of(slot, "DANA@example.com"))
    form = client.post(
        f"/rooms/{slot.room.slug}/{slot.key}/wait/",
        {
            "customer_name": "Dana",
            "customer_email": "dana@example.com",
            "party_size": "3",
            "request_key": "",
        },
    )

    assert error(response) == (409, "already_holding")
    assert form.status_code == 409
    assert errors.AlreadyHolding.default_message in form.content.decode()
    assert counts() == before
    bo = join(slot, "bo@example.com")
    expiry_job(now=hold.expires_at + timedelta(milliseconds=1))
    assert fresh(bo).status == Entry.OFFERED
    lists_hold()


@pytest.mark.django_db
def test_staff_cancelling_a_paid_offer_with_a_refund_offers_the_slot_to_the_next_party():
    """
    Guarantee: a booking cancelled by staff passes the slot on, even one
    that was an offer: the next party is offered it; the cancelled party is
    not offered it again.

    Attack: Ada takes her offer and pays; staff then cancel and refund it.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    reservations.reservation_cancel(reservation=hold)
    offer = fresh(ada).offer
    payment_confirm_price(reservation=offer, reference="PAY-ADA", source="customer")

    payment = booking_cancel_and_refund(reservation=Reservation.objects.get(pk=offer.pk))

    assert payment.refund_reference
    assert (fresh(ada).status, fresh(bo).status) == (Entry.BOOKED, Entry.OFFERED)
    assert fresh(ada).offer.status == CANCELLED
    assert fresh(bo).offer.customer_email == "bo@example.com"
    lists_hold()


@pytest.mark.django_db
def test_staff_extending_an_offer_keeps_it_the_partys_until_its_new_end(client):
    """
    Guarantee: an offer staff extend stays its party's until the new end,
    and lapses then to the next party; it is still one offer, told once.

    Attack: staff extend Ada's offer by 20 minutes; the old end passes and
    an expiry run happens there; then the new end passes.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    ada, bo = join(slot, "ada@example.com"), join(slot, "bo@example.com")
    reservations.reservation_cancel(reservation=hold)
    offer = fresh(ada).offer
    old_end = offer.expires_at

    reservations.reservation_extend_hold(reservation=offer, by=timedelta(minutes=20))

    assert expiry_job(now=old_end + timedelta(seconds=1)) == []
    assert (fresh(ada).status, fresh(bo).status) == (Entry.OFFERED, Entry.WAITING)
    shown = client.get(f"/api/waitlist/{ada.token}/").json()["offer"]
    shift = datetime.fromisoformat(shown["expires_at"]) - old_end
    assert abs(shift - timedelta(minutes=20)) < timedelta(milliseconds=1), shift
    assert not available(slot, old_end + timedelta(seconds=1))

    expiry_job(now=old_end + timedelta(minutes=20, seconds=1))
    assert (fresh(ada).status, fresh(bo).status) == (Entry.LAPSED, Entry.OFFERED)
    lists_hold()


@pytest.mark.django_db
def test_a_party_waiting_for_games_at_one_time_is_offered_one_and_at_two_times_both():
    """
    Guarantee: a party is offered one game per time: of two slots at the
    same hour lapsing in one batch it gets one and the next party the other;
    of two at different hours, both. The one it holds keeps it from the
    others at that hour.

    Attack: Pat waits for three rooms at 19:00 and one at 21:00; all four
    holds lapse in one expiry run.
    """
    seven = TimeSlotFactory().starts_at
    same_hour = [TimeSlotFactory(starts_at=seven, room=RoomFactory()) for _ in range(3)]
    later = TimeSlotFactory(starts_at=seven + timedelta(hours=2))
    holds = [held(s, f"h{i}@example.com") for i, s in enumerate([*same_hour, later])]
    pat = [join(s, "pat@example.com") for s in [*same_hour, later]]
    others = [join(s, f"o{i}@example.com") for i, s in enumerate(same_hour)]

    expiry_job(now=max(h.expires_at for h in holds) + timedelta(milliseconds=1))

    offered = [fresh(e).status for e in pat]
    assert offered[:3].count(Entry.OFFERED) == 1 and offered[3] == Entry.OFFERED, offered
    assert [fresh(e).status for e in others].count(Entry.OFFERED) == 2
    lists_hold()


@pytest.mark.django_db
def test_the_hour_the_clocks_repeat_holds_two_distinct_games_and_their_offers(client):
    """
    Guarantee: times are instants, not wall-clock readings: the two 02:30s
    of the night the clocks go back are two games an hour apart, each with
    its own list, both offered to a party waiting for both, each named in
    its own zone.

    Attack: Berlin, 31 October 2027: rooms at 02:30 CEST (00:30 UTC) and
    02:30 CET (01:30 UTC); Pat joins the second through the join form (its
    URL names the slot by its UTC start) and the first through the API.
    """
    cest = datetime(2027, 10, 31, 0, 30, tzinfo=UTC)
    first = TimeSlotFactory(starts_at=cest, ends_at=cest + timedelta(hours=1))
    second = TimeSlotFactory(starts_at=cest + timedelta(hours=1), ends_at=cest + timedelta(hours=2))
    h1, h2 = held(first, "h1@example.com"), held(second, "h2@example.com")
    api_post(client, "/waitlist/", body_of(first, "pat@example.com"))
    page = client.post(
        f"/rooms/{second.room.slug}/{second.key}/wait/",
        {
            "customer_name": "Pat",
            "customer_email": "pat@example.com",
            "party_size": "3",
            "request_key": "",
        },
    )
    assert page.status_code == 302
    pat = {e.time_slot_id: e for e in WaitingEntry.objects.filter(customer_email="pat@example.com")}
    assert set(pat) == {first.pk, second.pk}

    expiry_job(now=max(h1.expires_at, h2.expires_at) + timedelta(milliseconds=1))

    assert {fresh(e).status for e in pat.values()} == {Entry.OFFERED}
    subjects = [
        compose.message_email(m).subject
        for m in Message.objects.filter(kind=Kind.OFFER).order_by("reservation__time_slot")
    ]
    assert ["02:30 CEST" in subjects[0], "02:30 CET" in subjects[1]] == [True, True], subjects
    lists_hold()


def _bulk_waiting(slot_emails: list[tuple[int, str]]) -> None:
    """Parties on lists, written in one statement (the set-up of a thousand joins)."""
    WaitingEntry.objects.bulk_create(
        WaitingEntry(
            time_slot_id=slot_id,
            customer_name=email.split("@")[0],
            customer_email=email,
            party_size=3,
        )
        for slot_id, email in slot_emails
    )


@pytest.mark.django_db
def test_a_thousand_parties_on_one_slot_hand_over_in_a_few_statements_to_the_first():
    """
    Guarantee: a long list changes nothing: the first party is offered, the
    last knows its place, and a booking tells every one still waiting once,
    each in the transaction of the change, in a fixed number of statements.

    Attack: 1,000 parties wait for one slot; its hold lapses; the offer is
    taken.
    """
    slot = TimeSlotFactory()
    hold = held(slot)
    _bulk_waiting([(slot.pk, f"p{n:04}@example.com") for n in range(1000)])
    first, last = WaitingEntry.objects.order_by("pk")[0], WaitingEntry.objects.order_by("-pk")[0]

    with CaptureQueriesContext(connection) as handing_over:
        expiry_job(now=hold.expires_at + timedelta(milliseconds=1))
    assert fresh(first).status == Entry.OFFERED
    assert offers.waiting_place(fresh(last)) == 999
    with CaptureQueriesContext(connection) as booking:
        reservations.reservation_pay(reservation=fresh(first).offer, payment_reference="P")

    assert Message.objects.filter(kind=Kind.SLOT_BOOKED).count() == 999
    assert len(handing_over) < 40, len(handing_over)
    assert len(booking) < 30, len(booking)
    lists_hold()


@pytest.mark.django_db
def test_a_thousand_listed_slots_lapsing_at_once_each_go_to_their_first_free_party(settings):
    """
    Guarantee: the bulk expiry hands every slot over in its own batch
    transaction, one offer a slot, one offer a party and time, in a number
    of statements that does not grow with the burst.

    Attack: 1,000 held slots at the same hour in 1,000 rooms lapse in the
    same second; each has two parties waiting; one hoarder is first on
    every list.
    """
    starts_at = TimeSlotFactory().starts_at
    rooms = Room.objects.bulk_create(
        Room(
            name=f"Burst {n}",
            slug=f"burst-{n}",
            duration_minutes=60,
            min_players=2,
            max_players=6,
            price=80,
        )
        for n in range(1000)
    )
    slots = TimeSlot.objects.bulk_create(
        TimeSlot(
            room=room,
            starts_at=starts_at,
            ends_at=starts_at + timedelta(hours=1),
            status=TimeSlot.Status.RESERVED,
        )
        for room in rooms
    )
    end = timezone.now() + timedelta(minutes=30)
    Reservation.objects.bulk_create(
        Reservation(
            time_slot=slot,
            customer_name="H",
            customer_email=f"h{n}@example.com",
            party_size=3,
            price=slot.room.price,
            currency=slot.room.currency,
            expires_at=end,
        )
        for n, slot in enumerate(slots)
    )
    _bulk_waiting(
        [(s.pk, "hoarder@example.com") for s in slots]
        + [(s.pk, f"p{n}@example.com") for n, s in enumerate(slots)]
    )

    with CaptureQueriesContext(connection) as burst:
        released = expiry_job(now=end + timedelta(milliseconds=1))

    assert len(released) == 1000
    offered = Reservation.objects.filter(is_offer=True, status=PENDING)
    assert offered.count() == 1000
    assert offered.filter(customer_email="hoarder@example.com").count() == 1
    assert WaitingEntry.objects.filter(status=Entry.OFFERED).count() == 1000
    assert len(burst) < 60, len(burst)
    lists_hold()
