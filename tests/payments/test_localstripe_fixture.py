"""
The tests' local Stripe (localstripe) and the unreachable providers work as the payment tests need.

None of them touches the database: they run in both suites (SQLite and PostgreSQL).
"""

import http.server
import threading
import time

import pytest
import requests
import stripe

from ..conftest import free_port, stripe_client, wait_for

SECRET = "whsec_test"


def create_intent(localstripe, **changes) -> stripe.PaymentIntent:
    return localstripe.client.v1.payment_intents.create(
        {
            "amount": 8900,
            "currency": "eur",
            "capture_method": "manual",
            "metadata": {"reservation": "x"},
            **changes,
        }
    )


class WebhookReceiver:
    """A local HTTP server that keeps each POST: (body, Stripe-Signature header)."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((body, self.headers["Stripe-Signature"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver():
    server = WebhookReceiver()
    yield server
    server.close()


def test_a_manual_capture_intent_is_authorised_then_captured(localstripe):
    intent = create_intent(localstripe)
    assert intent.status == "requires_payment_method"

    assert localstripe.authorise(intent.id).status == "requires_capture"
    authorised = localstripe.client.v1.payment_intents.retrieve(intent.id)
    assert authorised.status == "requires_capture"
    assert authorised.metadata.to_dict() == {"reservation": "x"}

    captured = localstripe.client.v1.payment_intents.capture(intent.id)
    assert captured.status == "succeeded"
    # localstripe always embeds the charge (Stripe gives its id unless expanded).
    charge = localstripe.client.v1.charges.retrieve(captured.latest_charge.id)
    assert (charge.captured, charge.amount, charge.payment_intent) == (True, 8900, intent.id)


def test_an_authorised_intent_can_be_cancelled(localstripe):
    intent = create_intent(localstripe)
    localstripe.authorise(intent.id)

    assert localstripe.client.v1.payment_intents.cancel(intent.id).status == "canceled"


def test_each_test_starts_empty_and_a_flush_forgets_everything(localstripe):
    assert localstripe.client.v1.payment_intents.list().data == []
    intent = create_intent(localstripe)

    localstripe.flush()

    with pytest.raises(stripe.InvalidRequestError) as error:
        localstripe.client.v1.payment_intents.retrieve(intent.id)
    assert error.value.http_status == 404


def test_a_capture_sends_a_signed_payment_intent_succeeded_event(localstripe, receiver):
    earlier = create_intent(localstripe)
    localstripe.authorise(earlier.id)
    localstripe.client.v1.payment_intents.capture(earlier.id)
    localstripe.flush()  # its event, due in about 1 s, is dropped
    localstripe.webhook(receiver.url, SECRET)
    intent = create_intent(localstripe)
    localstripe.authorise(intent.id)
    localstripe.client.v1.payment_intents.capture(intent.id)

    assert wait_for(lambda: receiver.received, timeout=5), localstripe.log()
    payload, signature = receiver.received[0]
    event = stripe.Webhook.construct_event(payload, signature, SECRET)
    assert (event.type, event.data.object.id) == ("payment_intent.succeeded", intent.id)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, signature, "whsec_other")


def test_restarted_it_still_knows_the_intent_and_the_webhook(localstripe, receiver):
    localstripe.webhook(receiver.url, SECRET)
    intent = create_intent(localstripe)

    localstripe.stop()
    with pytest.raises(stripe.APIConnectionError):
        localstripe.client.v1.payment_intents.retrieve(intent.id)
    localstripe.start()

    assert localstripe.client.v1.payment_intents.retrieve(intent.id).amount == 8900
    localstripe.authorise(intent.id)
    localstripe.client.v1.payment_intents.capture(intent.id)
    assert wait_for(lambda: receiver.received, timeout=5), localstripe.log()


def test_it_serves_a_stand_in_for_stripe_js(localstripe):
    response = requests.get(localstripe.js_url, timeout=5)

    assert response.status_code == 200
    assert "javascript" in response.headers["Content-Type"]
    assert "Stripe" in response.text


def test_a_hanging_provider_times_out_on_the_clients_timeout(hanging_server):
    client = stripe_client(hanging_server.url, timeout=1)

    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError) as error:
        client.v1.payment_intents.retrieve("pi_x")

    assert 1 <= time.monotonic() - started < 2
    assert "Read timed out" in str(error.value)
    assert len(hanging_server.connections) == 1


def test_an_unreachable_provider_refuses_at_once(closed_url):
    client = stripe_client(closed_url, timeout=5)

    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.payment_intents.retrieve("pi_x")

    assert time.monotonic() - started < 1
