"""The outbox in the admin: the list, its filters, a message's page and the retry action."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from apps.messaging.models import Message
from apps.messaging.services import DELIVERY
from escape_rooms_backend import deadlines

from ..factories import MessageFactory, ReservationFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/messaging/message/"
REFUSED = "SMTPDataError: (451, b'4.3.0 Mail server temporarily rejected message.')"
BOUNCED = "SMTPRecipientsRefused: {'nobody@example.com': (550, b'5.1.1 No such user')}"


def page(pk: int) -> str:
    return f"{LIST}{pk}/change/"


def shown(response) -> list[Message]:
    """The messages a list page shows, in its order."""
    return list(response.context["cl"].result_list)


def retry(client, *messages: Message, on: str = LIST):
    return client.post(
        on,
        {"action": "retry", "_selected_action": [m.pk for m in messages], "index": 0},
        follow=True,
    )


def told(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def outbox():
    """A sent message, one failing (pending, tried twice), one given up on."""
    now = timezone.now()
    sent = MessageFactory(
        kind=Message.Kind.CONFIRMED,
        status=Message.Status.SENT,
        attempts=1,
        sent_at=now,
        subject="Booked: The Lost Tomb, Fri 4 Dec 2026, 19:00",
        to_email="john@example.com",
    )
    failing = MessageFactory(
        kind=Message.Kind.REMINDER,
        attempts=2,
        next_attempt_at=now + timedelta(seconds=20),
        last_error=REFUSED,
        reservation=ReservationFactory(customer_email="ada@example.com"),
    )
    failed = MessageFactory(
        status=Message.Status.FAILED,
        attempts=1,
        next_attempt_at=now - timedelta(hours=1),
        last_error=BOUNCED,
        reservation=ReservationFactory(customer_email="nobody@example.com"),
    )
    return sent, failing, failed


def test_the_list_shows_each_message_with_its_recipient_and_status(admin_client, outbox):
    sent, failing, failed = outbox

    response = admin_client.get(LIST)

    assert response.status_code == 200
    assert set(shown(response)) == {sent, failing, failed}
    html = response.content.decode()
    assert "ada@example.com" in html  # read from the reservation until it is sent
    assert "nobody@example.com" in html
    assert "Failed (gave up)" in html
    assert "Booked: The Lost Tomb, Fri 4 Dec 2026, 19:00" in html


def test_the_list_shows_a_failing_message_with_its_last_error(admin_client, outbox):
    html = admin_client.get(LIST).content.decode()

    assert "failing: <span title=" in html
    assert "SMTPDataError: (451, b&#x27;4.3.0 Mail server temporarily" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status__exact=failed", ["failed"]),
        ("status__exact=pending", ["failing"]),
        ("status__exact=sent", ["sent"]),
        ("kind__exact=reminder", ["failing"]),
        ("kind__exact=hold_placed", ["failed"]),
        ("q=ada@example.com", ["failing"]),
    ],
)
def test_the_list_filters_by_status_and_kind_and_searches_addresses(
    admin_client, outbox, query, expected
):
    named = dict(zip(["sent", "failing", "failed"], outbox, strict=True))

    response = admin_client.get(f"{LIST}?{query}")

    assert response.status_code == 200
    assert shown(response) == [named[name] for name in expected]


def test_a_failing_message_shows_its_last_error_on_its_page(admin_client, outbox):
    _, failing, _ = outbox

    response = admin_client.get(page(failing.pk))

    assert response.status_code == 200
    html = response.content.decode()
    assert "4.3.0 Mail server temporarily rejected message." in html
    assert failing.message_id.replace("<", "&lt;").replace(">", "&gt;") in html


def test_a_message_page_is_read_only(admin_client, outbox):
    _, failing, _ = outbox

    html = admin_client.get(page(failing.pk)).content.decode()
    response = admin_client.post(page(failing.pk), {"status": "sent"})

    assert 'name="_save"' not in html
    assert response.status_code == 403
    failing.refresh_from_db()
    assert (failing.status, failing.attempts) == (Message.Status.PENDING, 2)


def test_staff_cannot_add_or_delete_messages(admin_client, outbox):
    sent, _, _ = outbox

    assert admin_client.get(f"{LIST}add/").status_code == 403
    assert admin_client.post(f"{LIST}{sent.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Message.objects.filter(pk=sent.pk).exists()


def test_retry_makes_a_failed_message_pending_again_and_due_now(admin_client, outbox):
    _, _, failed = outbox
    before = timezone.now()

    response = retry(admin_client, failed)

    failed.refresh_from_db()
    assert failed.status == Message.Status.PENDING
    assert before <= failed.next_attempt_at <= timezone.now()
    assert (failed.attempts, failed.claimed_until) == (0, None)
    assert failed.last_error == BOUNCED  # what went wrong last time stays on its page
    assert told(response) == ["1 messages will be sent again."]


def test_retry_puts_the_delivery_job_in_the_store_after_commit(
    admin_client, outbox, job_store, django_capture_on_commit_callbacks
):
    _, _, failed = outbox
    job_store.create()

    with django_capture_on_commit_callbacks(execute=True):
        retry(admin_client, failed)

    job = deadlines.kind_named(DELIVERY).job_id(failed.pk)
    assert job in job_store.jobs()


def test_retry_from_the_failed_filter_counts_what_it_retried(admin_client, outbox):
    _, _, failed = outbox

    response = retry(admin_client, failed, on=f"{LIST}?status__exact=failed")

    failed.refresh_from_db()
    assert failed.status == Message.Status.PENDING
    assert told(response) == ["1 messages will be sent again."]


def test_retry_leaves_a_sent_message_alone_and_says_so(admin_client, outbox):
    sent, _, failed = outbox

    response = retry(admin_client, sent, failed)

    sent.refresh_from_db()
    assert (sent.status, sent.attempts) == (Message.Status.SENT, 1)
    assert told(response) == [
        "1 messages will be sent again.",
        "1 were sent or not needed: nothing to retry.",
    ]


def test_a_retried_message_reads_pending_until_it_fails_again(admin_client, outbox):
    _, _, failed = outbox

    retry(admin_client, failed)
    html = admin_client.get(f"{LIST}?status__exact=pending&kind__exact=hold_placed").content

    assert b"failing:" not in html
    assert b"Pending" in html


def test_staff_who_may_only_view_messages_cannot_retry(client, outbox):
    _, _, failed = outbox
    viewer = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_message"))
    client.force_login(viewer)

    response = client.get(LIST)
    retry(client, failed)

    assert response.status_code == 200
    assert response.context["action_form"] is None  # no action is offered
    failed.refresh_from_db()
    assert failed.status == Message.Status.FAILED
