"""The key's records: claimed, replayed, refused, taken over and purged, with time injected."""

from datetime import timedelta

import pytest
from django.http import HttpResponse, JsonResponse
from django.test import RequestFactory
from django.utils import timezone

from apps.idempotency.models import IdempotencyRecord
from apps.idempotency.services import (
    PURGE_BATCH,
    idempotency_begin,
    idempotency_finish,
    idempotent,
    request_fingerprint,
)

pytestmark = pytest.mark.django_db

SCOPE = "POST /api/reservations/"


def begin(key: str, fingerprint: str = "a" * 64, now=None):
    return idempotency_begin(scope=SCOPE, key=key, fingerprint=fingerprint, now=now)


def test_the_fingerprint_ignores_field_order_and_spacing_but_not_values_or_paths():
    base = request_fingerprint(method="POST", path="/api/x/", body=b'{"a": 1, "b": [2, 3]}')

    assert base == request_fingerprint(method="POST", path="/api/x/", body=b'{"b":[2,3],"a":1}')
    assert base != request_fingerprint(method="POST", path="/api/x/", body=b'{"a": 2, "b": [2, 3]}')
    assert base != request_fingerprint(method="POST", path="/api/y/", body=b'{"a": 1, "b": [2, 3]}')
    assert request_fingerprint(method="POST", path="/api/x/", body=b"not json") != (
        request_fingerprint(method="POST", path="/api/x/", body=b"")
    )


def test_a_key_is_claimed_once_then_busy_then_done():
    now = timezone.now()
    claimed = begin("k", now=now)
    assert claimed.outcome == "claimed"
    assert begin("k", now=now).outcome == "busy"
    assert begin("k", fingerprint="b" * 64, now=now).outcome == "reused"

    assert idempotency_finish(record=claimed.record, response=HttpResponse(b"{}", status=201))

    done = begin("k", now=now + timedelta(hours=23))
    assert done.outcome == "done"
    assert (done.record.response_status, bytes(done.record.response_body)) == (201, b"{}")


def test_expired_keys_are_purged_when_new_keys_are_stored(settings):
    settings.IDEMPOTENCY_KEY_HOURS = 24
    now = timezone.now()
    for n in range(PURGE_BATCH + 5):
        begin(f"old-{n}", now=now - timedelta(hours=25))
    begin("recent", now=now - timedelta(hours=23))

    begin("new", now=now)

    # Bounded: one new key deletes at most PURGE_BATCH expired records.
    assert IdempotencyRecord.objects.filter(key__startswith="old-").count() == 5
    begin("newer", now=now)
    assert set(IdempotencyRecord.objects.values_list("key", flat=True)) == {
        "recent",
        "new",
        "newer",
    }


def test_the_runners_daily_chores_purge_every_expired_key_with_no_new_key_coming(settings):
    """Stored answers carry names and emails: they go with their keys, traffic or not."""
    from escape_rooms_backend import housekeeping

    settings.IDEMPOTENCY_KEY_HOURS = 24
    now = timezone.now()
    for n in range(3):
        begin(f"old-{n}", now=now - timedelta(hours=25))
    begin("recent", now=now - timedelta(hours=23))

    removed = housekeeping.run(now=now)

    assert removed["expired idempotency keys"] == 3
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["recent"]


def test_an_expired_key_is_new_again_even_before_it_is_purged(settings):
    settings.IDEMPOTENCY_KEY_HOURS = 24
    now = timezone.now()
    first = begin("k", now=now)
    idempotency_finish(record=first.record, response=HttpResponse(status=201))

    again = begin("k", fingerprint="b" * 64, now=now + timedelta(hours=24, seconds=1))

    assert again.outcome == "claimed"
    record = IdempotencyRecord.objects.get()
    assert (record.status, record.fingerprint, record.response_status) == (
        "in_progress",
        "b" * 64,
        None,
    )


def test_a_stale_run_is_taken_over_once_and_its_late_answer_is_not_stored(settings):
    settings.IDEMPOTENCY_STALE_SECONDS = 60
    now = timezone.now()
    dead = begin("k", now=now)

    later = now + timedelta(seconds=61)
    retry = begin("k", now=later)
    rival = begin("k", now=later)

    assert (retry.outcome, rival.outcome) == ("claimed", "busy")
    assert not idempotency_finish(record=dead.record, response=HttpResponse(status=500))
    assert idempotency_finish(record=retry.record, response=HttpResponse(status=200))
    assert IdempotencyRecord.objects.get().response_status == 200


def keyed_post(key: str = "k"):
    return RequestFactory().post(
        "/api/x/", b'{"a": 1}', content_type="application/json", headers={"Idempotency-Key": key}
    )


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_server_error_or_a_429_is_not_remembered_and_the_retry_runs_again(status):
    answers = iter([JsonResponse({"error": {"code": "x", "message": "x"}}, status=status)])
    view = idempotent(lambda request: next(answers, JsonResponse({"ok": True}, status=200)))

    first = view(keyed_post())
    retry = view(keyed_post())

    assert (first.status_code, retry.status_code) == (status, 200)
    assert not retry.has_header("Idempotent-Replayed")
    assert view(keyed_post()).has_header("Idempotent-Replayed")


def test_a_replay_repeats_retry_after_and_content_type():
    def answer(request):
        response = JsonResponse({"error": {"code": "slot_taken", "message": "x"}}, status=409)
        response["Retry-After"] = "7"
        response["X-Other"] = "of the moment"
        return response

    view = idempotent(answer)
    view(keyed_post())

    replay = view(keyed_post())

    assert (replay.status_code, replay["Retry-After"]) == (409, "7")
    assert replay["Content-Type"] == "application/json"
    assert not replay.has_header("X-Other")
