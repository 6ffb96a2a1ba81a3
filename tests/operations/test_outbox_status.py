"""The outbox in ``scheduler_status`` and ``/healthz``: reported, never unhealthy."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.messaging.models import Message
from apps.messaging.selectors import outbox_backlog
from apps.operations.selectors import OUTBOX_BACKLOG_AFTER, outbox_state
from apps.operations.services import heartbeat_record

from ..factories import MessageFactory, reserve

pytestmark = pytest.mark.django_db

REFUSED = "SMTPDataError: (451, b'4.3.0 Try again later')"


def status_output() -> str:
    out = StringIO()
    call_command("scheduler_status", stdout=out)
    return out.getvalue()


def line(output: str, label: str) -> str:
    return next(row for row in output.splitlines() if row.startswith(f"{label}:"))


@pytest.fixture
def healthy(job_store):
    """A job store and a fresh heartbeat: expiry is healthy, whatever the outbox says."""
    job_store.create()
    heartbeat_record(started=True)


@pytest.fixture
def backlog():
    """Two pending messages (one failing, the oldest queued 3 minutes ago), one failed, one sent."""
    now = timezone.now()
    MessageFactory(created_at=now - timedelta(minutes=3))
    MessageFactory(
        kind=Message.Kind.REMINDER,
        created_at=now - timedelta(minutes=1),
        attempts=2,
        next_attempt_at=now + timedelta(seconds=20),
        last_error=REFUSED,
    )
    MessageFactory(
        status=Message.Status.FAILED, created_at=now - timedelta(hours=2), last_error=REFUSED
    )
    MessageFactory(status=Message.Status.SENT, created_at=now - timedelta(hours=3), sent_at=now)


def test_scheduler_status_shows_the_backlog_and_the_oldest_pending_age(healthy, backlog):
    output = status_output()

    assert line(output, "Messages") == (
        "Messages:       2 pending (1 failing), 1 failed; oldest pending queued 3 min ago"
    )
    assert "Warning: 1 message(s) given up on" in output
    assert "Warning: messages wait to be sent" not in output


def test_scheduler_status_shows_an_empty_outbox(healthy):
    output = status_output()

    assert line(output, "Messages") == "Messages:       0 pending (0 failing), 0 failed"
    assert "Warning" not in output


def test_scheduler_status_warns_of_a_backlog_and_still_exits_0(healthy):
    MessageFactory(created_at=timezone.now() - timedelta(minutes=45))

    output = status_output()  # no CommandError: expiry is healthy

    assert "oldest pending queued 45 min ago" in line(output, "Messages")
    assert "Warning: messages wait to be sent; is the mail server reachable?" in output


def test_healthz_reports_the_backlog_in_its_body(client, healthy, backlog):
    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["outbox"] == "ok"
    messages = body["messages"]
    assert (messages["pending"], messages["failing"], messages["failed"]) == (2, 1, 1)
    assert 180 <= messages["oldest_pending_age_seconds"] < 185


def test_healthz_reports_an_empty_outbox(client, healthy):
    body = client.get("/healthz").json()

    assert body["messages"] == {
        "pending": 0,
        "failing": 0,
        "failed": 0,
        "oldest_pending_age_seconds": None,
    }
    assert body["checks"]["outbox"] == "ok"


def test_healthz_stays_200_with_a_backlog(client, healthy):
    MessageFactory(created_at=timezone.now() - timedelta(hours=2), attempts=9, last_error=REFUSED)

    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["checks"]["outbox"]) == ("ok", "backlog")


def test_healthz_is_503_for_the_scheduler_whatever_the_outbox(client, job_store):
    job_store.create()

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["checks"]["outbox"] == "ok"


def test_healthz_reports_no_numbers_when_the_database_is_unreachable(
    client, job_store, monkeypatch
):
    from django.db import connections
    from django.db.utils import OperationalError

    def refuse(self, *args, **kwargs):
        raise OperationalError("the database is unreachable")

    monkeypatch.setattr(type(connections["default"]), "create_cursor", refuse)

    body = client.get("/healthz").json()

    assert body["checks"]["outbox"] == "error: OperationalError"
    assert body["messages"] is None


def test_a_customers_hold_shows_in_the_backlog_until_it_is_sent(client, healthy):
    reservation = reserve()

    body = client.get("/healthz").json()
    Message.objects.filter(reservation=reservation).update(status=Message.Status.SENT)
    after = client.get("/healthz").json()

    assert (body["messages"]["pending"], body["messages"]["failing"]) == (1, 0)
    assert after["messages"]["pending"] == 0


def test_the_outbox_reads_backlog_only_past_its_limit_and_not_for_failed_messages():
    now = timezone.now()
    message = MessageFactory(created_at=now - OUTBOX_BACKLOG_AFTER)
    assert outbox_state(outbox_backlog(), now) == "ok"

    assert outbox_state(outbox_backlog(), now + timedelta(seconds=1)) == "backlog"

    message.status = Message.Status.FAILED
    message.save()
    assert outbox_state(outbox_backlog(), now + timedelta(days=1)) == "ok"
