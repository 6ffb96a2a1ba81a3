"""The payment provider's webhook: signed events are confirmed once; anything else is refused."""

import json
import time

import pytest
from django.conf import settings

from apps.payments.models import Payment
from apps.payments.webhook import sign
from apps.reservations.models import Reservation

from ..factories import reserve


def webhook(client, event: dict, *, secret=None, at=None, header=None):
    secret = secret or settings.PAYMENT_WEBHOOK_SECRET
    body = json.dumps(event).encode()
    signature = header if header is not None else sign(body, int(at or time.time()), secret)
    return client.post(
        "/api/payments/webhook/", body, content_type="application/json", HTTP_X_SIGNATURE=signature
    )


def event(reservation, **changes):
    return {
        "id": "evt_1",
        "type": "payment.succeeded",
        "reservation": str(reservation.token),
        "payment_reference": "psp_123",
        "amount": "80.00",
        "currency": "EUR",
        **changes,
    }


@pytest.mark.django_db
def test_a_signed_webhook_is_applied_and_a_replay_returns_the_same_outcome(client):
    reservation = reserve()

    first = webhook(client, event(reservation))
    replay = webhook(client, event(reservation))

    assert first.status_code == 200 and first.json()["outcome"] == "applied"
    assert replay.json() == {**first.json(), "replayed": True}
    assert Payment.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "signing",
    [
        {"header": ""},
        {"header": "t=abc,v1=zz"},
        {"secret": "wrong-secret"},
        {"at": time.time() - 400},
        {"at": time.time() + 400},
    ],
    ids=["missing", "malformed", "wrong key", "too old", "from the future"],
)
def test_a_bad_signature_is_400_and_records_nothing(client, signing):
    reservation = reserve()

    response = webhook(client, event(reservation), **signing)

    assert (response.status_code, response.json()["error"]["code"]) == (400, "bad_signature")
    assert not Payment.objects.exists()
    assert Reservation.objects.get(pk=reservation.pk).status == "pending"


@pytest.mark.django_db
def test_signatures_allow_secret_rotation_and_any_hex_case_but_nothing_else(client):
    reservation = reserve()
    body = json.dumps(event(reservation)).encode()
    now = int(time.time())
    good = sign(body, now, settings.PAYMENT_WEBHOOK_SECRET).split("v1=")[1]
    old = sign(body, now, "old-secret").split("v1=")[1]

    def post(header):
        return client.post(
            "/api/payments/webhook/", body, content_type="application/json", HTTP_X_SIGNATURE=header
        )

    assert post(f"t={now},v1=é{good[1:]}").status_code == 400  # not hex, not a crash
    assert post(f"t={now}, v1={old}, v1={good.upper()}").status_code == 200
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_a_tampered_body_fails_its_signature(client):
    reservation = reserve()
    body = json.dumps(event(reservation)).encode()
    header = sign(body, int(time.time()), "test-webhook-secret")

    response = client.post(
        "/api/payments/webhook/",
        body.replace(b"80.00", b"0.01"),
        content_type="application/json",
        HTTP_X_SIGNATURE=header,
    )

    assert response.status_code == 400
    assert not Payment.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("change", [{"amount": "lots"}, {"payment_reference": ""}])
def test_a_malformed_payment_confirmation_is_400(client, change):
    response = webhook(client, event(reserve(), **change))

    assert (response.status_code, response.json()["error"]["code"]) == (400, "bad_event")
    assert not Payment.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["payment.failed", "customer.created"])
def test_a_signed_event_of_another_type_is_acknowledged_and_changes_nothing(client, kind):
    reservation = reserve()

    response = webhook(client, event(reservation, type=kind))

    # A 4xx would have the provider send it again for days, then disable the endpoint.
    assert response.status_code == 200
    assert response.json() == {"received": True, "handled": False}
    assert not Payment.objects.exists()
    reservation.refresh_from_db()
    assert reservation.status == "pending"


@pytest.mark.django_db
def test_a_webhook_for_an_unknown_reservation_is_recorded(client):
    response = webhook(client, {**event(reserve()), "reservation": "no-such-token"})

    assert response.json()["outcome"] == "refund_due"
    assert Payment.objects.get().reason == "unknown_reservation"
