"""
Closures: staff close a room, or the whole venue, for a day or a period.

Its slots stop being offered, the live holds on them end at once (cause
``closure``) and their customers are told why; the parties waiting are told
and their lists close; paid bookings stay paid, listed for staff to move or
refund. On both databases, with a real SMTP server for the messages.
"""

from collections import Counter
from datetime import datetime, time, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.messaging import services as messaging
from apps.payments.models import Payment
from apps.payments.services import payment_confirm
from apps.reservations import closures, errors, services, waitlist
from apps.reservations.models import Reservation, ReservationEvent, WaitingEntry
from apps.rooms.models import Closure, TimeSlot
from apps.rooms.selectors import venue_day_bounds
from escape_rooms_backend import deadlines

from ..conftest import run_together, subjects
from ..factories import RoomFactory, TimeSlotFactory, reserve

Status = Reservation.Status
Entry = WaitingEntry.Status
REASON = "A burst pipe flooded the basement"
CLOSED_SUBJECT = "Closed at this time, not booked"
LIST_CLOSED_SUBJECT = "Closed at this time"


def day_ahead(days: int = 2):
    return timezone.localdate() + timedelta(days=days)


def slot_at(room, day, hour: int) -> TimeSlot:
    starts_at = datetime.combine(day, time(hour), tzinfo=timezone.get_default_timezone())
    return TimeSlotFactory(room=room, starts_at=starts_at, ends_at=starts_at + timedelta(hours=1))


def close_day(room, day, **kwargs) -> closures.ClosureResult:
    starts_at, ends_at = venue_day_bounds(day)
    return closures.closure_create(
        room=room, starts_at=starts_at, ends_at=ends_at, reason=REASON, **kwargs
    )


def join(slot, email: str) -> WaitingEntry:
    return waitlist.waiting_join(
        time_slot_id=slot.pk, customer_name="Ada", customer_email=email, party_size=3
    )


def paid(slot, email: str) -> Reservation:
    booking = reserve(slot, customer_email=email)
    return services.reservation_pay(reservation=booking, payment_reference=f"PAY-{email}")


def deadline_jobs(job_store, reservation: Reservation) -> set[str]:
    """The reservation's jobs in the store: its hold's end, reminder, payment."""
    return {
        job_id
        for job_id in job_store.jobs()
        for kind in deadlines.kinds()
        if kind.name != "delivery" and kind.reservation_id(job_id) == reservation.pk
    }


def body(message) -> str:
    return " ".join(message.get_body(("plain",)).get_content().split())


@pytest.mark.django_db(transaction=True)
def test_a_closure_ends_holds_and_offers_tells_everyone_and_lists_the_paid_bookings(
    job_store, mail_server
):
    room = RoomFactory()
    day = day_ahead()
    booked_slot = slot_at(room, day, 12)
    booking = paid(booked_slot, "booked@example.com")
    waiting_for_booking = join(booked_slot, "hopeful@example.com")
    offered_slot = slot_at(room, day, 14)
    lapsing = reserve(offered_slot, customer_email="lapsing@example.com")
    ada, bo = join(offered_slot, "ada@example.com"), join(offered_slot, "bo@example.com")
    services.lapsed_holds_release(cause="sweep", now=lapsing.expires_at + timedelta(seconds=1))
    ada.refresh_from_db()
    offer = ada.offer
    assert (ada.status, offer.status) == (Entry.OFFERED, Status.PENDING)
    held = reserve(slot_at(room, day, 10), customer_email="held@example.com")
    next_day = reserve(slot_at(room, day + timedelta(days=1), 10), customer_email="next@x.org")
    assert deadline_jobs(job_store, held) and deadline_jobs(job_store, offer)
    messaging.messages_deliver()
    mail_server.received.clear()

    result = close_day(room, day)

    assert {r.pk for r in result.holds_ended} == {held.pk, offer.pk}
    assert [b.pk for b in result.bookings] == [booking.pk]
    assert len(result.slot_ids) == 3
    for hold in (held, offer):
        hold.refresh_from_db()
        assert (hold.status, hold.cancellation_reason) == (Status.CANCELLED, "closed")
        event = hold.events.get(cause=ReservationEvent.Cause.CLOSURE)
        assert (event.from_status, event.to_status, event.cause, event.detail) == (
            Status.PENDING,
            Status.CANCELLED,
            ReservationEvent.Cause.CLOSURE,
            REASON,
        )
        assert deadline_jobs(job_store, hold) == set(), "its jobs go with the commit"
    booking.refresh_from_db()
    next_day.refresh_from_db()
    assert booking.status == Status.PAID
    assert next_day.status == Status.PENDING and deadline_jobs(job_store, next_day)
    for entry in (ada, bo, waiting_for_booking):
        entry.refresh_from_db()
        assert entry.status == Entry.CLOSED
    assert Reservation.objects.filter(time_slot=offered_slot, status=Status.PENDING).count() == 0

    messaging.messages_deliver()

    for address in ("held@example.com", "ada@example.com"):
        [message] = mail_server.to(address)
        assert message["Subject"].startswith(f"{CLOSED_SUBJECT}: {room.name}, ")
        assert f"the venue has closed {room.name} at this time" in body(message)
        assert f"Why: {REASON}" in body(message)
    assert "offer from the waiting list" in body(mail_server.to("ada@example.com")[0])
    for address in ("bo@example.com", "hopeful@example.com"):
        assert subjects(mail_server, address) == [LIST_CLOSED_SUBJECT]
        assert f"Why: {REASON}" in body(mail_server.to(address)[0])
    assert mail_server.to("booked@example.com") == []  # staff move or refund it
    assert mail_server.to("next@x.org") == []


@pytest.mark.django_db
def test_the_customers_pages_say_the_venue_closed_the_time(client):
    room = RoomFactory()
    slot = slot_at(room, day_ahead(), 10)
    hold = reserve(slot, customer_email="held@example.com")
    waiting = join(slot, "ada@example.com")

    close_day(room, day_ahead())

    hold_page = client.get(f"/reservations/{hold.token}/").content.decode()
    assert "The venue has closed" in hold_page and "your hold has ended" in hold_page
    waiting_page = client.get(f"/waitlist/{waiting.token}/").content.decode()
    assert "The waiting list is closed" in waiting_page
    assert f"{room.name} is closed at this time" in waiting_page
    api = client.get(f"/api/reservations/{hold.token}/").json()
    assert (api["status"], api["cancellation_reason"]) == ("cancelled", "closed")


@pytest.mark.django_db
def test_a_closed_slot_is_shown_closed_and_reserving_or_waiting_for_it_is_refused(client):
    room = RoomFactory()
    day = day_ahead()
    closed, booked, open_ = (slot_at(room, day, hour) for hour in (10, 12, 20))
    paid(booked, "booked@example.com")
    starts_at, _ = venue_day_bounds(day)
    closures.closure_create(
        room=room,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(hours=13),
        reason=REASON,
    )

    slots = client.get(f"/api/rooms/{room.slug}/slots/?date={day}").json()
    assert [(s["id"], s["available"], s["closed"]) for s in slots] == [
        (closed.pk, False, True),
        (booked.pk, False, True),
        (open_.pk, True, False),
    ]
    page = client.get(f"/rooms/{room.slug}/?date={day}").content.decode()
    assert page.count(">Closed</td>") == 2
    assert f"/{closed.key}/" not in page and f"/{booked.key}/" not in page
    assert f"/{open_.key}/reserve/" in page

    party = {"customer_name": "Eve", "customer_email": "eve@example.com", "party_size": 3}
    reserved = client.post(
        "/api/reservations/", {"slot_id": closed.pk, **party}, content_type="application/json"
    )
    waited = client.post(
        "/api/waitlist/", {"slot_id": booked.pk, **party}, content_type="application/json"
    )
    for response in (reserved, waited):
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "slot_closed"
    reserve_page = client.get(f"/rooms/{room.slug}/{closed.key}/reserve/", follow=True)
    assert "The venue is closed at this time" in reserve_page.content.decode()
    assert not Reservation.objects.filter(customer_email="eve@example.com").exists()
    assert not WaitingEntry.objects.filter(customer_email="eve@example.com").exists()


@pytest.mark.django_db
def test_a_whole_venue_closure_closes_every_room_and_deleting_it_reopens_the_slots():
    day = day_ahead(3)
    holds = [reserve(slot_at(RoomFactory(), day, 18)) for _ in range(2)]
    slot_ids = [hold.time_slot_id for hold in holds]

    result = close_day(None, day)

    assert {r.pk for r in result.holds_ended} == {hold.pk for hold in holds}
    now = timezone.now()
    assert not TimeSlot.objects.with_availability(now).filter(pk__in=slot_ids, available=True)
    with pytest.raises(errors.SlotClosed):
        reserve(TimeSlot.objects.get(pk=slot_ids[0]), customer_email="eve@example.com")

    result.closure.delete()

    available = TimeSlot.objects.with_availability(timezone.now()).filter(pk__in=slot_ids)
    assert [slot.available for slot in available] == [True, True]
    for hold in holds:
        hold.refresh_from_db()
        assert hold.cancellation_reason == "closed"  # nothing comes back
    assert reserve(TimeSlot.objects.get(pk=slot_ids[0]), customer_email="eve@example.com")


@pytest.mark.django_db
def test_a_closure_must_end_after_it_starts():
    starts_at, _ = venue_day_bounds(day_ahead())

    with pytest.raises(ValueError, match="end after it starts"):
        closures.closure_create(room=None, starts_at=starts_at, ends_at=starts_at, reason=REASON)
    assert not Closure.objects.exists()


@pytest.mark.django_db
def test_slots_generated_into_a_closure_are_made_closed_and_a_started_game_is_left_alone():
    from apps.rooms.services import timeslots_generate

    room = RoomFactory()
    now = timezone.now()
    started = TimeSlotFactory(
        room=room, starts_at=now - timedelta(minutes=10), ends_at=now + timedelta(minutes=50)
    )
    day = day_ahead()
    close_day(room, timezone.localdate(now))
    result = close_day(room, day)

    generated = timeslots_generate(room=room, start=day, end=day, times=[time(9), time(11)])

    assert len(generated.created) == 2
    shown = TimeSlot.objects.with_availability(timezone.now()).filter(room=room, starts_at__gt=now)
    assert [(slot.available, slot.closed) for slot in shown] == [(False, True)] * 2
    assert result.slot_ids == []
    assert started.pk not in close_day(room, timezone.localdate(now)).slot_ids


@pytest.mark.django_db
def test_a_hold_that_lapsed_before_the_closure_is_refunded_when_paid_late():
    slot = slot_at(RoomFactory(), day_ahead(), 10)
    hold = reserve(slot, customer_email="late@example.com")
    services.lapsed_holds_release(cause="sweep", now=hold.expires_at + timedelta(seconds=1))
    close_day(slot.room, day_ahead())

    confirmation = payment_confirm(
        reservation_token=str(hold.token),
        reference="PAY-LATE",
        amount=hold.price,
        currency=hold.currency,
        source="customer",
    )

    assert confirmation.payment.outcome == Payment.Outcome.REFUND_DUE
    hold.refresh_from_db()
    assert (hold.status, hold.cancellation_reason) == (Status.CANCELLED, "expired")


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_superuser("boss", password="pw")
    client.force_login(user)
    return user


@pytest.mark.django_db
def test_staff_close_a_room_for_days_in_the_admin_and_are_shown_what_to_move_or_refund(
    client, staff
):
    room = RoomFactory(name="The Tomb")
    first = day_ahead()
    held = reserve(slot_at(room, first, 10), customer_email="held@example.com")
    booking = paid(slot_at(room, first + timedelta(days=1), 10), "booked@example.com")
    after = reserve(slot_at(room, first + timedelta(days=2), 10), customer_email="after@x.org")
    form = client.get("/admin/rooms/closure/add/").content.decode()
    assert 'name="first_day"' in form and 'name="last_day"' in form and 'name="reason"' in form

    response = client.post(
        "/admin/rooms/closure/add/",
        {
            "room": room.pk,
            "first_day": first.isoformat(),
            "last_day": (first + timedelta(days=1)).isoformat(),
            "reason": REASON,
        },
        follow=True,
    )

    assert response.status_code == 200
    closure = Closure.objects.get()
    assert (closure.starts_at, closure.ends_at) == (
        venue_day_bounds(first)[0],
        venue_day_bounds(first + timedelta(days=1))[1],
    )
    assert closure.created_by == staff
    said = [str(m) for m in response.context["messages"]]
    assert any("2 slot(s) closed, 1 hold(s) ended, 0 waiting parties told" in m for m in said)
    [to_move] = [m for m in said if "paid booking(s)" in m]
    assert f"?id__in={booking.pk}" in to_move
    held.refresh_from_db(), booking.refresh_from_db(), after.refresh_from_db()
    assert (held.status, booking.status, after.status) == (
        Status.CANCELLED,
        Status.PAID,
        Status.PENDING,
    )
    assert ReservationEvent.objects.get(reservation=held, cause="closure").staff_user == staff

    assert "The Tomb" in client.get("/admin/rooms/closure/").content.decode()
    listed = client.get(f"/admin/reservations/reservation/?id__in={booking.pk}")
    assert list(listed.context["cl"].result_list) == [booking]
    page = client.get(f"/admin/rooms/closure/{closure.pk}/change/").content.decode()
    assert f"/admin/reservations/reservation/{booking.pk}/change/" in page
    assert "booked@example.com" in page
    assert f"/admin/rooms/closure/{closure.pk}/delete/" in page  # shown, not edited: deleted
    assert 'name="reason"' not in page

    client.post(f"/admin/rooms/closure/{closure.pk}/delete/", {"post": "yes"})
    assert not Closure.objects.exists()
    slots = TimeSlot.objects.with_availability(timezone.now()).filter(room=room)
    assert [slot.closed for slot in slots] == [False, False, False]


@pytest.mark.django_db
def test_staff_close_the_whole_venue_for_an_afternoon_in_the_admin(client, staff):
    day = day_ahead()
    rooms = [RoomFactory(), RoomFactory()]
    morning, afternoon = slot_at(rooms[0], day, 10), slot_at(rooms[1], day, 15)

    client.post(
        "/admin/rooms/closure/add/",
        {
            "first_day": day.isoformat(),
            "from_time": "14:00",
            "until_time": "18:00",
            "reason": REASON,
        },
    )

    closure = Closure.objects.get()
    zone = timezone.get_default_timezone()
    assert (closure.room, closure.starts_at, closure.ends_at) == (
        None,
        datetime.combine(day, time(14), tzinfo=zone),
        datetime.combine(day, time(18), tzinfo=zone),
    )
    shown = TimeSlot.objects.with_availability(timezone.now()).filter(
        pk__in=[morning.pk, afternoon.pk]
    )
    assert [(slot.pk, slot.closed) for slot in shown] == [(morning.pk, False), (afternoon.pk, True)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("last_day", "until_time"), [(-1, ""), (0, "00:00")], ids=["last day first", "until midnight"]
)
def test_the_admin_refuses_a_closure_that_ends_before_it_starts(
    client, staff, last_day, until_time
):
    first = day_ahead()
    response = client.post(
        "/admin/rooms/closure/add/",
        {
            "first_day": first.isoformat(),
            "last_day": (first + timedelta(days=last_day)).isoformat(),
            "until_time": until_time,
            "reason": REASON,
        },
    )
    assert response.status_code == 200
    assert "The closure must end after it starts" in response.content.decode()
    assert not Closure.objects.exists()


ROUNDS = 10


@pytest.mark.django_db(transaction=True)
def test_a_reservation_racing_a_closure_never_leaves_a_live_hold_on_the_closed_slot():
    outcomes = []
    for round_ in range(ROUNDS):
        room = RoomFactory()
        day = day_ahead(2 + round_)
        slot = slot_at(room, day, 19)

        def reserving(slot=slot, round_=round_) -> str:
            reserve(slot, customer_email=f"racer{round_}@example.com")
            return "reserved"

        def closing(room=room, day=day) -> str:
            close_day(room, day)
            return "closed"

        outcome = run_together(reserving, closing)

        assert outcome["closed"] == 1, outcome
        assert set(outcome) <= {"closed", "reserved", "slot_closed"}, outcome
        assert not Reservation.objects.filter(
            time_slot=slot, status__in=[Status.PENDING, Status.PAID]
        ).exists()
        if outcome["reserved"]:
            racer = Reservation.objects.get(time_slot=slot)
            assert (racer.status, racer.cancellation_reason) == (Status.CANCELLED, "closed")
        outcomes.append("before the closure" if outcome["reserved"] else "refused")
    print(f"\nthe reservation ({ROUNDS} rounds): {dict(Counter(outcomes))}")


@pytest.mark.django_db(transaction=True)
def test_a_party_joining_the_list_as_the_slot_closes_is_refused_or_told():
    outcomes = []
    for round_ in range(ROUNDS):
        room = RoomFactory()
        day = day_ahead(2 + round_)
        slot = slot_at(room, day, 19)
        paid(slot, f"booked{round_}@example.com")
        email = f"joiner{round_}@example.com"

        def joining(slot=slot, email=email) -> str:
            join(slot, email)
            return "joined"

        def closing(room=room, day=day) -> str:
            close_day(room, day)
            return "closed"

        outcome = run_together(joining, closing)

        assert outcome["closed"] == 1, outcome
        assert set(outcome) <= {"closed", "joined", "slot_closed"}, outcome
        assert not WaitingEntry.objects.filter(time_slot=slot, status__in=WaitingEntry.LIVE)
        if outcome["joined"]:
            entry = WaitingEntry.objects.get(time_slot=slot)
            assert entry.status == Entry.CLOSED
            assert entry.messages.filter(kind="slot_closed").exists()
        outcomes.append("before the closure" if outcome["joined"] else "refused")
    print(f"\nthe join ({ROUNDS} rounds): {dict(Counter(outcomes))}")
