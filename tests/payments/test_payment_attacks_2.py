"""
Second round of attacks on the payment deadline, the outside services' pools and the stop.

Each test shows a claim holding against one attack.
"""

import threading
import time
from datetime import timedelta

import pytest
from apscheduler.schedulers.base import STATE_STOPPED
from django.db import connection
from django.utils import timezone

from apps.payments.models import Payment, ProviderPayment
from apps.payments.services import payment_start
from apps.reservations.models import Reservation
from escape_rooms_backend import deadlines, timeline
from escape_rooms_backend import scheduler as scheduler_module
from escape_rooms_backend.lifecycle import process

from ..conftest import wait_for
from ..factories import TimeSlotFactory, reserve
from .test_payment_attacks import Proxy, kept_without_the_slot
from .test_payment_deadlines import at_provider, worker_settings

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture
def proxy(provider, settings):
    """The product talks to the local Stripe through test_payment_attacks' ``Proxy``."""
    found = Proxy(provider.api_base)
    settings.STRIPE_API_BASE = found.url
    yield found
    found.close()


def payment_kind():
    return deadlines.kind_named("payment")


@pytest.fixture
def stripe_settings(provider, settings):
    settings.PAYMENT_CHECK_LEAD_SECONDS = 1
    settings.PAYMENT_WINDOW_SECONDS = 0
    return provider


# Stop in the web process while a payment job waits on a hanging provider ---------------


def test_stop_while_a_payment_job_hangs_leaves_no_scheduler_running(
    stripe_settings, hanging_server, settings, job_store
):
    reservation = reserve(TimeSlotFactory())
    payment_start(reservation=reservation)  # an intent at the local Stripe
    # From now on the provider never answers; a request gives up after 2 s.
    settings.STRIPE_API_BASE = hanging_server.url
    settings.STRIPE_TIMEOUT_SECONDS = 2
    settings.SCHEDULER_POLL_SECONDS = 0.2
    old = scheduler_module.start_scheduler()  # the in-web scheduler (not worker mode)
    assert wait_for(lambda: process.runner and process.runner.is_runner, timeout=10)
    before = set(threading.enumerate())
    timeline.deadline_schedule(payment_kind(), reservation.pk, timezone.now())
    assert wait_for(lambda: len(hanging_server.connections) >= 1, timeout=10)

    scheduler_module.stop_scheduler()  # as atexit does; returns after the provider gave up

    time.sleep(0.5)
    # The work is handed back: the retry is in the store for the next runner.
    assert payment_kind().job_id(reservation.pk) in job_store.jobs()
    leaked = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    # The job's retry, written after the shutdown, went through process.writable(),
    # which started the stopped scheduler again (paused), and nothing stops it.
    assert old.state == STATE_STOPPED, (old.state, leaked)
    assert process.scheduler is None or process.scheduler is not old


# Runners stopped (SIGTERM) and killed (SIGKILL) over and over while captures are in flight ----


def test_runners_terminated_and_killed_while_captures_fly_capture_each_intent_once(
    proxy, provider, start_worker, settings
):
    settings.PAYMENT_CHECK_LEAD_SECONDS = 1
    settings.PAYMENT_WINDOW_SECONDS = 0
    env = worker_settings(
        proxy.url,
        SCHEDULER_FAILOVER_SECONDS="1.5",
        PAYMENT_IN_FLIGHT_GRACE_SECONDS="5",
    )
    # Every capture is done at Stripe at once and answered 1.5 s later: a
    # runner stopped or killed meanwhile may or may not hear of it.
    proxy.rules["/capture"] = ("delay", 1.5)
    workers = [start_worker(**env), start_worker(**env)]
    count = 10
    first_end = time.time() + 4.0
    paying = []
    for n in range(count):
        reservation = reserve(
            TimeSlotFactory(),
            hold_seconds=first_end + 0.6 * n - time.time(),
            customer_email=f"churn{n}@example.com",
        )
        row = payment_start(reservation=reservation)
        provider.authorise(row.provider_id)  # the card went through; nobody told us
        paying.append(reservation)
    churn_until = first_end + 0.6 * count + 2
    kills = 0
    while time.time() < churn_until:
        time.sleep(0.7)
        victim = workers.pop(0)
        if kills % 2:
            victim.kill()  # SIGKILL: no stop at all
        else:
            victim.terminate()  # SIGTERM: the stop that does not wait for the provider
        kills += 1
        workers.append(start_worker(**env))
    proxy.rules.clear()

    pks = [r.pk for r in paying]
    rows = ProviderPayment.objects.filter(reservation_id__in=pks)
    settled = lambda: not rows.filter(outcome="").exists()  # noqa: E731
    assert wait_for(settled, timeout=40, interval=0.2), [
        (r.reservation_id, r.status, r.outcome, r.capture_attempted_at) for r in rows.all()
    ]
    found = {i["id"]: i for i in provider.client.v1.payment_intents.list({"limit": 100}).data}
    for row in rows.all():
        status_at_stripe, captured = at_provider(provider, row.provider_id)
        reservation = Reservation.objects.get(pk=row.reservation_id)
        payments = Payment.objects.filter(reference=row.provider_id)
        if captured:
            # Captured once, recorded once, and the reservation is paid with it (or refunded).
            assert payments.count() == 1, row.provider_id
            payment = payments.get()
            assert (reservation.status, reservation.payment_reference) == (
                "paid",
                row.provider_id,
            ) or payment.refund_reference, (reservation.status, payment.outcome)
        else:
            assert not payments.exists()
            assert reservation.status != "paid", (row.provider_id, status_at_stripe)
        assert row.provider_id in found
    assert kept_without_the_slot(provider) == []
    # No reservation paid by anything but its own captured intent.
    for reservation in Reservation.objects.filter(pk__in=pks, status="paid"):
        assert at_provider(provider, reservation.payment_reference) == ("succeeded", True)
    print(
        f"{kills} runners stopped or killed; "
        f"{Reservation.objects.filter(pk__in=pks, status='paid').count()}/{count} paid; "
        f"{sum('/capture' in seen for seen in proxy.seen)} capture requests"
    )


# A job stored by the first release, in the shared "outside" executor ---------------------


def test_a_payment_job_stored_in_the_old_shared_outside_executor_still_runs(
    stripe_settings, start_worker, job_store
):
    from apscheduler.triggers.date import DateTrigger

    reservation = reserve(TimeSlotFactory(), hold_seconds=120)
    row = payment_start(reservation=reservation)
    stripe_settings.authorise(row.provider_id)
    scheduler = process.writable()
    job_id = payment_kind().job_id(reservation.pk)
    scheduler.add_job(
        timeline.JOB_FUNC,
        trigger=DateTrigger(run_date=timezone.now()),
        args=["payment", reservation.pk],
        id=job_id,
        replace_existing=True,
        executor="outside",  # as the first release stored it
        misfire_grace_time=None,
        coalesce=True,
        max_instances=2,
    )
    scheduler_module.stop_scheduler()
    assert job_id in job_store.jobs()

    worker = start_worker(**worker_settings(stripe_settings.api_base))

    paid = lambda: Reservation.objects.get(pk=reservation.pk).status == "paid"  # noqa: E731
    assert wait_for(paid, timeout=15), worker.log()
    assert at_provider(stripe_settings, row.provider_id) == ("succeeded", True)
    assert job_id not in job_store.jobs()
    # Not the sweep's doing: the hold ends in two minutes, outside the check's lead.
    assert "Executor lookup" not in worker.log()


# A rolling deploy: the previous release's worker is still the runner ----------------------


def test_a_runner_of_the_previous_release_runs_the_deliveries_this_release_writes(
    job_store, settings
):
    from apps.messaging.models import Message
    from escape_rooms_backend.lifecycle import build_scheduler

    reserve(TimeSlotFactory(), hold_seconds=120)  # queues its "hold placed" message
    message = Message.objects.get()
    # The previous release's scheduler: the mail's pool, none for payments
    # (a kind it does not know: the new runner's sweep settles those).
    old = build_scheduler(settings.SCHEDULER_CONFIG)
    old.remove_executor("payment", shutdown=False)
    old.start()
    try:
        # This release writes the delivery job (a web process, say).
        delivery = deadlines.kind_named("delivery")
        assert timeline.deadline_schedule(delivery, message.pk, timezone.now())
        old.wakeup()

        sent = wait_for(
            lambda: Message.objects.get(pk=message.pk).status == Message.Status.SENT, timeout=10
        )
    finally:
        old.shutdown(wait=True)
    assert sent


# never_due: a reservation that had a payment deadline, judged by today's provider --------


def test_a_payment_settled_after_the_provider_was_switched_leaves_no_job(
    stripe_settings, job_store, settings
):
    from apps.payments.services import payment_settle

    reservation = reserve(TimeSlotFactory(), hold_seconds=600)
    row = payment_start(reservation=reservation)
    job_id = payment_kind().job_id(reservation.pk)
    assert wait_for(lambda: job_id in job_store.jobs(), timeout=2)
    stripe_settings.authorise(row.provider_id)
    settings.PAYMENT_PROVIDER = "simulated"  # the operator switches; open payments stay Stripe's

    payment_settle(row)  # the customer's page, or Stripe's webhook

    assert Reservation.objects.get(pk=reservation.pk).status == "paid"
    assert at_provider(stripe_settings, row.provider_id) == ("succeeded", True)
    report = timeline.deadlines_reconcile()
    orphans = [(d.kind, d.job_id) for d in report.drift if d.deadline == "payment"]
    assert job_id not in job_store.jobs(), orphans
    assert orphans == []


def test_a_cancel_racing_the_start_of_payment_moves_the_settle_job_to_the_cancel(
    stripe_settings, job_store
):
    from apps.reservations.services import reservation_cancel

    reservation = reserve(TimeSlotFactory(), hold_seconds=600)
    read_by_the_cancel = Reservation.objects.get(pk=reservation.pk)  # the cancel's request
    row = payment_start(reservation=Reservation.objects.get(pk=reservation.pk))  # the pay click
    job_id = payment_kind().job_id(reservation.pk)
    assert wait_for(lambda: job_id in job_store.jobs(), timeout=2)

    reservation_cancel(reservation=read_by_the_cancel)

    cancelled = Reservation.objects.get(pk=reservation.pk)
    assert cancelled.status == "cancelled"
    assert ProviderPayment.objects.get(pk=row.pk).outcome == ""  # the intent is still open
    run_time = job_store.jobs().get(job_id)
    # Due at once (settle_due_at of a cancelled reservation), not at the old hold's end.
    assert run_time is not None and run_time <= cancelled.cancelled_at + timedelta(seconds=1), (
        run_time,
        cancelled.cancelled_at,
    )


# A capture that is never answered, for longer than the grace, with the worker running ----


def test_a_capture_never_answered_keeps_the_slot_past_the_grace_until_the_game_starts(
    stripe_settings, start_worker, settings
):
    from apps.rooms.models import TimeSlot

    grace = 8.0
    hanging = Proxy(stripe_settings.api_base)
    try:
        starts_at = timezone.now() + timedelta(seconds=22)
        slot = TimeSlotFactory(starts_at=starts_at, ends_at=starts_at + timedelta(hours=1))
        reservation = reserve(slot, hold_seconds=4)
        row = payment_start(reservation=reservation)
        stripe_settings.authorise(row.provider_id)
        hanging.rules["/capture"] = ("hang", 5)  # no capture is answered (nor made) any more
        start_worker(
            **worker_settings(
                hanging.url,
                STRIPE_TIMEOUT_SECONDS="1.5",
                PAYMENT_IN_FLIGHT_GRACE_SECONDS=str(int(grace)),
            )
        )
        # Watch the reservation until just before the game starts: always pending.
        seen = set()
        while timezone.now() < starts_at - timedelta(seconds=0.5):
            seen.add(Reservation.objects.values_list("status", flat=True).get(pk=reservation.pk))
            time.sleep(0.1)
        assert seen == {"pending"}, seen
        captures = [seen for seen in hanging.seen if "/capture" in seen]
        assert len(captures) >= 3  # the capture was tried again, more than a grace apart
        first_capture = ProviderPayment.objects.get(pk=row.pk).capture_attempted_at
        assert (starts_at - first_capture).total_seconds() > 1.5 * grace

        # The game starts: the hold ends then, whatever the capture does.
        ended = lambda: Reservation.objects.get(pk=reservation.pk).status == "cancelled"  # noqa: E731
        assert wait_for(ended, timeout=5)
        expired = Reservation.objects.get(pk=reservation.pk)
        assert expired.cancellation_reason == "expired"
        assert expired.cancelled_at - starts_at < timedelta(seconds=2)
        assert TimeSlot.objects.get(pk=slot.pk).status != "reserved"
        # The intent is voided (the slot has started), never captured.
        voided = lambda: ProviderPayment.objects.get(pk=row.pk).outcome == "voided"  # noqa: E731
        assert wait_for(voided, timeout=20)
        assert ProviderPayment.objects.get(pk=row.pk).reason == "slot_started"
        assert at_provider(stripe_settings, row.provider_id) == ("canceled", False)
        assert not Payment.objects.exists()
    finally:
        hanging.close()


# Money captured for a booking cancelled meanwhile, refunds refused by a provider that is down --


def test_a_capture_for_a_cancelled_booking_is_refunded_once_when_the_provider_is_back(
    proxy, provider, start_worker, settings
):
    from apps.payments.services import payment_settle
    from apps.reservations.services import reservation_cancel

    settings.PAYMENT_CHECK_LEAD_SECONDS = 1
    settings.PAYMENT_WINDOW_SECONDS = 0
    worker = start_worker(**worker_settings(proxy.url))
    reservation = reserve(TimeSlotFactory(), hold_seconds=600)
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    proxy.rules["/capture"] = ("delay", 2.0)  # captured at once, answered 2 s later
    proxy.rules["/v1/refunds"] = ("fail", 503)  # Stripe down for refunds

    def settle():
        try:
            payment_settle(row)
        finally:
            connection.close()

    settling = threading.Thread(target=settle)
    settling.start()
    time.sleep(0.7)
    reservation_cancel(reservation=Reservation.objects.get(pk=reservation.pk))  # the customer
    settling.join(timeout=15)

    payment = lambda: Payment.objects.get(reference=row.provider_id)  # noqa: E731
    assert wait_for(lambda: Payment.objects.filter(reference=row.provider_id).exists(), timeout=5)
    assert (payment().outcome, payment().reason) == ("refund_due", "cancelled")
    assert payment().refund_requested_at is not None
    refund_tries = lambda: sum("/v1/refunds" in s for s in proxy.seen)  # noqa: E731
    assert wait_for(lambda: refund_tries() >= 3, timeout=15), worker.log()  # retried, refused
    assert payment().refund_reference == ""

    proxy.rules.pop("/v1/refunds")  # Stripe is back
    assert wait_for(lambda: payment().refund_reference, timeout=20), worker.log()
    time.sleep(3)  # any retry still queued has run by now
    refunds = provider.client.v1.refunds.list({"limit": 100}).data
    assert [r.id for r in refunds] == [payment().refund_reference]
    charge = provider.client.v1.payment_intents.retrieve(row.provider_id).to_dict()["latest_charge"]
    if isinstance(charge, str):
        charge = provider.client.v1.charges.retrieve(charge).to_dict()
    assert charge["amount_refunded"] == charge["amount"]
    assert payment().flag == ""
    assert Reservation.objects.get(pk=reservation.pk).status == "cancelled"


# SIGTERM in the middle of a delivery while the payment provider hangs ---------------------


def test_a_runner_stopped_mid_delivery_while_stripe_hangs_sends_each_message_once(
    stripe_settings, hanging_server, start_worker, mail_server
):
    from apps.messaging.models import Message

    env = {
        **worker_settings(
            hanging_server.url, STRIPE_TIMEOUT_SECONDS="15", SCHEDULER_FAILOVER_SECONDS="1.5"
        ),
        "EMAIL_URL": mail_server.url,
        "EMAIL_TIMEOUT": "5",
    }
    first = start_worker(**env)
    assert wait_for(lambda: "This process is the runner" in first.log(), timeout=10)
    second = start_worker(**env)
    mail_server.delay = 0.6  # each message takes the server 0.6 s
    ends = time.time() + 3.0
    paying = []
    for n in range(8):
        reservation = reserve(
            TimeSlotFactory(),
            hold_seconds=ends + 0.05 * n - time.time(),
            customer_email=f"mid{n}@example.com",
        )
        payment_start(reservation=reservation)  # made at the local Stripe; the workers' hangs
        paying.append(reservation)
    # The payment checks hang in the runner's payment pool; its delivery pass is under way.
    assert wait_for(lambda: len(hanging_server.connections) >= 2, timeout=10)
    assert wait_for(lambda: len(mail_server.received) >= 2, timeout=10)
    first.terminate()
    stopped = time.time()

    assert wait_for(lambda: "This process is the runner" in second.log(), timeout=5)
    pks = [r.pk for r in paying]
    lapsed = Message.objects.filter(reservation_id__in=pks, kind="hold_lapsed")
    assert wait_for(lambda: lapsed.count() == 8, timeout=15)
    done = lambda: not Message.objects.filter(status="pending").exists()  # noqa: E731
    assert wait_for(done, timeout=40, interval=0.2), (
        list(Message.objects.values_list("pk", "kind", "status", "claimed_until")),
        first.log()[-3000:],
    )
    assert wait_for(lambda: first.poll() is not None, timeout=20)
    print(f"the stopped runner exited {time.time() - stopped:.1f} s after SIGTERM")
    time.sleep(1)
    ids = [m["Message-ID"] for m in mail_server.received]
    assert len(ids) == len(set(ids)), sorted(ids)
    sent = Message.objects.filter(status="sent")
    assert sorted(ids) == sorted(sent.values_list("message_id", flat=True))
    # A "hold placed" not sent before its hold lapsed is skipped, not sent late.
    unsent = Message.objects.exclude(status="sent")
    assert not unsent.exclude(status="skipped", kind="hold_placed").exists()


# Paid by staff while paying at Stripe: the open intent is voided, no job left --------------


def test_a_booking_marked_paid_by_staff_while_paying_voids_its_intent_and_leaves_no_job(
    stripe_settings, start_worker, job_store
):
    from apps.payments.services import payment_confirm_price

    from ..conftest import reconcile_command

    worker = start_worker(**worker_settings(stripe_settings.api_base, SCHEDULER_SWEEP_SECONDS="2"))
    reservation = reserve(TimeSlotFactory(), hold_seconds=600)
    row = payment_start(reservation=reservation)
    job_id = payment_kind().job_id(reservation.pk)
    assert wait_for(lambda: job_id in job_store.jobs(), timeout=2)

    payment_confirm_price(
        reservation=Reservation.objects.get(pk=reservation.pk), reference="CASH-1", source="staff"
    )

    assert Reservation.objects.get(pk=reservation.pk).status == "paid"
    voided = lambda: ProviderPayment.objects.get(pk=row.pk).outcome == "voided"  # noqa: E731
    assert wait_for(voided, timeout=10), worker.log()
    assert ProviderPayment.objects.get(pk=row.pk).reason == "already_paid"
    assert at_provider(stripe_settings, row.provider_id) == ("canceled", False)
    assert wait_for(lambda: job_id not in job_store.jobs(), timeout=5), job_store.jobs()
    code, out = reconcile_command()
    assert code == 0 and out.rstrip().endswith("consistent."), out
    assert list(Payment.objects.values_list("reference", "outcome")) == [("CASH-1", "applied")]
