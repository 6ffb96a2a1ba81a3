"""The "find my booking" page: one answer for every address, mail only to known ones, limits."""

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from apps.messaging.models import Message
from apps.messaging.services import (
    FIND_BOOKING_LIMITED,
    FIND_BOOKING_SENT,
    bookings_link_request,
    messages_deliver,
)

from ..factories import ReservationFactory, bookings_of

pytestmark = pytest.mark.django_db

FIND = "/find/"
CSRF_TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')
LINK = re.compile(r"https?://[^\s\"<>]+/reservations/[0-9a-f-]{36}/")


def queued() -> list[str]:
    """The addresses that booking links were queued for, in order."""
    return list(
        Message.objects.filter(kind=Message.Kind.BOOKINGS)
        .order_by("pk")
        .values_list("to_email", flat=True)
    )


def page(response) -> str:
    """The page as the customer sees it, without the form's per-render CSRF token."""
    return CSRF_TOKEN.sub("", response.content.decode())


def test_the_page_asks_for_an_email_address(client):
    response = client.get(FIND)

    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>Find my booking</h1>" in html
    assert 'type="email" name="email"' in html
    assert "Send me the links" in html
    assert "no-store" in response["Cache-Control"]


def test_every_page_links_to_find_my_booking(client):
    reservation = ReservationFactory()

    for path in ("/", f"/reservations/{reservation.token}/"):
        html = client.get(path).content.decode()
        assert '<a href="/find/" class="find">Find my booking</a>' in html


def test_the_reservation_page_says_where_to_find_its_address_again(client):
    reservation = ReservationFactory()

    html = client.get(f"/reservations/{reservation.token}/").content.decode()

    note = re.search(r'<p class="keep-link">(.*?)</p>', html).group(1)
    assert "Keep this page's address" in note
    assert '<a href="/find/">Find my booking</a> emails it' in note


def test_a_known_and_an_unknown_address_get_the_same_answer(client):
    bookings_of("john@example.com")

    known = client.post(FIND, {"email": "john@example.com"})
    known_page = client.get(known["Location"])
    unknown = client.post(FIND, {"email": "nobody@example.com"})
    unknown_page = client.get(unknown["Location"])

    assert known.status_code == unknown.status_code == 302
    assert known["Location"] == unknown["Location"] == FIND
    assert known_page.status_code == unknown_page.status_code == 200
    assert page(known_page) == page(unknown_page)
    assert FIND_BOOKING_SENT in page(known_page)
    assert queued() == ["john@example.com", "nobody@example.com"]


def test_the_answer_shows_once(client):
    client.post(FIND, {"email": "john@example.com"}, follow=True)

    assert FIND_BOOKING_SENT not in client.get(FIND).content.decode()


def test_only_the_known_address_is_mailed_the_links_of_its_current_bookings(client):
    bookings = bookings_of("john@example.com")
    ReservationFactory(customer_email="jane@example.com")  # someone else's
    client.post(FIND, {"email": "john@example.com"})
    client.post(FIND, {"email": "nobody@example.com"})

    messages_deliver()

    [email] = mail.outbox
    assert email.to == ["john@example.com"]
    current = {
        f"http://127.0.0.1:8000/reservations/{bookings[name].token}/" for name in ("held", "paid")
    }
    assert set(LINK.findall(email.body)) == current
    assert set(LINK.findall(email.alternatives[0][0])) == current


@pytest.mark.parametrize(
    ("email", "problem"),
    [
        ("john-at-example", "Enter a valid email address."),
        ("", "This field is required."),
        (f"{'j' * 250}@example.com", "Ensure this value has at most 254 characters"),
    ],
)
def test_a_bad_email_is_400_with_the_error_beside_the_field_and_queues_nothing(
    client, email, problem
):
    response = client.post(FIND, {"email": email})

    assert response.status_code == 400
    html = response.content.decode()
    error = re.search(r'<p class="error" id="id_email_error">(.*?)</p>', html)
    assert error is not None and error.group(1).startswith(problem)
    assert FIND_BOOKING_SENT not in html
    assert queued() == []


def test_requests_past_the_limit_for_one_email_are_429_with_retry_after(client, settings):
    settings.FIND_BOOKING_PER_HOUR = 2
    client.post(FIND, {"email": "john@example.com"}, REMOTE_ADDR="10.0.0.1", follow=True)
    client.post(FIND, {"email": "JOHN@example.com"}, REMOTE_ADDR="10.0.0.2", follow=True)

    response = client.post(FIND, {"email": "john@example.com"}, REMOTE_ADDR="10.0.0.3")

    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 3540 < retry_after <= 3600
    html = response.content.decode()
    assert FIND_BOOKING_LIMITED.format(wait="60 minutes") in html
    assert 'value="john@example.com"' in html  # what was typed stays
    assert FIND_BOOKING_SENT not in html
    assert queued() == ["john@example.com", "JOHN@example.com"]


def test_requests_past_the_limit_from_one_client_address_are_429_with_retry_after(client, settings):
    settings.FIND_BOOKING_PER_HOUR = 2
    client.post(FIND, {"email": "john@example.com"}, follow=True)
    client.post(FIND, {"email": "nobody@example.com"}, follow=True)

    response = client.post(FIND, {"email": "jane@example.com"})

    assert response.status_code == 429
    assert 3540 < int(response["Retry-After"]) <= 3600
    html = response.content.decode()
    assert FIND_BOOKING_LIMITED.format(wait="60 minutes") in html
    assert FIND_BOOKING_SENT not in html
    assert queued() == ["john@example.com", "nobody@example.com"]


def test_the_wait_is_shown_in_whole_minutes_rounded_up(client, settings):
    settings.FIND_BOOKING_PER_HOUR = 2
    an_hour_ago = timezone.now() - timedelta(minutes=59, seconds=30)
    for _ in range(2):
        bookings_link_request(email="john@example.com", client_address=None, now=an_hour_ago)

    response = client.post(FIND, {"email": "john@example.com"})

    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 30
    assert FIND_BOOKING_LIMITED.format(wait="1 minute") in response.content.decode()
