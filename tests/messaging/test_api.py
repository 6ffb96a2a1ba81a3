"""Find my booking over the API: one answer for every address, mail only to known ones, limits."""

import re

import pytest
from django.core import mail

from apps.messaging.models import Message
from apps.messaging.services import FIND_BOOKING_LIMITED, FIND_BOOKING_SENT, messages_deliver
from config.api_errors import TOO_MANY_REQUESTS

from ..factories import ReservationFactory, bookings_of

pytestmark = pytest.mark.django_db

FIND = "/api/bookings/find/"
LINK = re.compile(r"https?://[^\s\"<>]+/reservations/[0-9a-f-]{36}/")


@pytest.fixture
def find(client):
    def post(body, **extra):
        return client.post(FIND, body, content_type="application/json", **extra)

    return post


def queued() -> list[str]:
    """The addresses that booking links were queued for, in order."""
    return list(
        Message.objects.filter(kind=Message.Kind.BOOKINGS)
        .order_by("pk")
        .values_list("to_email", flat=True)
    )


def booking_links(*reservations) -> set[str]:
    return {f"http://127.0.0.1:8000/reservations/{r.token}/" for r in reservations}


def test_a_known_and_an_unknown_address_get_the_same_answer(find):
    bookings_of("john@example.com")

    known = find({"email": "john@example.com"})
    unknown = find({"email": "nobody@example.com"})

    assert known.status_code == unknown.status_code == 202
    assert known.content == unknown.content
    assert known.json() == {"detail": FIND_BOOKING_SENT}
    assert "no-store" in known["Cache-Control"]
    for header in ("Content-Type", "Cache-Control", "Retry-After"):
        assert known.get(header) == unknown.get(header)
    assert queued() == ["john@example.com", "nobody@example.com"]


def test_only_the_known_address_is_mailed_the_links_of_its_current_bookings(find, settings):
    bookings = bookings_of("john@example.com")
    ReservationFactory(customer_email="jane@example.com")  # someone else's
    find({"email": "John@Example.com"})  # addresses match whatever their case
    find({"email": "nobody@example.com"})

    delivered = messages_deliver()

    assert (delivered.sent, delivered.skipped, delivered.failed) == (1, 1, 0)
    [email] = mail.outbox
    assert email.to == ["John@Example.com"]
    assert email.subject == f"Your bookings at {settings.VENUE_NAME}"
    html = email.alternatives[0][0]
    current = booking_links(bookings["held"], bookings["paid"])
    assert set(LINK.findall(email.body)) == set(LINK.findall(html)) == current
    assert "Pending payment" in email.body and "Paid" in email.body
    statuses = dict(Message.objects.values_list("to_email", "status"))
    assert statuses == {"John@Example.com": "sent", "nobody@example.com": "skipped"}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"email": "john-at-example"}, "Enter a valid email address."),
        ({"email": "john@"}, "Enter a valid email address."),
        ({"email": ""}, "String should have at least 3 characters"),
        ({"email": f"{'j' * 250}@example.com"}, "String should have at most 254 characters"),
        ({"email": 42}, "Input should be a valid string"),
        ({}, "Field required"),
    ],
)
def test_a_bad_email_is_400_with_the_fields_error_and_queues_nothing(find, body, problem):
    response = find(body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["fields"]["email"][0].startswith(problem)
    assert "no-store" in response["Cache-Control"]
    assert queued() == []


def test_an_unknown_field_is_400_and_queues_nothing(find):
    response = find({"email": "john@example.com", "send_to": "eve@example.com"})

    assert response.status_code == 400
    assert "send_to" in response.json()["error"]["fields"]
    assert queued() == []


def test_requests_past_the_limit_for_one_email_are_429_with_retry_after(find, settings):
    settings.FIND_BOOKING_PER_HOUR = 2
    find({"email": "john@example.com"}, REMOTE_ADDR="10.0.0.1")
    find({"email": "JOHN@example.com"}, REMOTE_ADDR="10.0.0.2")

    response = find({"email": "John@Example.com"}, REMOTE_ADDR="10.0.0.3")

    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 3590 < retry_after <= 3600  # the first of the two frees a place in an hour
    assert response.json() == {
        "error": {
            "code": TOO_MANY_REQUESTS,
            "message": FIND_BOOKING_LIMITED.format(wait="60 minutes"),
        }
    }
    assert "no-store" in response["Cache-Control"]
    assert queued() == ["john@example.com", "JOHN@example.com"]


def test_requests_past_the_limit_from_one_client_address_are_429_with_retry_after(find, settings):
    settings.FIND_BOOKING_PER_HOUR = 2
    bookings_of("john@example.com")  # known or not, every address counts alike
    find({"email": "john@example.com"})
    find({"email": "nobody@example.com"})

    response = find({"email": "jane@example.com"})

    assert response.status_code == 429
    assert response.json()["error"]["code"] == TOO_MANY_REQUESTS
    assert 0 < int(response["Retry-After"]) <= 3600
    assert queued() == ["john@example.com", "nobody@example.com"]
    assert find({"email": "jane@example.com"}, REMOTE_ADDR="10.0.0.9").status_code == 202


def test_the_openapi_document_shows_the_operation(client):
    operation = client.get("/api/openapi.json").json()["paths"][FIND]["post"]

    # 409 and 422: a retry with an Idempotency-Key in progress, or with another body.
    assert set(operation["responses"]) == {"202", "400", "409", "422", "429"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/FindBookingIn")
