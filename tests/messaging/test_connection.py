"""The outbox sends a batch over one connection to the mail server."""

import pytest
from django.core.mail.backends.smtp import EmailBackend
from django.utils import timezone

from apps.messaging.models import Message
from apps.messaging.services import messages_deliver

from ..factories import MessageFactory, ReservationFactory

pytestmark = pytest.mark.django_db


def test_a_batch_goes_over_one_connection(mail_server, monkeypatch):
    opened: list[bool | None] = []
    open_connection = EmailBackend.open

    def counting_open(self):
        opened.append(new := open_connection(self))
        return new

    monkeypatch.setattr(EmailBackend, "open", counting_open)
    for name in ("ada", "bob", "cy"):
        MessageFactory(
            kind=Message.Kind.CONFIRMED,
            reservation=ReservationFactory(
                customer_email=f"{name}@example.com",
                status="paid",
                paid_at=timezone.now(),
                payment_reference=f"PAY-{name}",
            ),
        )

    delivered = messages_deliver()

    assert delivered.sent == 3
    assert sorted(m["To"] for m in mail_server.received) == [
        "ada@example.com",
        "bob@example.com",
        "cy@example.com",
    ]
    assert opened.count(True) == 1  # one new connection; every later open found it open
