"""
Find my booking, over the API: send an address the links to its current bookings.

The answer is the same whether the address has bookings or not, and every
response, refusals included, is ``Cache-Control: no-store``: it concerns
personal data.
"""

from django.views.decorators.cache import never_cache
from ninja import Router, Schema, Status
from ninja.decorators import decorate_view

from apps.idempotency.services import OPENAPI_EXTRA as IDEMPOTENT
from apps.idempotency.services import idempotent
from apps.reservations.api import Email, StrictIn
from config.api_errors import ErrorOut
from config.client_address import client_address

from . import services

router = Router(tags=["bookings"])


class FindBookingIn(StrictIn):
    email: Email


class AcceptedOut(Schema):
    detail: str


@router.post(
    "/bookings/find/",
    response={202: AcceptedOut, 400: ErrorOut, 429: ErrorOut},
    summary="Send an email address the links to its current bookings",
    openapi_extra=IDEMPOTENT,
)
@decorate_view(idempotent, never_cache)
def find_bookings(request, payload: FindBookingIn):
    """
    Queue a message to ``email`` with the links to its current bookings.

    202 with the same body for every valid address, known or not: the
    message is sent only if the address has pending or paid bookings for
    times to come. At most ``FIND_BOOKING_PER_HOUR`` requests per email
    address and per client address an hour; beyond that 429
    ``too_many_requests`` with ``Retry-After``.
    """
    services.bookings_link_request(email=payload.email, client_address=client_address(request))
    return Status(202, {"detail": services.FIND_BOOKING_SENT})
