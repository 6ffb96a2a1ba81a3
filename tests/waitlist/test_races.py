"""
Races at the moment a hold that parties wait for lapses: the waiting party always wins it.

Threads start together (``run_together``) on both databases; round after
round, every ending is checked. Time is injected where the race is about one
instant (a hold ending at ``end``, a join a millisecond before it), and real
where the scheduler and the reads take part.
"""

import contextlib
import time
from collections import Counter
from datetime import timedelta

import pytest
from apscheduler.triggers.date import DateTrigger
from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.reservations import errors, waitlist
from apps.reservations.deadlines import HOLD_END
from apps.reservations.models import Reservation, ReservationEvent, WaitingEntry
from apps.reservations.services import lapsed_holds_release, reservation_create
from escape_rooms_backend import timeline
from escape_rooms_backend.lifecycle import build_scheduler
from escape_rooms_backend.scheduler import cancel_expired_reservations, start_scheduler

from ..conftest import run_together, wait_for
from ..factories import RoomFactory, TimeSlotFactory, reserve
from .conftest import Entry, available, holders, join, offers_per_slot

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 12


def public(slot, email: str, now=None) -> str:
    """A customer not on the list reserving ``slot``."""
    reservation_create(
        time_slot_id=slot.pk,
        customer_name="Eve Public",
        customer_email=email,
        party_size=3,
        now=now,
    )
    return "reserved"


def expiry(now=None) -> str:
    """The expiry job's work: release every lapsed hold."""
    released = lapsed_holds_release(cause=ReservationEvent.Cause.EXPIRY_JOB, now=now)
    return "expired" if released else "nothing due"


def joining(slot, email: str, now=None) -> str:
    join(slot, email, now=now)
    return "joined"


def expiries_of(reservations) -> Counter[int]:
    """How many times each reservation was expired (its events to ``cancelled``)."""
    return Counter(
        ReservationEvent.objects.filter(
            reservation__in=reservations, to_status=Reservation.Status.CANCELLED
        ).values_list("reservation_id", flat=True)
    )


def public_against_the_expiry(round_: int) -> str:
    """Two customers and the job at the instant a waited-for hold ends; who released it."""
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email=f"holder{round_}@example.com")
    party = join(slot, f"ada{round_}@example.com")
    end = hold.expires_at

    outcome = run_together(
        lambda: public(slot, f"eve{round_}@example.com", now=end),
        lambda: expiry(now=end),
        lambda: public(slot, f"fay{round_}@example.com", now=end + timedelta(milliseconds=1)),
    )

    assert outcome["slot_taken"] == 2, outcome
    [holder] = holders(slot)
    party.refresh_from_db()
    assert (party.status, party.offer_id) == (Entry.OFFERED, holder.pk)
    assert (holder.is_offer, holder.customer_email) == (True, f"ada{round_}@example.com")
    assert offers_per_slot()[slot.pk] == 1
    assert expiries_of([hold]) == {hold.pk: 1}
    return "the job" if outcome["expired"] else "a public customer"


def test_a_public_customer_reserving_as_the_hold_lapses_never_beats_the_waiting_party():
    released_by = Counter(public_against_the_expiry(round_) for round_ in range(ROUNDS))

    assert not Reservation.objects.filter(customer_name="Eve Public").exists()
    print(f"\nwho released the hold ({ROUNDS} rounds): {dict(released_by)}")


@pytest.mark.integration
def test_public_customers_trying_all_through_the_lapse_never_get_a_waited_for_slot():
    # The scheduler's jobs and three customers who keep trying to reserve,
    # from before the holds end until after: every slot goes to its party.
    start_scheduler()
    room = RoomFactory(max_players=6)
    slots = [TimeSlotFactory(room=room) for _ in range(6)]
    holds = [
        reserve(slot, customer_email=f"holder{i}@example.com", hold_seconds=1 + i / 10)
        for i, slot in enumerate(slots)
    ]
    parties = [join(slot, f"party{i}@example.com") for i, slot in enumerate(slots)]
    until = holds[-1].expires_at.timestamp() + 0.3

    def keep_trying(customer: int) -> str:
        while time.time() < until:
            for slot in slots:
                with contextlib.suppress(errors.SlotTaken):
                    return public(slot, f"eve{customer}@example.com")
        return "refused every time"

    outcome = run_together(*[lambda i=i: keep_trying(i) for i in range(3)])

    assert outcome == {"refused every time": 3}
    assert wait_for(
        lambda: all(p.status == Entry.OFFERED for p in WaitingEntry.objects.all()), timeout=3
    )
    for slot, party in zip(slots, parties, strict=True):
        party.refresh_from_db()
        assert [h.pk for h in holders(slot)] == [party.offer_id]
    assert offers_per_slot() == {slot.pk: 1 for slot in slots}
    assert expiries_of(holds) == {hold.pk: 1 for hold in holds}


def joining_against_the_expiry(round_: int) -> str:
    """A party joins a millisecond before a hold nobody waits for ends, the expiry at its end."""
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email=f"holder{round_}@example.com")
    end = hold.expires_at

    outcome = run_together(
        lambda: joining(slot, f"bo{round_}@example.com", now=end - timedelta(milliseconds=1)),
        lambda: expiry(now=end),
    )
    # The job tries again when it found the slot locked (PostgreSQL skips it).
    expiry(now=end + timedelta(milliseconds=500))

    entries = list(WaitingEntry.objects.filter(time_slot=slot))
    if outcome["joined"]:
        [entry] = entries
        assert (entry.status, entry.offer_id) == (Entry.OFFERED, holders(slot)[0].pk)
        assert offers_per_slot()[slot.pk] == 1
    else:
        assert outcome["slot_available"] == 1, outcome
        assert (entries, holders(slot)) == ([], [])
        assert available(slot)
        assert offers_per_slot()[slot.pk] == 0
    assert expiries_of([hold]) == {hold.pk: 1}
    return "offered" if outcome["joined"] else "told to reserve"


def test_a_party_joining_as_the_hold_lapses_is_offered_it_or_told_to_reserve_never_both():
    endings = Counter(joining_against_the_expiry(round_) for round_ in range(ROUNDS))

    print(f"\na party joining as the hold lapses ({ROUNDS} rounds): {dict(endings)}")


def joining_behind_against_the_expiry(round_: int) -> None:
    """Two parties join as a hold Ada waits for ends, the expiry at its end."""
    slot = TimeSlotFactory()
    hold = reserve(slot, customer_email=f"holder{round_}@example.com")
    first = join(slot, f"ada{round_}@example.com")
    end = hold.expires_at

    outcome = run_together(
        lambda: joining(slot, f"bo{round_}@example.com", now=end - timedelta(milliseconds=1)),
        lambda: joining(slot, f"cy{round_}@example.com", now=end),
        lambda: expiry(now=end),
    )
    expiry(now=end + timedelta(milliseconds=500))

    assert outcome["joined"] == 2, outcome
    first.refresh_from_db()
    assert (first.status, first.offer_id) == (Entry.OFFERED, holders(slot)[0].pk)
    later = WaitingEntry.objects.filter(time_slot=slot).exclude(pk=first.pk)
    assert {e.status for e in later} == {Entry.WAITING}
    assert sorted(waitlist.offers.waiting_place(e) for e in later) == [1, 2]
    assert offers_per_slot()[slot.pk] == 1
    assert expiries_of([hold]) == {hold.pk: 1}


def test_a_party_joining_as_the_hold_lapses_waits_behind_the_one_already_waiting():
    for round_ in range(ROUNDS):
        joining_behind_against_the_expiry(round_)


def lapsed_holds(slots, round_: int, now) -> list[Reservation]:
    """A hold on each slot that ended a moment before ``now`` and was not expired."""
    return [
        reserve(
            slot,
            customer_email=f"holder{round_}-{slot.pk}@example.com",
            now=now - timedelta(seconds=60),
            hold_seconds=59.9,
        )
        for slot in slots
    ]


def reclaiming_against_the_expiry(round_: int) -> None:
    """A customer reclaims one lapsed slot of a room as the job offers the other."""
    now = timezone.now()
    room = RoomFactory(max_players=6)
    free, waited_for = TimeSlotFactory(room=room), TimeSlotFactory(room=room)
    holds = lapsed_holds([free, waited_for], round_, now)
    party = join(waited_for, f"ada{round_}@example.com", now=now - timedelta(seconds=30))

    outcome = run_together(lambda: public(free, f"eve{round_}@example.com"), expiry)
    expiry()  # a skipped row's retry

    assert outcome["reserved"] == 1, outcome
    assert [h.customer_email for h in holders(free)] == [f"eve{round_}@example.com"]
    party.refresh_from_db()
    assert [h.pk for h in holders(waited_for)] == [party.offer_id]
    assert expiries_of(holds) == {hold.pk: 1 for hold in holds}


def test_a_customer_reclaiming_a_lapsed_hold_while_the_job_offers_the_next_slot_succeeds():
    # Two slots of one room whose holds lapsed: one nobody waits for, which a
    # customer reclaims, and one the job hands to its waiting party. (On
    # PostgreSQL the customer's lock on the room's row once deadlocked them.)
    for round_ in range(ROUNDS):
        reclaiming_against_the_expiry(round_)


def every_way_at_once(round_: int) -> None:
    """The job twice, the sweep, a read and a customer, on four holds that lapsed a moment ago."""
    now = timezone.now()
    room = RoomFactory(max_players=6)
    slots = [TimeSlotFactory(room=room) for _ in range(4)]
    holds = lapsed_holds(slots, round_, now)
    first = [
        join(s, f"ada{round_}-{s.pk}@example.com", now=now - timedelta(seconds=30)) for s in slots
    ]
    second = [
        join(s, f"bo{round_}-{s.pk}@example.com", now=now - timedelta(seconds=20)) for s in slots
    ]

    outcome = run_together(
        expiry,
        expiry,
        lambda: str(cancel_expired_reservations()),
        lambda: str(waitlist.waiting_lists_refresh([slot.pk for slot in slots])),
        lambda: public(slots[0], f"eve{round_}@example.com"),
    )
    expiry()  # a skipped row's retry

    assert outcome["slot_taken"] == 1, outcome
    assert expiries_of(holds) == {hold.pk: 1 for hold in holds}, outcome
    counts = offers_per_slot()
    for slot, ada, bo in zip(slots, first, second, strict=True):
        ada.refresh_from_db(), bo.refresh_from_db()
        assert (ada.status, ada.offer_id, bo.status) == (
            Entry.OFFERED,
            holders(slot)[0].pk,
            Entry.WAITING,
        )
        assert counts[slot.pk] == 1


def test_every_way_of_releasing_lapsed_holds_at_once_makes_one_offer_per_slot():
    # The expiry job twice (two runners), the sweep, a waiting party's read
    # and a public customer, all at once.
    for round_ in range(ROUNDS // 2):
        every_way_at_once(round_)


def hold_ends_written_to(url: str, holds) -> None:
    """Write each hold's end job to the job store at ``url``, as another process would."""
    other_process = build_scheduler(
        {
            **settings.SCHEDULER_CONFIG,
            "apscheduler.jobstores.default": {"type": "sqlalchemy", "url": url},
        }
    )
    other_process.start(paused=True)
    try:
        for hold in holds:
            other_process.add_job(
                timeline.JOB_FUNC,
                trigger=DateTrigger(run_date=hold.expires_at),
                args=[HOLD_END.name, hold.pk],
                id=HOLD_END.job_id(hold.pk),
                misfire_grace_time=None,
            )
    finally:
        other_process.shutdown(wait=False)


@pytest.mark.integration
def test_two_runners_expiring_the_same_holds_make_one_offer_per_slot(start_worker, tmp_path):
    # A misconfigured pair: two workers, each the runner of a job store of its
    # own, both with a job for every hold's end, so that both release the
    # lapsed holds at the same moment.
    other_store = f"sqlite:///{tmp_path / 'other-jobs.sqlite3'}"
    first = start_worker()
    second = start_worker(SCHEDULER_JOBSTORE_URL=other_store)
    room = RoomFactory(max_players=6)
    slots = [TimeSlotFactory(room=room) for _ in range(12)]
    end = time.time() + 3  # the first hold ends then, the others 50 ms apart
    holds = [
        reserve(
            slot,
            customer_email=f"holder{i}@example.com",
            hold_seconds=end + i / 20 - time.time(),
        )
        for i, slot in enumerate(slots)
    ]
    parties = [
        (join(slot, f"ada{i}@example.com"), join(slot, f"bo{i}@example.com"))
        for i, slot in enumerate(slots)
    ]
    hold_ends_written_to(other_store, holds)  # the first's are written as the holds are made
    assert time.time() < end - 0.3, "the set-up took too long"

    released = wait_for(
        lambda: not Reservation.objects.filter(pk__in=[h.pk for h in holds], status="pending"),
        timeout=10,
    )
    time.sleep(0.5)  # a doubled offer would be made by now

    assert released, first.log() + second.log()
    assert expiries_of(holds) == {hold.pk: 1 for hold in holds}
    assert offers_per_slot() == {slot.pk: 1 for slot in slots}
    for slot, (ada, bo) in zip(slots, parties, strict=True):
        ada.refresh_from_db(), bo.refresh_from_db()
        [holder] = holders(slot)
        assert (ada.status, ada.offer_id, bo.status) == (Entry.OFFERED, holder.pk, Entry.WAITING)
    made = [worker.log().count("to waiting party") for worker in (first, second)]
    assert sum(made) == len(slots)
    print(f"\n{connection.vendor}: offers made by each runner {made}")
