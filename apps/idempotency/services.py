"""
Safe retries: with an ``Idempotency-Key``, an unsafe API call answers a retry as it did the first.

``idempotent`` wraps an operation's run (``decorate_view(idempotent)``). A
request without the header runs as usual. With it, the key is scoped to the
endpoint (method and path) and stored with a fingerprint of the request
before the view runs; the view's answer is stored after it:

- the same key and body again: the first answer (status, body, Content-Type,
  Retry-After) with ``Idempotent-Replayed: true``, whatever happened since;
- the same key with another body: 422 ``idempotency_key_reused``;
- the same key while the first request still runs: the retry waits up to
  ``IDEMPOTENCY_WAIT_SECONDS`` for its answer, then 409
  ``idempotency_key_in_progress`` with ``Retry-After``;
- a server error (an exception, a 5xx) or a 429 stores nothing: the record
  is deleted and a retry runs again (after Retry-After, for a 429);
- a request left in progress longer than ``IDEMPOTENCY_STALE_SECONDS`` (its
  process died) is taken over by the next retry.

Keys live ``IDEMPOTENCY_KEY_HOURS`` from their first use; then the key is
new again. Each new key deletes up to ``PURGE_BATCH`` expired records.
"""

import functools
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.utils import timezone

from escape_rooms_backend import housekeeping

from .models import IdempotencyRecord

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# The response headers a replay repeats; the rest are the server's of the moment.
KEPT_HEADERS = ("Content-Type", "Retry-After", "Location", "Cache-Control")
PURGE_BATCH = 100
POLL_SECONDS = 0.05
IN_PROGRESS_RETRY_AFTER = 1

INVALID_KEY = "invalid_idempotency_key"
INVALID_KEY_MESSAGE = "The Idempotency-Key header must be 1 to 255 printable ASCII characters."
KEY_REUSED = "idempotency_key_reused"
KEY_REUSED_MESSAGE = (
    "This Idempotency-Key was used with another request body: use a new key for a new request."
)
KEY_IN_PROGRESS = "idempotency_key_in_progress"
KEY_IN_PROGRESS_MESSAGE = (
    "A request with this Idempotency-Key is still running: retry after Retry-After seconds."
)

# A reservation's request key, from the client's key: a version 5 UUID never
# equals the version 4 keys the booking pages issue.
REQUEST_KEY_NAMESPACE = uuid.UUID("6f1c5d0e-3b7a-4c55-9a43-2f0e8d9b1a77")

# The header as the OpenAPI document describes it on each operation that reads it.
OPENAPI_EXTRA: dict[str, Any] = {
    "parameters": [
        {
            "in": "header",
            "name": HEADER,
            "required": False,
            "description": (
                "Makes a retry safe: a random key (a UUID) per operation, 1 to 255 "
                "printable ASCII characters, no space first or last. The same key "
                "and body again get the first answer; another body, 422 "
                f"{KEY_REUSED}; while the first still runs, 409 {KEY_IN_PROGRESS}. "
                "Keys are scoped to the endpoint and live IDEMPOTENCY_KEY_HOURS (24 h)."
            ),
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_KEY_LENGTH,
            },
        }
    ],
    "responses": {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
        }
        for status, description in (
            (400, f"Invalid input; {INVALID_KEY}: a malformed Idempotency-Key."),
            (409, f"Conflict; {KEY_IN_PROGRESS}: the key's first request still runs."),
            (422, f"{KEY_REUSED}: the Idempotency-Key was used with another body."),
        )
    },
}


def idempotency_key_valid(key: str) -> bool:
    """
    Whether ``key`` is 1 to 255 printable ASCII characters, not starting or ending in a space.

    Spaces at the ends are refused rather than trimmed: a proxy may strip
    them, and a retry would then be another key. The OpenAPI document states
    the rule in words rather than as a ``pattern``: strings for such a
    pattern are slow to generate for the Schemathesis run.
    """
    return (
        0 < len(key) <= MAX_KEY_LENGTH
        and all(" " <= char <= "~" for char in key)
        and key == key.strip(" ")
    )


def request_fingerprint(*, method: str, path: str, body: bytes) -> str:
    """
    sha256 (hex) of the method, the path and the body as canonical JSON.

    Canonical: keys sorted, no spaces, so that a retry's reordered fields
    match. A body that is not JSON is taken byte for byte.
    """
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except ValueError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Begun:
    """What ``idempotency_begin`` found: ``claimed``, ``done``, ``reused`` or ``busy``."""

    outcome: str
    record: IdempotencyRecord | None = None


def _purge_expired(now: datetime) -> int:
    """Delete up to PURGE_BATCH records older than IDEMPOTENCY_KEY_HOURS; how many."""
    expired = IdempotencyRecord.objects.filter(
        created_at__lte=now - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)
    )
    pks = list(expired.order_by("created_at").values_list("pk", flat=True)[:PURGE_BATCH])
    if not pks:
        return 0
    deleted, _ = IdempotencyRecord.objects.filter(pk__in=pks).delete()
    return deleted


def idempotency_keys_purge(now: datetime) -> int:
    """
    Delete every record older than ``IDEMPOTENCY_KEY_HOURS``; how many.

    The runner's daily chore (``escape_rooms_backend.housekeeping``): stored
    answers carry customers' names and emails, and must not outlive their
    keys when no new key comes to purge them.
    """
    expired = IdempotencyRecord.objects.filter(
        created_at__lte=now - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)
    )
    return housekeeping.delete_in_batches(expired)


def _take_over(
    record: IdempotencyRecord, *, fingerprint: str, created_at: datetime, now: datetime
) -> bool:
    """Make ``record`` this request's, in progress, if no one changed it since it was read."""
    taken = IdempotencyRecord.objects.filter(
        pk=record.pk,
        status=record.status,
        created_at=record.created_at,
        started_at=record.started_at,
    ).update(
        fingerprint=fingerprint,
        status=IdempotencyRecord.Status.IN_PROGRESS,
        response_status=None,
        response_body=b"",
        response_headers={},
        created_at=created_at,
        started_at=now,
    )
    if taken:
        record.fingerprint, record.status = fingerprint, IdempotencyRecord.Status.IN_PROGRESS
        record.response_status, record.response_body, record.response_headers = None, b"", {}
        record.created_at, record.started_at = created_at, now
    return bool(taken)


def idempotency_begin(
    *, scope: str, key: str, fingerprint: str, now: datetime | None = None
) -> Begun:
    """
    Claim ``key`` in ``scope`` for a request with ``fingerprint``, or say why not.

    ``claimed``: the record is this request's, in progress and committed,
    so that a concurrent duplicate sees it; run the view, then call
    ``idempotency_finish`` or ``idempotency_abandon``. ``done``: replay
    the record's response. ``reused``: the key was used with another
    fingerprint. ``busy``: another request holds the key; ask again later.

    A record older than IDEMPOTENCY_KEY_HOURS is treated as absent, and one
    left in progress longer than IDEMPOTENCY_STALE_SECONDS is taken over:
    each with one conditional UPDATE, so that of two retries one wins.
    Never blocks: a rival's insert or take-over in between means ``busy``
    at worst.
    """
    now = now or timezone.now()
    lifetime = timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)
    stale = timedelta(seconds=settings.IDEMPOTENCY_STALE_SECONDS)
    for _attempt in range(3):
        record = IdempotencyRecord.objects.filter(scope=scope, key=key).first()
        if record is None:
            _purge_expired(now)
            try:
                with transaction.atomic():
                    record = IdempotencyRecord.objects.create(
                        scope=scope,
                        key=key,
                        fingerprint=fingerprint,
                        created_at=now,
                        started_at=now,
                    )
            except IntegrityError:
                continue  # a concurrent request inserted it first: read it
            return Begun("claimed", record)
        if record.created_at <= now - lifetime:
            if _take_over(record, fingerprint=fingerprint, created_at=now, now=now):
                return Begun("claimed", record)
            continue
        if record.fingerprint != fingerprint:
            return Begun("reused", record)
        if record.status == IdempotencyRecord.Status.DONE:
            return Begun("done", record)
        if record.started_at <= now - stale:
            if _take_over(record, fingerprint=fingerprint, created_at=record.created_at, now=now):
                return Begun("claimed", record)
            continue
        return Begun("busy", record)
    return Begun("busy")


def idempotency_finish(*, record: IdempotencyRecord, response: HttpResponseBase) -> bool:
    """Store ``response`` as the key's answer, unless another request took the key over."""
    return bool(
        IdempotencyRecord.objects.filter(
            pk=record.pk,
            status=IdempotencyRecord.Status.IN_PROGRESS,
            started_at=record.started_at,
        ).update(
            status=IdempotencyRecord.Status.DONE,
            response_status=response.status_code,
            response_body=getattr(response, "content", b""),
            response_headers={
                name: response[name] for name in KEPT_HEADERS if response.has_header(name)
            },
        )
    )


def idempotency_abandon(*, record: IdempotencyRecord) -> None:
    """Delete the key's record, so that a retry runs again, unless another request took it over."""
    IdempotencyRecord.objects.filter(
        pk=record.pk, status=IdempotencyRecord.Status.IN_PROGRESS, started_at=record.started_at
    ).delete()


def idempotency_request_key(request: HttpRequest) -> uuid.UUID | None:
    """
    A key naming what this request creates, derived from its Idempotency-Key; None without one.

    A UUID 5 of the scope, the key and the request's fingerprint: the same
    for every retry of the request, also one that runs again after a crash
    (a take-over, or a server error that deleted the record). Passed as
    ``request_key`` to ``reservation_create``, it makes such a retry find
    the reservation the first request made instead of being refused by its
    hold. The key used again for another body past IDEMPOTENCY_KEY_HOURS
    names something else.
    """
    return getattr(request, "idempotency_request_key", None)


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _replay(record: IdempotencyRecord) -> HttpResponse:
    response = HttpResponse(bytes(record.response_body), status=record.response_status or 200)
    for name, value in record.response_headers.items():
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response


def idempotent(run: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """
    Make an API operation answer retries with its first answer (see the module's docstring).

    Use with django-ninja's ``decorate_view(idempotent)`` and the operation's
    ``openapi_extra=OPENAPI_EXTRA``.
    """

    @functools.wraps(run)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        key = request.headers.get(HEADER)
        if key is None:
            return run(request, *args, **kwargs)
        if not idempotency_key_valid(key):
            return _error(400, INVALID_KEY, INVALID_KEY_MESSAGE)
        try:
            body = request.body
        except RequestDataTooBig:
            return run(request, *args, **kwargs)  # refused as too large, remembered by no one
        method = request.method or "POST"
        scope = f"{method} {request.path}"
        fingerprint = request_fingerprint(method=method, path=request.path, body=body)

        deadline = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
        while True:
            begun = idempotency_begin(scope=scope, key=key, fingerprint=fingerprint)
            if begun.outcome == "claimed" and begun.record is not None:
                record = begun.record
                break
            if begun.outcome == "done" and begun.record is not None:
                return _replay(begun.record)
            if begun.outcome == "reused":
                return _error(422, KEY_REUSED, KEY_REUSED_MESSAGE)
            if time.monotonic() >= deadline:
                busy = _error(409, KEY_IN_PROGRESS, KEY_IN_PROGRESS_MESSAGE)
                busy["Retry-After"] = str(IN_PROGRESS_RETRY_AFTER)
                return busy
            time.sleep(POLL_SECONDS)

        request.idempotency_request_key = uuid.uuid5(  # type: ignore[attr-defined]
            REQUEST_KEY_NAMESPACE, f"{scope}\n{key}\n{fingerprint}"
        )
        try:
            response = run(request, *args, **kwargs)
        except BaseException:
            idempotency_abandon(record=record)
            raise
        if response.status_code >= 500 or response.status_code == 429 or response.streaming:
            idempotency_abandon(record=record)
        else:
            idempotency_finish(record=record, response=response)
        return response

    return wrapper
