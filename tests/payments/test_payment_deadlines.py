"""
The payment deadline in a running worker, in real time, against a local Stripe.

The customer starts paying in this process (``payment_start`` against
localstripe); ``manage.py start_scheduler`` runs the deadlines, pointed at
localstripe, at an unreachable address or at a server that never answers.
Each test reads back the hold's lateness from its audit trail and the
PaymentIntent's status from the provider itself. Holds of a few seconds;
every wait polls with a deadline.
"""

import time

import pytest
import stripe

from apps.payments.models import Payment, ProviderPayment
from apps.payments.services import payment_start
from apps.reservations.models import Reservation, ReservationEvent
from apps.rooms.models import TimeSlot

from ..conftest import wait_for
from ..factories import TimeSlotFactory, reserve
from .test_stripe import at_provider

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

LEAD = 1.0  # PAYMENT_CHECK_LEAD_SECONDS: the provider is asked this long before a hold ends
# A hold expired by its job within this of its end is on time. Measured:
# mostly under 0.1 s on SQLite and PostgreSQL, 0.4 s at worst on a busy
# machine; a provider in the way would make it its timeout (seconds).
ON_TIME = 1.0


@pytest.fixture
def provider(localstripe, settings):
    """Stripe in this process, pointed at the local Stripe; starting to pay keeps the hold's end."""
    settings.PAYMENT_PROVIDER = "stripe"
    settings.STRIPE_SECRET_KEY = "sk_test_local"
    settings.STRIPE_API_BASE = localstripe.api_base
    settings.STRIPE_TIMEOUT_SECONDS = 3
    # The jobs are scheduled here, when the customer starts paying.
    settings.PAYMENT_CHECK_LEAD_SECONDS = LEAD
    settings.PAYMENT_WINDOW_SECONDS = 0
    return localstripe


def worker_settings(api_base: str, **more: str) -> dict[str, str]:
    return {
        "PAYMENT_PROVIDER": "stripe",
        "STRIPE_SECRET_KEY": "sk_test_local",
        "STRIPE_API_BASE": api_base,
        "STRIPE_TIMEOUT_SECONDS": "3",
        "PAYMENT_CHECK_LEAD_SECONDS": str(LEAD),
        **more,
    }


def ends_after(count: int, *, slack: float = 1.5) -> float:
    """When holds may end (epoch seconds) if ``count`` are to be made first, with time to spare."""
    # Making a hold and its PaymentIntent takes up to 0.17 s on a busy machine.
    return time.time() + LEAD + slack + 0.25 * count


def holds(count: int, first_end: float, *, paying: bool, name: str) -> list[Reservation]:
    """
    ``count`` holds ending from ``first_end`` (epoch seconds) on, 20 ms apart.

    ``paying``: each customer started paying (a PaymentIntent at the local
    Stripe). Fails if making them took so long that a payment check may have
    come before the holds were all made.
    """
    made = []
    began = time.time()
    for n in range(count):
        reservation = reserve(
            TimeSlotFactory(),
            hold_seconds=first_end + 0.02 * n - time.time(),
            customer_email=f"{name}{n}@example.com",
        )
        if paying:
            payment_start(reservation=reservation)
        made.append(reservation)
    took = time.time() - began
    assert time.time() < first_end - LEAD - 0.5, f"making the holds took too long ({took:.2f} s)"
    return made


def status(reservation: Reservation) -> str:
    return Reservation.objects.values_list("status", flat=True).get(pk=reservation.pk)


def all_expired(reservations: list[Reservation]) -> bool:
    pks = [r.pk for r in reservations]
    return not Reservation.objects.filter(pk__in=pks, status=Reservation.Status.PENDING).exists()


def lateness(reservations: list[Reservation]) -> dict[int, float]:
    """Reservation id -> seconds from its hold's end to its expiry by its job (the audit trail)."""
    events = ReservationEvent.objects.filter(
        reservation__in=reservations, to_status="cancelled", lateness_seconds__isnull=False
    )
    found = list(events.values_list("reservation_id", "lateness_seconds", "cause"))
    assert sorted(pk for pk, _, _ in found) == sorted(r.pk for r in reservations)  # once each
    assert {cause for _, _, cause in found} == {"expiry_job"}
    return {pk: seconds for pk, seconds, _ in found}


def assert_on_time(reservations: list[Reservation]) -> None:
    late = lateness(reservations)
    print(f"expiry lateness: max {max(late.values()):.3f} s over {len(late)} holds")
    assert max(late.values()) < ON_TIME, late
    assert min(late.values()) >= 0, late
    for reservation in Reservation.objects.filter(pk__in=late):
        assert reservation.cancellation_reason == "expired"
    slots = [r.time_slot_id for r in reservations]
    assert not TimeSlot.objects.filter(pk__in=slots, status=TimeSlot.Status.RESERVED).exists()


def intents(localstripe) -> dict[str, str]:
    """PaymentIntent id -> status, as the provider has them."""
    found = localstripe.client.v1.payment_intents.list({"limit": 100})
    return {intent.id: intent.status for intent in found.data}


def payment_of(reservation: Reservation) -> ProviderPayment:
    return ProviderPayment.objects.get(reservation=reservation)


def test_a_hold_lapsing_unpaid_expires_on_time_and_its_intent_is_cancelled(provider, start_worker):
    start_worker(**worker_settings(provider.api_base))
    [reservation] = holds(1, ends_after(1), paying=True, name="ada")
    intent_id = payment_of(reservation).provider_id
    assert intents(provider) == {intent_id: "requires_payment_method"}

    assert wait_for(lambda: status(reservation) == "cancelled", timeout=5)
    assert_on_time([reservation])
    reservation.refresh_from_db()
    cancelled = wait_for(lambda: intents(provider)[intent_id] == "canceled", timeout=5)
    assert cancelled, intents(provider)
    after_expiry = time.time() - reservation.cancelled_at.timestamp()
    print(f"intent cancelled at the provider {after_expiry:.3f} s after the expiry")

    # Recorded just after the provider's answer.
    noted = reservation.events.filter(cause="payment", detail__contains="voided")
    assert wait_for(noted.exists, timeout=2)
    row = payment_of(reservation)
    assert (row.outcome, row.reason, row.status) == ("voided", "hold_lapsed", "canceled")
    assert not Payment.objects.exists()  # nothing was charged
    with pytest.raises(stripe.InvalidRequestError):  # no late authorisation can follow
        provider.authorise(intent_id)


def test_an_intent_authorised_before_the_check_is_captured_and_paid_within_the_hold(
    provider, start_worker
):
    start_worker(**worker_settings(provider.api_base))
    [reservation] = holds(1, ends_after(1), paying=True, name="bo")
    hold_end = reservation.expires_at.timestamp()
    intent_id = payment_of(reservation).provider_id
    # The customer's card goes through shortly before the check, nobody tells us.
    wait_for(lambda: time.time() >= hold_end - LEAD - 0.5, timeout=3, interval=0.01)
    assert provider.authorise(intent_id).status == "requires_capture"
    assert time.time() < hold_end - LEAD

    assert wait_for(lambda: payment_of(reservation).outcome, timeout=5), payment_of(reservation)
    paid = reservation.events.get(to_status="paid")
    # Paid by the check, within the hold it had before the check kept the slot.
    assert hold_end - LEAD <= paid.at.timestamp() < hold_end
    assert paid.cause == "payment"
    assert not reservation.events.filter(to_status="cancelled").exists()
    assert at_provider(provider, intent_id) == ("succeeded", True)
    row = payment_of(reservation)
    assert (row.outcome, row.status) == ("captured", "succeeded")
    payment = Payment.objects.get()
    assert (payment.reference, payment.outcome, payment.source) == (
        intent_id,
        "applied",
        "provider",
    )
    assert payment.reservation_id == reservation.pk == row.reservation_id
    assert TimeSlot.objects.get(pk=reservation.time_slot_id).status == "reserved"


def test_with_the_provider_down_holds_expire_on_time_and_their_intents_are_cancelled_once_back(
    provider, start_worker
):
    worker = start_worker(**worker_settings(provider.api_base))
    paying = holds(20, ends_after(20, slack=2.5), paying=True, name="cy")
    intent_ids = set(ProviderPayment.objects.values_list("provider_id", flat=True))
    assert set(intents(provider).values()) == {"requires_payment_method"}
    provider.stop()
    try:
        assert time.time() < paying[0].expires_at.timestamp() - LEAD  # before any check

        assert wait_for(lambda: all_expired(paying), timeout=10), worker.log()
        assert_on_time(paying)
        # Every payment was asked about and is waiting for the provider, none settled.
        waiting = lambda: all(  # noqa: E731
            f"Payment {intent} waits for the provider" in worker.log() for intent in intent_ids
        )
        assert wait_for(waiting, timeout=5), worker.log()
        assert not ProviderPayment.objects.exclude(outcome="").exists()
        time.sleep(1)  # down a while longer: the retries back off
    finally:
        provider.start()
    back = time.monotonic()

    cancelled = lambda: set(intents(provider).values()) == {"canceled"}  # noqa: E731
    assert wait_for(cancelled, timeout=15, interval=0.2), (intents(provider), worker.log())
    print(f"all intents cancelled {time.monotonic() - back:.3f} s after the provider came back")
    assert set(intents(provider)) == intent_ids
    settled = ProviderPayment.objects.values_list("outcome", "reason")
    assert wait_for(lambda: set(settled.all()) == {("voided", "hold_lapsed")}, timeout=2)


def test_with_the_provider_hanging_every_hold_still_expires_on_time(
    provider, hanging_server, start_worker
):
    start_worker(**worker_settings(hanging_server.url, STRIPE_TIMEOUT_SECONDS="30"))
    # More payment checks than the default executor has threads (20), falling
    # due before the first hold ends: were they run there, the hold's end
    # would queue behind them. Then holds with and without payments end one
    # after another while the outside executor's threads wait for the provider.
    ends = ends_after(31)
    first = holds(22, ends, paying=True, name="di")
    later = [
        *holds(3, ends + 0.6, paying=True, name="ed"),
        *holds(3, ends + 1.2, paying=False, name="fay"),
        *holds(3, ends + 1.8, paying=True, name="gus"),
    ]
    everyone = first + later

    stuck = wait_for(lambda: len(hanging_server.connections) >= 2, timeout=ends - time.time())
    assert stuck and time.time() < ends  # both threads stuck before the first hold ends
    assert wait_for(lambda: all_expired(everyone), timeout=15)
    assert_on_time(everyone)
    # The provider never answered: every payment is still open, its intent untouched.
    assert ProviderPayment.objects.count() == 28
    assert not ProviderPayment.objects.exclude(outcome="").exists()
    assert set(intents(provider).values()) == {"requires_payment_method"}
    assert len(hanging_server.connections) == 2  # the outside executor's two threads


def test_a_runner_stopped_while_the_provider_hangs_hands_over_at_once(
    provider, hanging_server, start_worker
):
    # Two workers: the runner, and a standby that takes over within 1.5 s of
    # the runner lock's release. The provider never answers and gives up only
    # after 20 s; the runner is stopped while its payment threads wait for it.
    failover = 1.5
    env = worker_settings(
        hanging_server.url, STRIPE_TIMEOUT_SECONDS="20", SCHEDULER_FAILOVER_SECONDS=str(failover)
    )
    first = start_worker(**env)
    assert wait_for(lambda: "This process is the runner" in first.log(), timeout=10)
    second = start_worker(**env)
    ends = ends_after(8, slack=1.0)
    paying = holds(2, ends, paying=True, name="hy")
    assert wait_for(lambda: len(hanging_server.connections) >= 2, timeout=ends - time.time() + 1)
    stopped = time.time()
    first.terminate()  # SIGTERM, as a deploy does
    later = [
        *holds(3, stopped + failover + 1.0, paying=False, name="ivy"),
        *holds(3, stopped + failover + 1.5, paying=True, name="jo"),
    ]

    assert wait_for(lambda: "This process is the runner" in second.log(), timeout=failover + 2)
    assert time.time() - stopped < failover + 2  # not after the provider's 20 s
    assert wait_for(lambda: all_expired(paying + later), timeout=10), second.log()
    assert_on_time(later)


def test_a_hanging_provider_does_not_hold_the_customers_messages_back(
    provider, hanging_server, start_worker, mail_server
):
    start_worker(
        **worker_settings(hanging_server.url, STRIPE_TIMEOUT_SECONDS="30"),
        EMAIL_URL=mail_server.url,
        EMAIL_TIMEOUT="5",
    )
    ends = ends_after(6)
    paying = holds(6, ends, paying=True, name="kim")
    assert wait_for(lambda: len(hanging_server.connections) >= 2, timeout=ends - time.time() + 1)

    assert wait_for(lambda: all_expired(paying), timeout=5)
    lapsed = lambda: [m for m in mail_server.received if "Hold ended" in m["Subject"]]  # noqa: E731
    assert wait_for(lambda: len(lapsed()) == 6, timeout=5), [
        m["Subject"] for m in mail_server.received
    ]
    worst = max(m.arrived_at for m in lapsed()) - max(r.expires_at.timestamp() for r in paying)
    print(f"the last 'hold lapsed' message arrived {worst:.2f} s after its hold's end")
    assert worst < 2.0
