"""
Customer changes: a booking moved to another time of the same room.

The new slot is the customer's before the old one is released, never neither;
a refused move leaves everything as it was.
"""

from datetime import timedelta

import icalendar
import pytest
from django.utils import timezone

from apps.messaging import compose
from apps.messaging.models import Message
from apps.payments.services import payment_confirm_price
from apps.reservations import changes, errors
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation, ReservationEvent, WaitingEntry
from apps.reservations.services import reservation_create
from apps.rooms.models import Closure, TimeSlot

from ..conftest import run_together
from ..factories import RoomFactory, TimeSlotFactory, reserve
from ..waitlist.conftest import join

pytestmark = pytest.mark.django_db

Status = Reservation.Status


def slots(room, *days: float) -> list[TimeSlot]:
    """Slots of ``room`` starting ``days`` from now (whole minutes)."""
    now = timezone.now().replace(second=0, microsecond=0)
    return [TimeSlotFactory(room=room, starts_at=now + timedelta(days=d)) for d in days]


def paid(slot, email="john@example.com") -> Reservation:
    reservation = reserve(slot, customer_email=email)
    payment_confirm_price(reservation=reservation, reference=f"PAY-{slot.pk}", source="customer")
    reservation.refresh_from_db()
    return reservation


def state(reservation) -> tuple:
    """Everything a refused move must leave as it was."""
    reservation.refresh_from_db()
    return (
        reservation.time_slot_id,
        reservation.status,
        reservation.expires_at,
        reservation.price,
        list(TimeSlot.objects.order_by("pk").values_list("pk", "status")),
        ReservationEvent.objects.count(),
        list(Message.objects.order_by("pk").values_list("kind", flat=True)),
    )


def slot_status(slot) -> str:
    return TimeSlot.objects.get(pk=slot.pk).status


@pytest.fixture
def api(client):
    def post(path, body=None):
        return client.post(f"/api{path}", body or {}, content_type="application/json")

    return post


# The move -------------------------------------------------------------------------


def test_a_paid_booking_moved_holds_the_new_slot_and_frees_the_old(api):
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    booking = paid(old)
    price = booking.price

    response = api(f"/reservations/{booking.token}/move/", {"slot_id": new.pk})

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["slot"]["id"]) == ("paid", new.pk)
    booking.refresh_from_db()
    assert (booking.time_slot_id, booking.status, booking.price) == (new.pk, Status.PAID, price)
    assert (slot_status(new), slot_status(old)) == ("reserved", "active")
    assert TimeSlot.objects.with_availability(timezone.now()).get(pk=old.pk).available
    event = booking.events.last()
    assert (event.from_status, event.to_status, event.cause) == ("paid", "paid", "customer")
    old_at, new_at = (timezone.localtime(s.starts_at) for s in (old, new))
    assert event.detail == (
        f"Moved from {old_at:%Y-%m-%d %H:%M} {old_at.tzname()} "
        f"to {new_at:%Y-%m-%d %H:%M} {new_at.tzname()}"
    )


def test_the_moved_message_gives_the_new_time_and_a_calendar_file_that_replaces_the_old():
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    booking = paid(old)

    changes.reservation_move(reservation=booking, time_slot_id=new.pk)

    message = Message.objects.get(reservation=booking, kind=Message.Kind.MOVED)
    email = compose.message_email(message)
    assert email.subject == f"Moved to {compose.when(new.starts_at)}: {room.name}"
    assert f"from {compose.when(old.starts_at)}" in email.body
    [(name, ics, _)] = email.attachments
    event = icalendar.Calendar.from_ical(ics).walk("VEVENT")[0]
    assert name == "booking.ics"
    assert event["DTSTART"].dt == new.starts_at
    assert str(event["UID"]) == f"reservation-{booking.token}@127.0.0.1"
    assert event["SEQUENCE"] == 1  # a newer version of the same event


def test_a_message_about_a_move_made_again_since_is_not_sent():
    room = RoomFactory()
    old, first, second = slots(room, 5, 6, 7)
    booking = paid(old)
    changes.reservation_move(reservation=booking, time_slot_id=first.pk)
    changes.reservation_move(reservation=booking, time_slot_id=second.pk)

    stale, current = Message.objects.filter(kind=Message.Kind.MOVED).order_by("pk")

    assert compose.message_email(stale) is None
    assert compose.message_email(current).subject.startswith(
        f"Moved to {compose.when(second.starts_at)}"
    )


def test_the_old_slot_goes_to_its_waiting_list():
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    booking = paid(old)
    party = join(old, "ada@example.com")

    changes.reservation_move(reservation=booking, time_slot_id=new.pk)

    party.refresh_from_db()
    assert party.status == WaitingEntry.Status.OFFERED
    assert (party.offer.time_slot_id, party.offer.status) == (old.pk, Status.PENDING)
    assert slot_status(old) == "reserved"


def test_a_pending_hold_moved_keeps_its_end_and_its_job(
    job_store, django_capture_on_commit_callbacks
):
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    with django_capture_on_commit_callbacks(execute=True):
        hold = reserve(old)
    ends = hold.expires_at

    with django_capture_on_commit_callbacks(execute=True):
        changes.reservation_move(reservation=hold, time_slot_id=new.pk)

    hold.refresh_from_db()
    assert (hold.time_slot_id, hold.status, hold.expires_at) == (new.pk, Status.PENDING, ends)
    assert job_store.jobs()[HOLD_END.job_id(hold.pk)] == ends
    assert (slot_status(new), slot_status(old)) == ("reserved", "active")
    event = hold.events.last()
    assert (event.from_status, event.to_status) == ("pending", "pending")


def test_a_hold_moved_to_a_game_that_starts_before_its_end_ends_at_that_start(
    job_store, settings, django_capture_on_commit_callbacks
):
    settings.CUSTOMER_RESCHEDULE_HOURS = 0
    room = RoomFactory()
    now = timezone.now()
    old = TimeSlotFactory(room=room, starts_at=now + timedelta(hours=5))
    soon = TimeSlotFactory(room=room, starts_at=now + timedelta(minutes=20))
    with django_capture_on_commit_callbacks(execute=True):
        hold = reserve(old, hold_seconds=3600)

    with django_capture_on_commit_callbacks(execute=True):
        changes.reservation_move(reservation=hold, time_slot_id=soon.pk)

    hold.refresh_from_db()
    assert hold.expires_at == soon.starts_at
    assert job_store.jobs()[HOLD_END.job_id(hold.pk)] == soon.starts_at


def test_a_lapsed_hold_on_the_target_is_reclaimed():
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    booking = paid(old)
    stale = reserve(new, customer_email="eve@example.com")
    Reservation.objects.filter(pk=stale.pk).update(expires_at=timezone.now())

    changes.reservation_move(reservation=booking, time_slot_id=new.pk)

    stale.refresh_from_db()
    assert (stale.status, stale.cancellation_reason) == (Status.CANCELLED, "expired")
    assert stale.events.last().cause == "reclaim"
    booking.refresh_from_db()
    assert booking.time_slot_id == new.pk


def test_a_lapsed_hold_on_the_target_goes_to_its_waiting_list_and_the_move_is_refused():
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    booking = paid(old)
    stale = reserve(new, customer_email="eve@example.com")
    party = join(new, "ada@example.com")
    Reservation.objects.filter(pk=stale.pk).update(expires_at=timezone.now())

    with pytest.raises(errors.SlotTaken):
        changes.reservation_move(reservation=booking, time_slot_id=new.pk)

    booking.refresh_from_db()
    assert (booking.time_slot_id, booking.status) == (old.pk, Status.PAID)
    assert slot_status(old) == "reserved"
    party.refresh_from_db()
    assert party.status == WaitingEntry.Status.OFFERED  # the hand-over committed


# Refusals: 409 or 400, and nothing changed ----------------------------------------


def test_a_move_within_the_reschedule_hours_is_409_and_changes_nothing(api, settings):
    settings.CUSTOMER_RESCHEDULE_HOURS = 24
    room = RoomFactory()
    old, new = slots(room, 0.9, 3)  # the old game starts in under 22 hours
    booking = paid(old)
    before = state(booking)

    response = api(f"/reservations/{booking.token}/move/", {"slot_id": new.pk})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "too_late_to_change"
    assert "24 hours" in response.json()["error"]["message"]
    assert state(booking) == before


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        ("taken", 409, "slot_taken"),
        ("started", 409, "slot_unavailable"),
        ("closed", 409, "slot_closed"),
        ("venue_closed", 409, "slot_closed"),
        ("other_room", 400, "invalid"),
        ("its_own", 400, "invalid"),
        ("unknown", 404, "slot_not_found"),
    ],
)
def test_a_move_to_a_slot_that_cannot_be_had_is_refused_and_changes_nothing(
    api, target, status, code
):
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    booking = paid(old)
    if target == "taken":
        reserve(new, customer_email="eve@example.com")
    elif target == "started":
        TimeSlot.objects.filter(pk=new.pk).update(
            starts_at=timezone.now() - timedelta(minutes=5),
            ends_at=timezone.now() + timedelta(minutes=55),
        )
    elif target in ("closed", "venue_closed"):
        Closure.objects.create(
            room=room if target == "closed" else None,
            starts_at=new.starts_at + timedelta(minutes=30),
            ends_at=new.starts_at + timedelta(hours=3),
            reason="Repairs",
        )
    elif target == "other_room":
        new = TimeSlotFactory(room=RoomFactory(), starts_at=new.starts_at)
    elif target == "its_own":
        new = old
    slot_id = 999_999 if target == "unknown" else new.pk
    before = state(booking)

    response = api(f"/reservations/{booking.token}/move/", {"slot_id": slot_id})

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert state(booking) == before


def test_a_cancelled_or_lapsed_reservation_cannot_be_moved(api):
    room = RoomFactory()
    old, other, new = slots(room, 5, 6, 7)
    cancelled = reserve(old)
    api(f"/reservations/{cancelled.token}/cancel/")
    lapsed = reserve(other, customer_email="eve@example.com")
    Reservation.objects.filter(pk=lapsed.pk).update(expires_at=timezone.now())

    assert api(f"/reservations/{cancelled.token}/move/", {"slot_id": new.pk}).json()["error"][
        "code"
    ] == ("already_cancelled")
    assert api(f"/reservations/{lapsed.token}/move/", {"slot_id": new.pk}).json()["error"][
        "code"
    ] == ("hold_expired")
    assert slot_status(new) == "active"


def test_an_unknown_field_is_400(api):
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    booking = paid(old)

    response = api(f"/reservations/{booking.token}/move/", {"time_slot": new.pk})

    assert response.status_code == 400
    booking.refresh_from_db()
    assert booking.time_slot_id == old.pk


# The race: a move and a new customer want the same slot ---------------------------


@pytest.mark.django_db(transaction=True)
def test_a_move_racing_a_new_customer_for_a_slot_gives_it_to_exactly_one():
    room = RoomFactory()
    winners = []
    for round_ in range(8):
        old, target = slots(room, 5 + round_, 5.5 + round_)
        booking = paid(old, email=f"john{round_}@example.com")

        def move(booking=booking, target=target) -> str:
            changes.reservation_move(reservation=booking, time_slot_id=target.pk)
            return "moved"

        def newcomer(target=target, round_=round_) -> str:
            reservation_create(
                time_slot_id=target.pk,
                customer_name="Eve",
                customer_email=f"eve{round_}@example.com",
                party_size=3,
            )
            return "reserved"

        outcome = run_together(move, newcomer)

        assert outcome["slot_taken"] == 1, outcome
        [holder] = Reservation.objects.filter(
            time_slot=target, status__in=[Status.PENDING, Status.PAID]
        )
        booking.refresh_from_db()
        assert booking.status == Status.PAID
        if outcome["moved"]:
            assert holder.pk == booking.pk
            assert slot_status(old) == "active"
        else:
            assert holder.customer_email == f"eve{round_}@example.com"
            assert booking.time_slot_id == old.pk  # the loser keeps the time they had
            assert slot_status(old) == "reserved"
        assert slot_status(target) == "reserved"
        winners.append("move" if outcome["moved"] else "newcomer")
    print(f"\nwho got the slot: {winners}")


# The pages ------------------------------------------------------------------------


def test_change_time_lists_the_free_slots_and_moves_to_the_one_chosen(client):
    room = RoomFactory()
    old, free, taken = slots(room, 5, 5 + 1 / 12, 5 + 2 / 12)
    booking = paid(old)
    reserve(taken, customer_email="eve@example.com")
    page = client.get(f"/reservations/{booking.token}/")
    assert f"/reservations/{booking.token}/move/" in page.content.decode()
    day = timezone.localdate(free.starts_at).isoformat()

    listing = client.get(f"/reservations/{booking.token}/move/?date={day}").content.decode()

    assert f'value="{free.key}"' in listing
    assert f'value="{taken.key}"' not in listing
    assert f'value="{old.key}"' not in listing

    response = client.post(f"/reservations/{booking.token}/move/", {"slot": free.key}, follow=True)

    assert "Your booking is moved to" in response.content.decode()
    booking.refresh_from_db()
    assert booking.time_slot_id == free.pk


def test_change_time_to_a_slot_taken_meanwhile_says_so_and_keeps_the_booking(client):
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    booking = paid(old)
    reserve(new, customer_email="eve@example.com")

    response = client.post(f"/reservations/{booking.token}/move/", {"slot": new.key}, follow=True)

    assert errors.SlotTaken.default_message in response.content.decode()
    booking.refresh_from_db()
    assert booking.time_slot_id == old.pk


def test_a_hold_is_moved_from_its_page_and_stays_a_hold(client):
    room = RoomFactory()
    old, new = slots(room, 5, 6)
    hold = reserve(old)
    ends = hold.expires_at
    assert "Change time" in client.get(f"/reservations/{hold.token}/").content.decode()

    response = client.post(f"/reservations/{hold.token}/move/", {"slot": new.key}, follow=True)

    assert "Your slot is held" in response.content.decode()
    hold.refresh_from_db()
    assert (hold.time_slot_id, hold.status, hold.expires_at) == (new.pk, Status.PENDING, ends)


def test_change_time_too_close_to_the_game_offers_no_times(client, settings):
    settings.CUSTOMER_RESCHEDULE_HOURS = 24
    room = RoomFactory()
    old, _ = slots(room, 0.5, 0.6)
    booking = paid(old)

    assert "Change time" not in client.get(f"/reservations/{booking.token}/").content.decode()
    listing = client.get(f"/reservations/{booking.token}/move/").content.decode()

    assert "It starts too soon to be moved online" in listing
    assert "Move to" not in listing


def test_change_time_of_a_cancelled_reservation_goes_back_to_its_page(client):
    hold = reserve(slots(RoomFactory(), 5)[0])
    client.post(f"/reservations/{hold.token}/cancel/")

    response = client.get(f"/reservations/{hold.token}/move/")

    assert (response.status_code, response["Location"]) == (302, f"/reservations/{hold.token}/")
