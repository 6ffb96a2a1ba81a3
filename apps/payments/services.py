"""
Payment confirmations: every one recorded with an outcome, none dropped.

``payment_confirm`` is the one way money reaches a reservation: the provider's
webhook, the API's ``pay``, the *Pay* button and the admin's *mark paid* all
call it. It runs in one transaction with the reservation's row locked, so a
confirmation racing the expiry job ends as exactly one of:

- ``applied``: the hold was still running; the reservation is paid.
- ``applied_late``: the hold had lapsed (expired or not yet) but the slot is
  still free; the reservation takes it again and is paid.
- ``refund_due``: unknown reservation, wrong amount or currency, already paid,
  cancelled by the customer or staff, or the slot now belongs to someone else
  or has started. The reservation is unchanged; staff refund it.

A reference seen before changes nothing and returns the first outcome; seen
before for another reservation or amount, it raises
``PaymentReferenceConflict`` and records nothing.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.reservations import errors
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.selectors import reservation_by_token
from apps.reservations.services import reservation_lock, reservation_pay, reservation_pay_late

from .models import Payment

Outcome = Payment.Outcome
Reason = Payment.Reason


@dataclass(frozen=True)
class Confirmation:
    payment: Payment
    created: bool  # False: a replay of a confirmation already recorded


def payment_confirm(
    *,
    reservation_token: str,
    reference: str,
    amount: Decimal,
    currency: str,
    source: str,
    event_id: str = "",
    now: datetime | None = None,
    actor: AbstractBaseUser | None = None,
) -> Confirmation:
    """
    Record a payment confirmation and apply it if it can be; never raises for its outcome.

    ``amount`` is a Decimal in ``currency`` (ISO 4217); it must equal the
    room's price. ``source`` is ``webhook``, ``customer`` or ``staff`` (the
    audit trail's cause is ``staff`` for staff, ``customer`` otherwise).
    """
    earlier = Payment.objects.filter(reference=reference).first()
    if earlier is not None:
        return _replay(earlier, reservation_token, amount, currency)
    try:
        with transaction.atomic():
            reservation = reservation_by_token(reservation_token)
            if reservation is not None:
                # Queue behind expiry, other payments and new customers of this slot.
                reservation_lock(reservation.pk)
                reservation.refresh_from_db()
            now = now or timezone.now()
            outcome, reason = _apply(reservation, reference, amount, currency, source, now, actor)
            payment = Payment.objects.create(
                reference=reference,
                reservation=reservation,
                reservation_token=reservation_token[:100],
                amount=amount,
                currency=currency.upper(),
                received_at=now,
                source=source,
                event_id=event_id,
                outcome=outcome,
                reason=reason,
            )
    except IntegrityError:
        # The same reference recorded meanwhile by a concurrent delivery.
        earlier = Payment.objects.get(reference=reference)
        return _replay(earlier, reservation_token, amount, currency)
    return Confirmation(payment, created=True)


def _replay(
    earlier: Payment, reservation_token: str, amount: Decimal, currency: str
) -> Confirmation:
    """A reference seen before: the same confirmation again, or a conflict, never a new one."""
    same = (
        earlier.reservation_token.lower() == reservation_token.lower()
        and earlier.amount == amount
        and earlier.currency == currency.upper()
    )
    if not same:
        raise errors.PaymentReferenceConflict()
    return Confirmation(earlier, created=False)


def _apply(
    reservation: Reservation | None,
    reference: str,
    amount: Decimal,
    currency: str,
    source: str,
    now: datetime,
    actor: AbstractBaseUser | None,
) -> tuple[str, str]:
    if reservation is None:
        return Outcome.REFUND_DUE, Reason.UNKNOWN_RESERVATION
    room = reservation.time_slot.room
    if amount != room.price or currency.upper() != room.currency.upper():
        return Outcome.REFUND_DUE, Reason.AMOUNT_MISMATCH
    if reservation.status == Reservation.Status.PAID:
        return Outcome.REFUND_DUE, Reason.ALREADY_PAID
    lapsed_by_expiry = reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED
    if reservation.status == Reservation.Status.CANCELLED and not lapsed_by_expiry:
        return Outcome.REFUND_DUE, Reason.CANCELLED
    cause = ReservationEvent.Cause.STAFF if source == "staff" else ReservationEvent.Cause.CUSTOMER
    if reservation.status == Reservation.Status.PENDING and reservation.expires_at > now:
        reservation_pay(
            reservation=reservation, payment_reference=reference, now=now, cause=cause, actor=actor
        )
        return Outcome.APPLIED, Reason.NONE
    if reservation.time_slot.starts_at <= now:
        return Outcome.REFUND_DUE, Reason.SLOT_STARTED
    try:
        reservation_pay_late(
            reservation=reservation, payment_reference=reference, now=now, cause=cause, actor=actor
        )
    except errors.SlotTaken:
        return Outcome.REFUND_DUE, Reason.SLOT_TAKEN
    return Outcome.APPLIED_LATE, Reason.NONE


def payment_confirm_price(
    *,
    reservation: Reservation,
    reference: str,
    source: str,
    actor: AbstractBaseUser | None = None,
) -> Payment:
    """
    Confirm a payment of the room's price, for interfaces that answer a person.

    The API's ``pay``, the *Pay* button and the admin's *mark paid*: recorded
    by ``payment_confirm`` like a webhook's, then a ``refund_due`` outcome is
    raised as its refusal (``payment_raise_if_refused``).
    """
    room = reservation.time_slot.room
    confirmation = payment_confirm(
        reservation_token=str(reservation.token),
        reference=reference,
        amount=room.price,
        currency=room.currency,
        source=source,
        actor=actor,
    )
    payment_raise_if_refused(confirmation.payment)
    return confirmation.payment


def payment_raise_if_refused(payment: Payment) -> None:
    """For interfaces that answer a customer: raise the refusal a ``refund_due`` outcome means."""
    if payment.outcome != Outcome.REFUND_DUE:
        return
    refusal: dict[str, type[errors.ReservationError]] = {
        Reason.ALREADY_PAID: errors.AlreadyPaid,
        Reason.CANCELLED: errors.AlreadyCancelled,
        Reason.AMOUNT_MISMATCH: errors.AmountMismatch,
    }
    raise refusal.get(payment.reason, errors.HoldExpired)()


def payment_mark_refunded(
    *, payment: Payment, actor: AbstractBaseUser, now: datetime | None = None
) -> bool:
    """Record that staff refunded a ``refund_due`` payment; False if it was not due or done."""
    updated = Payment.objects.filter(
        pk=payment.pk, outcome=Outcome.REFUND_DUE, refunded_at__isnull=True
    ).update(
        refunded_at=now or timezone.now(), refunded_by=actor if isinstance(actor, User) else None
    )
    return bool(updated)
