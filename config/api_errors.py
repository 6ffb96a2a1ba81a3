"""
One error shape for the whole API: ``{"error": {"code", "message", "fields"?}}``.

400 for invalid input (with ``fields``), 404 for unknown tokens and slots, 409
for conflicts; the codes are those of ``apps.reservations.errors``. 429 with
``Retry-After`` for the limits: ``too_many_holds`` and ``too_many_requests``.
"""

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser
from ninja.types import DictStrAny

from apps.messaging.services import TooManyRequests
from apps.reservations.errors import ReservationError, TooManyHolds

INVALID_MESSAGE = "Some fields are not valid."
TOO_LARGE_MESSAGE = "The request body is too large."
NOT_JSON_MESSAGE = "Send the request body as JSON (Content-Type: application/json)."


class NotJson(Exception):
    """A request body declared as something other than JSON."""


class JsonOnlyParser(Parser):
    """Read request bodies only when they say they are JSON: no guessing from the bytes."""

    def parse_body(self, request: HttpRequest) -> DictStrAny:
        if request.content_type != "application/json":
            raise NotJson(request.content_type)
        return super().parse_body(request)


MALFORMED_MESSAGE = "The request body is not valid JSON."
NOT_FOUND_MESSAGE = "Not found."
TOO_MANY_REQUESTS = "too_many_requests"


class ErrorDetail(Schema):
    code: str
    message: str
    fields: dict[str, list[str]] | None = None


class ErrorOut(Schema):
    error: ErrorDetail


def error_response(
    api: NinjaAPI,
    request: HttpRequest,
    *,
    status: int,
    code: str,
    message: str,
    fields: dict[str, list[str]] | None = None,
) -> HttpResponse:
    error: dict[str, object] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return api.create_response(request, {"error": error}, status=status)


def _field_errors(exc: ValidationError) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for error in exc.errors:
        # loc is like ("body", "payload", "party_size") or ("query", "date").
        names = [
            str(part)
            for part in error.get("loc", ())
            if part not in ("body", "payload", "query", "path")
        ]
        name = ".".join(names) or "__all__"
        message = error.get("msg", "Invalid value.").removeprefix("Value error, ")
        fields.setdefault(name, []).append(message)
    return fields


def install_error_handlers(api: NinjaAPI) -> None:
    @api.exception_handler(ValidationError)
    def invalid(request, exc):
        return error_response(
            api,
            request,
            status=400,
            code="invalid",
            message=INVALID_MESSAGE,
            fields=_field_errors(exc),
        )

    @api.exception_handler(HttpError)
    def http_error(request, exc):
        if isinstance(exc.__cause__, NotJson):  # django-ninja wraps parser errors in a 400
            return error_response(
                api, request, status=415, code="unsupported_media_type", message=NOT_JSON_MESSAGE
            )
        if exc.status_code == 400:
            return error_response(
                api, request, status=400, code="malformed", message=MALFORMED_MESSAGE
            )
        return error_response(api, request, status=exc.status_code, code="error", message=str(exc))

    @api.exception_handler(RequestDataTooBig)
    def too_large(request, exc):
        # Django refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB).
        return error_response(api, request, status=413, code="too_large", message=TOO_LARGE_MESSAGE)

    @api.exception_handler(Http404)
    def not_found(request, exc):
        return error_response(api, request, status=404, code="not_found", message=NOT_FOUND_MESSAGE)

    @api.exception_handler(ReservationError)
    def refused(request, exc):
        response = error_response(
            api, request, status=exc.status, code=exc.code, message=exc.message, fields=exc.fields
        )
        if isinstance(exc, TooManyHolds):
            response["Retry-After"] = str(exc.retry_after)
        return response

    @api.exception_handler(TooManyRequests)
    def too_many_requests(request, exc):
        response = error_response(
            api, request, status=429, code=TOO_MANY_REQUESTS, message=exc.message
        )
        response["Retry-After"] = str(exc.retry_after)
        return response
