"""
Attacks on payments through Stripe (PAYMENT_PROVIDER=stripe, against the local Stripe).

Each test shows a claimed guarantee holding against one attack. A small
forwarding proxy stands between the product and the local Stripe when a test
needs the provider to be slow or to fail on one kind of request only (the
request still reaches Stripe unless the rule says otherwise).
"""

import http.server
import threading
import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from apps.payments import deadlines as payment_deadlines
from apps.payments.models import Payment, ProviderPayment
from apps.payments.services import payment_settle, payment_start
from apps.reservations.models import Reservation
from apps.reservations.services import lapsed_holds_release
from apps.rooms.models import TimeSlot
from escape_rooms_backend.timeline import BY_JOB

from ..conftest import run_together
from ..factories import TimeSlotFactory, reserve
from .test_stripe import at_provider, intent_event, signed

pytestmark = pytest.mark.django_db


class Proxy:
    """
    Forward every request to ``upstream``; ``rules`` change what happens to some.

    ``rules`` maps a path fragment (``"/capture"``) to ``("delay", seconds)``
    (forwarded at once, the answer held back that long), ``("fail", status)``
    (not forwarded; answered with a Stripe-shaped API error) or
    ``("hang", seconds)`` (not forwarded, never answered: the client gives up).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: dict[str, tuple[str, float]] = {}
        self.seen: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                proxy.seen.append(f"{self.command} {self.path}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rule = next((r for part, r in proxy.rules.items() if part in self.path), None)
                if rule and rule[0] == "hang":
                    time.sleep(rule[1])
                    return
                if rule and rule[0] == "fail":
                    payload = b'{"error": {"type": "api_error", "message": "proxy says no"}}'
                    self.send_response(int(rule[1]))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                answer = requests.request(
                    self.command,
                    proxy.upstream + self.path,
                    data=body,
                    headers=headers,
                    timeout=10,
                )
                if rule and rule[0] == "delay":
                    time.sleep(rule[1])
                try:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting: the upstream did it anyway

            do_GET = do_POST = do_DELETE = _forward  # noqa: N815

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(provider, settings):
    """The product talks to the local Stripe through a ``Proxy``."""
    found = Proxy(provider.api_base)
    settings.STRIPE_API_BASE = found.url
    yield found
    found.close()


def kept_without_the_slot(localstripe) -> list[str]:
    """Captured PaymentIntents not paying their reservation whose money was not given back."""
    kept = []
    for intent_id in charged_without_the_slot(localstripe):
        intent = localstripe.client.v1.payment_intents.retrieve(intent_id).to_dict()
        charge = intent["latest_charge"]
        if charge["amount_refunded"] != charge["amount"]:
            kept.append(intent_id)
    return kept


def charged_without_the_slot(localstripe) -> list[str]:
    """Captured PaymentIntents whose reservation is not paid with that very intent."""
    found = localstripe.client.v1.payment_intents.list({"limit": 100}).to_dict()["data"]
    bad = []
    for intent in found:
        if intent["status"] != "succeeded":
            continue
        token = intent["metadata"].get("reservation")
        reservation = Reservation.objects.filter(token=token).first()
        if (
            reservation is None
            or reservation.status != Reservation.Status.PAID
            or reservation.payment_reference != intent["id"]
        ):
            bad.append(intent["id"])
    return bad


# Capture vs. a new customer at the hold's end ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_capture_outliving_the_hold_never_charges_without_the_slot(proxy, provider):
    slot = TimeSlotFactory()
    first = reserve(slot)
    row = payment_start(reservation=first)
    provider.authorise(row.provider_id)
    # The first capture attempt meets a provider error: authorised, seen in flight, not captured.
    proxy.rules["/capture"] = ("fail", 500)
    with pytest.raises(Exception, match="proxy says no"):
        payment_settle(row)
    row.refresh_from_db()
    assert (row.status, row.outcome) == ("requires_capture", "")
    # The retries keep failing until the hold is almost over (time shifted, not slept).
    ProviderPayment.objects.filter(pk=row.pk).update(
        in_flight_since=timezone.now() - timedelta(minutes=25)
    )
    Reservation.objects.filter(pk=first.pk).update(
        expires_at=timezone.now() + timedelta(seconds=0.6)
    )
    # Now the capture goes through, but its answer takes 1.5 s (within the 3 s timeout).
    proxy.rules["/capture"] = ("delay", 1.5)

    def settle():
        return payment_settle(ProviderPayment.objects.get(pk=row.pk)).outcome

    def new_customer():
        time.sleep(1.0)  # right after the hold lapsed, while the capture is in flight
        return reserve(slot, customer_email="jane@example.com").status

    results = run_together(settle, new_customer)

    first.refresh_from_db()
    assert at_provider(provider, row.provider_id)[0] == "succeeded", results
    # The guarantee: money captured means the slot is the customer's.
    assert charged_without_the_slot(provider) == [], (
        results,
        first.status,
        list(Payment.objects.values_list("outcome", "reason")),
    )


def test_a_capture_whose_answer_is_lost_never_keeps_money_without_the_slot(
    proxy,
    provider,
    settings,
    closed_url,
):
    settings.STRIPE_TIMEOUT_SECONDS = 1
    slot = TimeSlotFactory()
    first = reserve(slot)
    row = payment_start(reservation=first)
    provider.authorise(row.provider_id)
    proxy.rules["/capture"] = ("delay", 2.5)  # done at Stripe, the answer too late

    with pytest.raises(Exception):  # noqa: B017 (ProviderUnavailable)
        payment_settle(row)
    assert at_provider(provider, row.provider_id) == ("succeeded", True)  # the money is taken

    # The provider cannot be reached for longer than the grace: the expiry
    # (which never asks the provider) ends the hold on time.
    settings.STRIPE_API_BASE = closed_url
    Reservation.objects.filter(pk=first.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    second = reserve(slot, customer_email="jane@example.com")
    assert payment_deadlines.settle_handle([first.pk], BY_JOB) == [first.pk]  # retried later
    settings.STRIPE_API_BASE = proxy.url
    payment_settle(ProviderPayment.objects.get(pk=row.pk))

    first.refresh_from_db()
    second.refresh_from_db()
    assert second.status == "pending"
    # Captured while the slot was lost: given back at once, in full.
    assert kept_without_the_slot(provider) == [], (
        first.status,
        list(Payment.objects.values_list("outcome", "reason")),
    )
    payment = Payment.objects.get()
    assert (payment.outcome, payment.reason) == ("refund_due", "slot_taken")
    assert payment.refund_reference.startswith("re_")


# The webhook: validly signed, but odd ------------------------------------------


def test_a_signed_event_for_an_intent_the_provider_does_not_know_is_not_a_500(
    provider,
    client,
):
    client.raise_request_exception = False  # answer as in production: a 500, not a raise
    response = signed(client, intent_event("payment_intent.succeeded", "pi_doesnotexist"))

    assert response.status_code < 500, response.content
    assert not Payment.objects.exists()


@pytest.mark.parametrize(
    "data",
    [
        {"object": {"object": "payment_intent"}},  # no id
        {"object": "pi_123"},  # not an object
        {"object": ["pi_123"]},
        {"object": None},
    ],
    ids=["no-id", "string", "list", "null"],
)
def test_a_signed_payment_intent_event_with_a_malformed_object_is_not_a_500(
    provider,
    client,
    data,
):
    event = {"id": "evt_bad", "object": "event", "type": "payment_intent.succeeded", "data": data}
    client.raise_request_exception = False

    response = signed(client, event)

    assert response.status_code < 500, response.content
    assert not Payment.objects.exists()


@pytest.mark.parametrize("kind", ["charge.refunded", "charge.dispute.created"])
def test_a_signed_charge_event_with_a_non_object_is_not_a_500(provider, client, kind):
    event = {"id": "evt_bad", "object": "event", "type": kind, "data": {"object": "ch_123"}}
    client.raise_request_exception = False

    response = signed(client, event)

    assert response.status_code < 500, response.content


def test_an_event_naming_another_reservations_intent_settles_only_that_one(
    provider,
    client,
):
    mine, theirs = reserve(), reserve()
    my_row = payment_start(reservation=mine)
    their_row = payment_start(reservation=theirs)
    provider.authorise(their_row.provider_id)
    # An event whose object mixes my id with their metadata: the id decides, read back.
    event = intent_event(
        "payment_intent.succeeded",
        their_row.provider_id,
        metadata={"reservation": str(mine.token)},
        status="succeeded",
    )

    response = signed(client, event)

    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert response.status_code == 200
    assert (mine.status, theirs.status) == ("pending", "paid")
    assert theirs.payment_reference == their_row.provider_id
    assert at_provider(provider, my_row.provider_id) == ("requires_payment_method", False)


@pytest.mark.django_db(transaction=True)
def test_a_flood_of_the_same_event_at_once_records_one_payment(provider):
    from django.test import Client

    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    event = intent_event("payment_intent.amount_capturable_updated", row.provider_id)

    results = run_together(*[lambda: signed(Client(), event).status_code] * 6)

    reservation.refresh_from_db()
    assert results == {200: 6}
    assert reservation.status == "paid"
    assert Payment.objects.count() == 1
    assert Payment.objects.get().outcome == "applied"
    assert at_provider(provider, row.provider_id) == ("succeeded", True)


# Changes to the booking while its capture is in flight ----------------------------


def capture_racing(provider, proxy, change, *, delay=1.5, after=0.5):
    """Authorise a new reservation's intent, then settle it while ``change`` runs mid-capture."""
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    proxy.rules["/capture"] = ("delay", delay)

    def settle():
        return payment_settle(ProviderPayment.objects.get(pk=row.pk)).outcome

    def meanwhile():
        time.sleep(after)
        return change(Reservation.objects.get(pk=reservation.pk))

    results = run_together(settle, meanwhile)
    reservation.refresh_from_db()
    row.refresh_from_db()
    return reservation, row, results


@pytest.mark.django_db(transaction=True)
def test_staff_cancelling_while_the_capture_is_in_flight_never_keeps_the_money(proxy, provider):
    from apps.reservations.services import reservation_cancel

    reservation, row, results = capture_racing(
        provider, proxy, lambda r: reservation_cancel(reservation=r, reason="staff").status
    )

    assert at_provider(provider, row.provider_id)[0] in ("succeeded", "canceled"), results
    # Cancelled while the capture was on its way: the money goes back at once.
    assert kept_without_the_slot(provider) == [], (
        results,
        reservation.status,
        list(Payment.objects.values_list("outcome", "reason")),
    )


@pytest.mark.django_db(transaction=True)
def test_staff_cancel_and_refund_racing_a_capture_refunds_or_refuses(
    proxy,
    provider,
    admin_user,
):
    from apps.payments.services import booking_cancel_and_refund

    reservation, row, results = capture_racing(
        provider,
        proxy,
        lambda r: booking_cancel_and_refund(reservation=r, actor=admin_user).reference,
    )

    # Not paid yet when staff asked: refused; the capture goes on and the booking is paid.
    assert results == {"captured": 1, "not_refundable": 1}
    assert reservation.status == "paid"
    assert charged_without_the_slot(provider) == []


@pytest.mark.django_db(transaction=True)
def test_a_price_edited_while_the_capture_is_in_flight_never_charges_for_nothing(
    proxy,
    provider,
):
    from decimal import Decimal

    from apps.rooms.models import Room

    def edit_price(reservation):
        Room.objects.filter(pk=reservation.time_slot.room_id).update(price=Decimal("95.00"))
        return "edited"

    reservation, row, results = capture_racing(provider, proxy, edit_price)

    assert at_provider(provider, row.provider_id)[0] in ("succeeded", "canceled"), results
    # Cancelled while the capture was on its way: the money goes back at once.
    assert kept_without_the_slot(provider) == [], (
        results,
        reservation.status,
        list(Payment.objects.values_list("outcome", "reason")),
    )


# The provider down or hanging -------------------------------------------------


def test_an_authorisation_retried_after_the_grace_with_the_slot_free_is_captured(
    proxy,
    provider,
):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    proxy.rules["/capture"] = ("fail", 503)
    with pytest.raises(Exception, match="proxy says no"):
        payment_settle(row)
    # The provider stays down past the grace and the hold: the expiry ends the hold on time.
    ProviderPayment.objects.filter(pk=row.pk).update(
        in_flight_since=timezone.now() - timedelta(minutes=10)
    )
    Reservation.objects.filter(pk=reservation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    lapsed_holds_release(cause="expiry_job")
    proxy.rules.clear()  # back

    row = payment_settle(ProviderPayment.objects.get(pk=row.pk))

    reservation.refresh_from_db()
    assert TimeSlot.objects.get(pk=reservation.time_slot_id).starts_at > timezone.now()
    # Authorised, the slot still free, the game a day away: "never loses a payment".
    found = (row.outcome, row.reason, reservation.status)
    assert found == ("captured", "", "paid"), found


def test_a_hanging_provider_during_capture_never_delays_the_expiry(
    provider,
    hanging_server,
    settings,
):
    # Transactional test DB isolation is not needed: the expiry runs in this thread.
    slot = TimeSlotFactory()
    reservation = reserve(slot)
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    settings.STRIPE_API_BASE = hanging_server.url
    settings.STRIPE_TIMEOUT_SECONDS = 1.5

    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 (ProviderUnavailable)
        payment_settle(row)
    assert time.monotonic() - started < 5
    Reservation.objects.filter(pk=reservation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    started = time.monotonic()
    expired = lapsed_holds_release(cause="expiry_job")
    assert time.monotonic() - started < 1
    assert [e.reservation_id for e in expired] == [reservation.pk]
    # Released: the next customer gets it, and the old intent is voided once asked.
    second = reserve(slot, customer_email="jane@example.com")
    settings.STRIPE_API_BASE = provider.api_base
    assert payment_deadlines.settle_handle([reservation.pk], BY_JOB) == []
    row.refresh_from_db()
    assert (row.outcome, row.reason) == ("voided", "slot_taken")
    assert at_provider(provider, row.provider_id) == ("canceled", False)
    assert second.status == "pending"


@pytest.mark.django_db(transaction=True)
def test_the_expiry_runs_while_a_capture_hangs_in_another_thread(
    provider,
    hanging_server,
    settings,
):
    other = reserve()
    Reservation.objects.filter(pk=other.pk).update(expires_at=timezone.now() + timedelta(seconds=1))
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)
    settings.STRIPE_API_BASE = hanging_server.url
    settings.STRIPE_TIMEOUT_SECONDS = 4

    def settle():
        try:
            payment_settle(ProviderPayment.objects.get(pk=row.pk))
        except Exception as error:  # noqa: BLE001
            return type(error).__name__
        return "settled"

    def expire():
        time.sleep(1.5)
        started = time.monotonic()
        expired = lapsed_holds_release(cause="expiry_job")
        return ("expired", len(expired), time.monotonic() - started < 1)

    results = run_together(settle, expire)

    assert results == {"ProviderUnavailable": 1, ("expired", 1, True): 1}


# Bad input on the API: 400/404/409 with a code, nothing changed ---------------------


def post(client, path, body=None, **extra):
    client.raise_request_exception = False
    if body is None:
        return client.post(path, **extra)
    if isinstance(body, str | bytes):
        return client.post(path, body, content_type="application/json", **extra)
    return client.post(path, body, content_type="application/json", **extra)


@pytest.mark.parametrize(
    "token",
    [
        "00000000-0000-0000-0000-000000000000",
        "not-a-token",
        "%00",
        "' OR 1=1 --",
        "{TOKEN}",  # braces around the real token
        "x" * 5000,
    ],
)
def test_starting_to_pay_for_no_reservation_is_404(provider, client, token):
    reservation = reserve()
    path_token = token.replace("TOKEN", str(reservation.token))

    response = post(client, f"/api/reservations/{path_token}/payment/")

    assert response.status_code == 404, response.content
    assert "error" in response.json()
    assert not ProviderPayment.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"payment_method": 123},
        {"payment_method": None},
        {"payment_method": ["pm_x"]},
        {"payment_method": ""},
        {"payment_method": "  "},
        {"payment_method": "pm_" + "x" * 200},
        {"payment_method": "pm_card_visa", "amount": 1},
        {},
        "not json",
        "[]",
    ],
    ids=lambda b: repr(b)[:30],
)
def test_authorising_with_a_malformed_payment_method_is_400_and_changes_nothing(
    provider,
    client,
    body,
):
    reservation = reserve()
    row = payment_start(reservation=reservation)

    response = post(client, f"/api/reservations/{reservation.token}/payment/authorise/", body)

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"]
    assert at_provider(provider, row.provider_id) == ("requires_payment_method", False)
    reservation.refresh_from_db()
    assert reservation.status == "pending"


def test_authorising_with_a_payment_method_that_does_not_exist_is_4xx(provider, client):
    reservation = reserve()
    row = payment_start(reservation=reservation)

    response = post(
        client,
        f"/api/reservations/{reservation.token}/payment/authorise/",
        {"payment_method": "pm_doesnotexist"},
    )

    assert 400 <= response.status_code < 500, response.content
    assert response.json()["error"]["code"] == "card_declined"
    assert at_provider(provider, row.provider_id)[0] != "requires_capture"
    reservation.refresh_from_db()
    assert reservation.status == "pending"
    assert not Payment.objects.exists()


def test_authorising_or_checking_before_starting_is_409(provider, client):
    reservation = reserve()

    authorise = post(
        client,
        f"/api/reservations/{reservation.token}/payment/authorise/",
        {"payment_method": "pm_card_visa"},
    )
    check = post(client, f"/api/reservations/{reservation.token}/payment/check/")

    assert (authorise.status_code, authorise.json()["error"]["code"]) == (
        409,
        "payment_not_started",
    )
    assert (check.status_code, check.json()["error"]["code"]) == (409, "payment_not_started")


def test_another_customers_card_cannot_pay_this_reservation_twice(provider, client):
    # Authorising twice (a second card after the first was captured) charges once.
    reservation = reserve()
    client.post(f"/api/reservations/{reservation.token}/payment/")
    pms = [
        provider.client.v1.payment_methods.create(
            {
                "type": "card",
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2030,
                    "cvc": "123",
                },
            }
        ).id
        for _ in range(2)
    ]
    answers = [
        post(
            client,
            f"/api/reservations/{reservation.token}/payment/authorise/",
            {"payment_method": pm},
        )
        for pm in pms
    ]

    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["outcome"] for a in answers] == ["captured", "captured"]
    assert Payment.objects.count() == 1
    assert len(provider.client.v1.payment_intents.list().data) == 1


def test_the_webhook_with_a_bad_signature_is_400(provider, client):
    reservation = reserve()
    row = payment_start(reservation=reservation)
    provider.authorise(row.provider_id)

    bad = [
        post(
            client,
            "/api/payments/stripe/webhook/",
            '{"type": "payment_intent.succeeded"}',
            HTTP_STRIPE_SIGNATURE=header,
        ).status_code
        for header in ["", "t=1,v1=00", "garbage", "t=abc,v1=zz", "v1=" + "0" * 64]
    ]

    assert bad == [400] * 5
    assert at_provider(provider, row.provider_id) == ("requires_capture", False)


# Starting and authorising racing the hold's end ----------------------------------


def open_or_captured(localstripe) -> list[tuple[str, str]]:
    found = localstripe.client.v1.payment_intents.list({"limit": 100}).to_dict()["data"]
    return [(i["id"], i["status"]) for i in found if i["status"] != "canceled"]


@pytest.mark.django_db(transaction=True)
def test_a_start_racing_the_lapse_leaves_no_intent_open(proxy, provider):
    from apps.reservations.services import reservation_checkout

    reservation = reserve()
    reservation_checkout(reservation=reservation)  # the window was given before
    Reservation.objects.filter(pk=reservation.pk).update(
        expires_at=timezone.now() + timedelta(seconds=0.4)
    )
    proxy.rules["/v1/payment_intents"] = ("delay", 1.2)  # the create answers late

    def start():
        return payment_start(reservation=Reservation.objects.get(pk=reservation.pk)).outcome

    def lapse_and_job():
        time.sleep(0.7)
        lapsed_holds_release(cause="expiry_job")
        return tuple(payment_deadlines.settle_handle([reservation.pk], BY_JOB))

    results = run_together(start, lapse_and_job)

    row = ProviderPayment.objects.get()
    assert (row.outcome, row.reason) == ("voided", "hold_lapsed"), results
    assert open_or_captured(provider) == []


@pytest.mark.django_db(transaction=True)
def test_an_authorisation_racing_the_lapse_and_a_new_customer_is_voided(proxy, provider):
    from django.test import Client

    slot = TimeSlotFactory()
    first = reserve(slot)
    row = payment_start(reservation=first)
    Reservation.objects.filter(pk=first.pk).update(
        expires_at=timezone.now() + timedelta(seconds=0.4)
    )
    card = provider.client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    proxy.rules["/confirm"] = ("delay", 1.5)  # authorised at Stripe at once, answered late

    def authorise():
        response = Client().post(
            f"/api/reservations/{first.token}/payment/authorise/",
            {"payment_method": card.id},
            content_type="application/json",
        )
        return (response.status_code, response.json().get("outcome"))

    def new_customer_then_job():
        time.sleep(0.8)
        second = reserve(slot, customer_email="jane@example.com")
        payment_deadlines.settle_handle([first.pk], BY_JOB)
        return second.status

    results = run_together(authorise, new_customer_then_job)

    row.refresh_from_db()
    assert (row.outcome, row.reason) == ("voided", "slot_taken"), results
    assert at_provider(provider, row.provider_id) == ("canceled", False)
    assert charged_without_the_slot(provider) == []
    assert not Payment.objects.exists()


# Currencies --------------------------------------------------------------------


def test_a_zero_decimal_currency_is_charged_in_whole_units(provider):
    from decimal import Decimal

    from ..factories import RoomFactory

    room = RoomFactory(price=Decimal("8000"), currency="JPY")
    reservation = reserve(TimeSlotFactory(room=room))
    row = payment_start(reservation=reservation)
    intent = provider.client.v1.payment_intents.retrieve(row.provider_id)
    assert (intent.amount, intent.currency) == (8000, "jpy")
    provider.authorise(row.provider_id)

    row = payment_settle(row)

    reservation.refresh_from_db()
    assert (row.outcome, reservation.status) == ("captured", "paid")
    payment = Payment.objects.get()
    assert (payment.amount, payment.currency, payment.outcome) == (
        Decimal("8000"),
        "JPY",
        "applied",
    )


@pytest.mark.parametrize("currency", ["BHD", "JOD", "KWD", "OMR", "TND"])
def test_a_three_decimal_currency_is_sent_in_thousandths(currency):
    from decimal import Decimal

    from apps.payments.providers import minor_units

    assert minor_units(Decimal("10.00"), currency) == 10000


# The simulated provider (the default) still works --------------------------------


def test_the_simulated_provider_still_pays_through_the_api_and_the_pay_button(client):
    by_api, by_button = reserve(), reserve()

    api = client.post(
        f"/api/reservations/{by_api.token}/pay/",
        {"payment_reference": "SIM-1"},
        content_type="application/json",
    )
    client.post(f"/reservations/{by_button.token}/pay/")

    by_api.refresh_from_db()
    by_button.refresh_from_db()
    assert api.status_code == 200
    assert (by_api.status, by_button.status) == ("paid", "paid")
    assert Payment.objects.filter(outcome="applied").count() == 2
    assert not ProviderPayment.objects.exists()
