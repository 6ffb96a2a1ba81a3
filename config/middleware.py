import json
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

API_PREFIX = "/api/"
MESSAGES = {
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "This method is not allowed here; see the Allow header."),
}


class ApiErrorShapeMiddleware:
    """
    Keep the API's errors in its one shape, also where no view of ours answers.

    django-ninja answers an unsupported method with a plain-text 405, and
    Django an unknown path with an HTML 404: under ``/api/`` both become
    ``{"error": {"code", "message"}}`` like every other error.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            request.path.startswith(API_PREFIX)
            and response.status_code in MESSAGES
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            code, message = MESSAGES[response.status_code]
            response.content = json.dumps({"error": {"code": code, "message": message}})
            response["Content-Type"] = "application/json"
        return response


class ApiNoStoreMiddleware:
    """
    Let no cache keep an API response unless its view says how long it may.

    Under ``/api/`` a response without ``Cache-Control`` gets ``no-store,
    private``: reservations carry a customer's name and email and a status
    that changes within seconds, and a shared cache or the browser's back
    button must not keep them. The public lists set their own.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith(API_PREFIX) and not response.has_header("Cache-Control"):
            response["Cache-Control"] = "no-store, private"
        return response
