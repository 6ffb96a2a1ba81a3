"""
The deadline this app puts on a reservation's timeline: settling its payment.

With a provider that authorises (Stripe), a reservation whose customer
started paying has a ``payment`` deadline, job ``settle_payment:<pk>``:

- ``PAYMENT_CHECK_LEAD_SECONDS`` before its hold ends, the provider is
  asked about the payment (``services.payment_settle``): authorised, it is
  captured within the hold; processing, the hold is kept for the grace.
  Asked before the end, so that the expiry itself never waits for the
  provider: the hold lapses on time whatever the provider does.
- once the reservation is cancelled (the hold lapsed, or the customer or
  staff cancelled it) or paid otherwise, at once: an intent still open is
  cancelled, so that no late authorisation can follow, and a refund staff
  asked for is made.

The jobs run in the outside executor: a provider that is slow or down
holds these threads only. The sweep schedules the due ones and never
calls the provider itself. Registered in ``PaymentsConfig.ready()``.
"""

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from apps.reservations.models import Reservation
from escape_rooms_backend import deadlines, timeline

from . import services
from .models import ProviderPayment
from .providers import ProviderError, ProviderRefused

logger = logging.getLogger(__name__)


def settle_due_at(reservation: Reservation) -> datetime | None:
    """
    When a reservation's payment is next looked at, or ``None``.

    ``PAYMENT_CHECK_LEAD_SECONDS`` before a pending hold ends; at once once
    it is cancelled; ``None`` when no payment was started, the provider
    confirms at once, or it is paid (the sweep finds an intent left open by
    a payment made otherwise).
    """
    if reservation.checkout_started_at is None or not services.provider_authorises():
        return None
    if reservation.status == Reservation.Status.PENDING:
        return _before_end(reservation.expires_at, reservation.checkout_started_at)
    if reservation.status == Reservation.Status.CANCELLED:
        return reservation.cancelled_at
    return None


def settle_never_due(reservation: Reservation) -> bool:
    """Whether the reservation never had a payment deadline: its customer never started paying."""
    # Not the provider's say: one switched since may have left jobs behind.
    return reservation.checkout_started_at is None


def _before_end(expires_at: datetime, checkout_started_at: datetime) -> datetime:
    lead = timedelta(seconds=settings.PAYMENT_CHECK_LEAD_SECONDS)
    return max(expires_at - lead, checkout_started_at)


def settle_handle(reservation_ids: Sequence[int], by: str) -> list[int]:
    """Settle these reservations' payments and requested refunds; return those still waiting."""
    retry: list[int] = []
    open_payments = ProviderPayment.objects.filter(reservation_id__in=reservation_ids, outcome="")
    for row in open_payments:
        try:
            services.payment_settle(row)
        except ProviderRefused as exc:
            # Not worth a retry in seconds: the sweep asks again.
            logger.error("The provider refused to settle %s: %s", row.provider_id, exc)
        except ProviderError as exc:
            logger.warning("Payment %s waits for the provider: %s", row.provider_id, exc)
            retry.append(row.reservation_id)
    refunds = services.refunds_requested().filter(reservation_id__in=reservation_ids)
    for payment in refunds:
        try:
            services.payment_refund(payment)
        except ProviderRefused as exc:
            logger.error("The provider refused the refund of %s: %s", payment.reference, exc)
        except ProviderError as exc:
            logger.warning("Refund of %s waits for the provider: %s", payment.reference, exc)
            if payment.reservation_id is not None:
                retry.append(payment.reservation_id)
    return retry


def settle_sweep(now: datetime | None, by: str) -> int:
    """Put the job of every payment or refund that is due at ``now``; never calls the provider."""
    now = now or timezone.now()
    due = set(services.payments_due(now).values_list("reservation_id", flat=True))
    refunds = services.refunds_requested().filter(reservation__isnull=False)
    due |= {pk for pk in refunds.values_list("reservation_id", flat=True) if pk is not None}
    kind = deadlines.kind_named(services.PAYMENT)
    if not settings.SCHEDULER_EXPIRY_JOBS:
        # The benchmarks' switch: no job would ever run them.
        settle_handle(sorted(due), by)
        return len(due)
    for reservation_id in sorted(due):
        timeline.deadline_schedule(kind, reservation_id, now)
    return len(due)


def settle_scheduled() -> Iterable[tuple[int, datetime]]:
    """``(pk, due)`` of every reservation with an open payment or a refund to make."""
    now = timezone.now()
    rows = ProviderPayment.objects.filter(outcome="").values_list(
        "reservation_id",
        "reservation__status",
        "reservation__expires_at",
        "reservation__checkout_started_at",
        "reservation__cancelled_at",
    )
    found: dict[int, datetime] = {}
    for reservation_id, status, expires_at, started_at, cancelled_at in rows:
        if status == Reservation.Status.PENDING:
            found[reservation_id] = _before_end(expires_at, started_at or expires_at)
        else:
            found[reservation_id] = cancelled_at or now
    for reservation_id in services.refunds_requested().values_list("reservation_id", flat=True):
        if reservation_id is not None:
            found.setdefault(reservation_id, now)
    return found.items()


PAYMENT = deadlines.DeadlineKind(
    name=services.PAYMENT,
    job_prefix="settle_payment:",
    due_at=settle_due_at,
    handle=settle_handle,
    sweep=settle_sweep,
    scheduled=settle_scheduled,
    never_due=settle_never_due,
    # A slow or unreachable provider keeps these threads busy, not the
    # ones that end holds.
    executor="payment",
)


def register() -> None:
    """Register this app's deadline kind."""
    deadlines.register(PAYMENT)
