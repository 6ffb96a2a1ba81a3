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

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.reservations import errors
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.selectors import reservation_by_token
from apps.reservations.services import (
    reservation_cancel,
    reservation_cancel_paid,
    reservation_checkout,
    reservation_hold_for_payment,
    reservation_lock,
    reservation_note,
    reservation_pay,
    reservation_pay_late,
)
from escape_rooms_backend import deadlines, timeline

from . import providers
from .models import Payment, ProviderPayment
from .providers import ProviderRefused, ProviderUnavailable

logger = logging.getLogger(__name__)

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
    late: bool = False,
    price: tuple[Decimal, str] | None = None,
) -> Confirmation:
    """
    Record a payment confirmation and apply it if it can be; never raises for its outcome.

    ``amount`` is a Decimal in ``currency`` (ISO 4217); it must equal the
    reservation's price, frozen when the slot was held: a later change of
    the room's price does not touch it. ``source`` is ``webhook``,
    ``customer``, ``staff`` or ``provider`` (a capture of ours; the audit
    trail's cause is ``staff``, ``payment`` or ``customer``). ``late``: the
    hold had lapsed when the payment was authorised and was taken again for
    it, so an applied payment is ``applied_late``. ``price`` (amount,
    currency): the amount the provider was asked for when the customer
    started paying, instead of the reservation's price.
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
            outcome, reason = _apply(
                reservation, reference, amount, currency, source, now, actor, price
            )
            if late and outcome == Outcome.APPLIED:
                outcome = Outcome.APPLIED_LATE
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
    price: tuple[Decimal, str] | None,
) -> tuple[str, str]:
    if reservation is None:
        return Outcome.REFUND_DUE, Reason.UNKNOWN_RESERVATION
    expected, expected_currency = price or (reservation.price, reservation.currency)
    if amount != expected or currency.upper() != expected_currency.upper():
        return Outcome.REFUND_DUE, Reason.AMOUNT_MISMATCH
    if reservation.status == Reservation.Status.PAID:
        return Outcome.REFUND_DUE, Reason.ALREADY_PAID
    lapsed_by_expiry = reservation.cancellation_reason == Reservation.CancellationReason.EXPIRED
    if reservation.status == Reservation.Status.CANCELLED and not lapsed_by_expiry:
        return Outcome.REFUND_DUE, Reason.CANCELLED
    cause = {"staff": ReservationEvent.Cause.STAFF, "provider": ReservationEvent.Cause.PAYMENT}.get(
        source, ReservationEvent.Cause.CUSTOMER
    )
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
    except (errors.SlotTaken, errors.SlotClosed):
        # Closed by the venue: the slot is no one's to pay for.
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
    Confirm a payment of the reservation's price, for interfaces that answer a person.

    The API's ``pay``, the *Pay* button and the admin's *mark paid*: recorded
    by ``payment_confirm`` like a webhook's, then a ``refund_due`` outcome is
    raised as its refusal (``payment_raise_if_refused``). A customer's
    (``source="customer"``) is refused with ``PayAtProvider`` when the
    provider authorises: the money comes through it. Staff may still mark
    a booking paid (cash at the desk).
    """
    if source == "customer" and provider_authorises():
        # The customer's word is no payment when a provider takes the money.
        raise errors.PayAtProvider()
    confirmation = payment_confirm(
        reservation_token=str(reservation.token),
        reference=reference,
        amount=reservation.price,
        currency=reservation.currency,
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
    """
    Record that staff refunded a payment due back; False if it was not due or done.

    Due back: a ``refund_due`` payment, or one whose refund was requested
    for a payment no provider took (``refunds_due_to_staff``). Two staff
    marking it at once: one is told it is done, the other ``False``.
    """
    with transaction.atomic():
        # Locked first: the UPDATE joins the provider's payment, and PostgreSQL
        # would not check the join's conditions again after waiting for a lock.
        list(Payment.objects.select_for_update().filter(pk=payment.pk).values_list("pk"))
        updated = (
            refunds_due_to_staff()
            .filter(pk=payment.pk)
            .update(
                refunded_at=now or timezone.now(),
                refunded_by=actor if isinstance(actor, User) else None,
            )
        )
    return bool(updated)


# ---------------------------------------------------------------------------
# Payments at a provider that authorises: start, authorise, settle, refund
# ---------------------------------------------------------------------------

PAYMENT = "payment"  # the deadline kind that settles a reservation's payment
Status = ProviderPayment.Status
Settled = ProviderPayment.Outcome
Void = ProviderPayment.Reason


def provider_authorises() -> bool:
    """Whether ``PAYMENT_PROVIDER`` takes money by authorisation and capture."""
    return providers.provider().authorises


def payment_start(*, reservation: Reservation, now: datetime | None = None) -> ProviderPayment:
    """
    Start paying at the provider: the reservation's PaymentIntent, made once.

    Starts the checkout (the hold lasts at least ``PAYMENT_WINDOW_SECONDS``
    more), then creates a PaymentIntent for the reservation's price, manual
    capture, the reservation's token in its metadata, with an idempotency
    key derived from the reservation. Called again, it returns the same one:
    a concurrent call that got a second one from a provider that ignores
    the key cancels it. Raises ``PaymentsConfirmedAtOnce`` (the simulated
    provider), ``ProviderUnavailable`` (nothing was made; try again), and
    as ``reservation_checkout``.
    """
    provider = providers.provider()
    if not provider.authorises:
        raise errors.PaymentsConfirmedAtOnce()
    reservation_checkout(reservation=reservation, now=now)
    row, _ = ProviderPayment.objects.get_or_create(
        reservation=reservation,
        defaults={
            "provider": provider.name,
            "amount": reservation.price,
            "currency": reservation.currency.upper(),
            "created_at": now or timezone.now(),
        },
    )
    if row.provider_id:
        return row
    try:
        state = provider.create(
            amount=row.amount,
            currency=row.currency,
            reservation=str(reservation.token),
            idempotency_key=f"escape-rooms-reservation-{reservation.token}",
        )
    except ProviderUnavailable as exc:
        raise errors.ProviderUnavailable() from exc
    ProviderPayment.objects.filter(pk=row.pk, provider_id__isnull=True).update(
        provider_id=state.id,
        client_secret=state.client_secret,
        status=state.status,
        checked_at=timezone.now(),
    )
    row.refresh_from_db()
    if row.provider_id != state.id:
        _cancel_quietly(provider, state.id)  # a concurrent start's twin
    elif row.outcome:
        # The reservation lapsed or was cancelled while the provider answered,
        # and the payment was closed without an intent: none may stay open.
        _cancel_quietly(provider, state.id)
    return row


def payment_authorise(*, reservation: Reservation, payment_method: str) -> ProviderPayment:
    """
    Confirm the reservation's PaymentIntent with a payment method the browser made, then settle it.

    The intent comes back ``requires_capture`` (then captured and paid at
    once), or ``requires_action`` (the customer's bank asks them to confirm:
    the page hands its client secret to Stripe.js, then asks for a
    ``payment_settle``). Raises ``PaymentNotStarted``, ``CardDeclined``,
    ``ProviderUnavailable``.
    """
    row = ProviderPayment.objects.filter(reservation=reservation).first()
    if row is None or not row.provider_id:
        raise errors.PaymentNotStarted()
    if row.outcome:
        return row
    try:
        providers.provider_named(row.provider).confirm(row.provider_id, payment_method)
    except ProviderRefused as exc:
        raise errors.CardDeclined(_declined(exc)) from exc
    except ProviderUnavailable as exc:
        raise errors.ProviderUnavailable() from exc
    return payment_settle_quietly(row)


def _declined(exc: Exception) -> str:
    return f"{errors.CardDeclined.default_message} ({exc})"[:300]


def payment_settle_quietly(row: ProviderPayment) -> ProviderPayment:
    """``payment_settle`` for a customer's request: a provider down leaves it to the job."""
    try:
        return payment_settle(row)
    except ProviderUnavailable:
        _schedule(row.reservation_id, timezone.now() + timedelta(seconds=5))
        row.refresh_from_db()
        return row


def payment_settle(row: ProviderPayment, *, now: datetime | None = None) -> ProviderPayment:
    """
    Read the payment back from the provider and act on what it says; idempotent.

    Whatever told us (a webhook, the page, the deadline at the hold's end,
    the sweep), the decision comes from the provider's state and the
    reservation's, never from the message:

    - ``requires_capture`` (authorised) while the slot is still the
      customer's (within the hold, or lapsed with the slot still free):
      the slot is held for the capture, the intent captured, and the
      reservation paid through ``payment_confirm`` (late, if the hold had
      lapsed). The slot taken, the game started, the reservation cancelled
      or paid otherwise: the intent is cancelled, so the authorisation is
      voided and nothing is charged.
    - ``processing``: the hold is kept until ``PAYMENT_IN_FLIGHT_GRACE_SECONDS``
      after it was first seen in flight, at most.
    - not authorised (waiting for a card or the customer): nothing while the
      hold runs; once it lapsed, or the reservation was cancelled or paid
      otherwise, the intent is cancelled so that no late authorisation can
      follow.
    - ``succeeded`` (captured): recorded through ``payment_confirm``.
    - ``canceled``: recorded as voided.

    Makes provider calls with no transaction open. Raises
    ``ProviderUnavailable`` when the provider cannot be asked; what was
    decided before is kept, a capture asked for and not answered keeps its
    slot (``payment_keep_in_doubt``), and the caller tries again later.
    """
    try:
        return _settle(row, now)
    except ProviderUnavailable:
        payment_keep_in_doubt(row)
        raise


def _settle(row: ProviderPayment, now: datetime | None) -> ProviderPayment:
    row.refresh_from_db()
    if row.outcome and row.status in (Status.SUCCEEDED, Status.CANCELED):
        return row
    if not row.provider_id:
        return _settle_never_made(row, now)
    provider = providers.provider_named(row.provider)
    state = provider.retrieve(row.provider_id)
    now = now or timezone.now()
    _mirror(row, state, now)
    reservation = Reservation.objects.select_related("time_slot__room").get(pk=row.reservation_id)
    if state.status == Status.SUCCEEDED:
        return _record_capture(row, reservation, state, late=False)
    if state.status == Status.CANCELED:
        return _close(row, Settled.VOIDED, row.reason or Void.CANCELED_AT_PROVIDER, now)
    if state.status == Status.REQUIRES_CAPTURE:
        return _capture(row, reservation, state, now)
    if state.status == Status.PROCESSING:
        if reservation.status == Reservation.Status.PENDING and reservation.expires_at > now:
            with contextlib.suppress(errors.ReservationError):  # changed meanwhile: next time
                # Bounded: the grace runs from when it was first seen in flight.
                since = row.in_flight_since or now
                _hold(reservation, row, now, "Payment processing at the provider", since=since)
        return row
    # Not authorised (yet).
    if reservation.current_status(now) == Reservation.Status.PENDING:
        return row
    return _void(row, reservation, _why_not(reservation, now), now)


def _mirror(row: ProviderPayment, state: providers.IntentState, now: datetime) -> None:
    changes: dict = {"status": state.status, "checked_at": now}
    in_flight = state.status in (Status.PROCESSING, Status.REQUIRES_CAPTURE)
    if in_flight and row.in_flight_since is None:
        changes["in_flight_since"] = now
    ProviderPayment.objects.filter(pk=row.pk).update(**changes)
    for field, value in changes.items():
        setattr(row, field, value)


def _why_not(reservation: Reservation, now: datetime) -> str:
    """Why a reservation no longer wants its payment's money."""
    if reservation.status == Reservation.Status.PAID:
        return Void.ALREADY_PAID
    if reservation.current_cancellation_reason(now) == Reservation.CancellationReason.EXPIRED:
        return Void.HOLD_LAPSED
    return Void.CANCELLED


def _hold(
    reservation: Reservation, row: ProviderPayment, now: datetime, why: str, *, since: datetime
) -> None:
    """Keep the slot for the payment in flight, until the grace after ``since``."""
    until = since + timedelta(seconds=settings.PAYMENT_IN_FLIGHT_GRACE_SECONDS)
    at = timezone.localtime(until).strftime("%H:%M:%S")
    reservation_hold_for_payment(
        reservation=reservation,
        until=until,
        now=now,
        detail=f"{why} ({row.provider_id}): until {at}",
    )


def _capture(
    row: ProviderPayment, reservation: Reservation, state: providers.IntentState, now: datetime
) -> ProviderPayment:
    # The amount the intent was made for: the reservation's price.
    if state.amount != row.amount or state.currency != row.currency:
        return _void(row, reservation, Void.AMOUNT_MISMATCH, now)
    late = not (reservation.status == Reservation.Status.PENDING and reservation.expires_at > now)
    # The slot first: captured money must have a slot to go with.
    try:
        _hold(reservation, row, now, "Payment authorised: slot kept for the capture", since=now)
    except (errors.SlotTaken, errors.SlotClosed):  # closed: the slot is no one's
        return _void(row, reservation, Void.SLOT_TAKEN, now)
    except errors.SlotUnavailable:
        return _void(row, reservation, Void.SLOT_STARTED, now)
    except errors.AlreadyPaid:
        return _void(row, reservation, Void.ALREADY_PAID, now)
    except errors.AlreadyCancelled:
        return _void(row, reservation, Void.CANCELLED, now)
    provider = providers.provider_named(row.provider)
    intent_id = str(row.provider_id)
    # From here until the provider answers, the capture may have happened:
    # the slot stays the customer's (``payment_keep_in_doubt``).
    ProviderPayment.objects.filter(pk=row.pk, capture_attempted_at__isnull=True).update(
        capture_attempted_at=now
    )
    try:
        captured = provider.capture(intent_id)
    except ProviderRefused:
        # Captured meanwhile by a concurrent settle, or no longer capturable:
        # the provider's state decides.
        captured = provider.retrieve(intent_id)
    _mirror(row, captured, timezone.now())
    if captured.status != Status.SUCCEEDED:
        return row
    return _record_capture(row, reservation, captured, late=late)


def _record_capture(
    row: ProviderPayment, reservation: Reservation, state: providers.IntentState, *, late: bool
) -> ProviderPayment:
    confirmation = payment_confirm(
        reservation_token=str(reservation.token),
        reference=state.id,
        amount=state.amount,
        currency=state.currency,
        source="provider",
        event_id=state.id,
        late=late,
        price=(row.amount, row.currency),
    )
    payment = confirmation.payment
    ProviderPayment.objects.filter(pk=row.pk).update(payment=payment)
    row.payment = payment
    closed = _close(row, Settled.CAPTURED, Void.NONE, timezone.now())
    if payment.outcome == Outcome.REFUND_DUE and payment.refund_requested_at is None:
        # Captured, yet the booking could not take it (cancelled, or the slot
        # lost, while the capture was on its way): the money goes back at once.
        Payment.objects.filter(pk=payment.pk, refund_requested_at__isnull=True).update(
            refund_requested_at=timezone.now()
        )
        payment.refresh_from_db()
        try:
            payment_refund(payment)
        except providers.ProviderError:
            logger.warning("Refund of %s waits for the provider", payment.reference, exc_info=True)
            _schedule(reservation.pk, timezone.now() + timedelta(seconds=10))
    return closed


def payment_keep_in_doubt(row: ProviderPayment) -> bool:
    """
    Keep the slot for a payment whose capture was asked for and not answered.

    The capture may have happened at the provider: until it says, the slot
    stays the customer's, for ``PAYMENT_IN_FLIGHT_GRACE_SECONDS`` more at each
    call (the payment deadline calls it at every retry), never past the
    slot's start. Makes no provider call. Returns whether the hold was kept.
    """
    row.refresh_from_db()
    if row.capture_attempted_at is None or row.outcome:
        return False
    reservation = Reservation.objects.get(pk=row.reservation_id)
    now = timezone.now()
    try:
        _hold(reservation, row, now, "Capture not answered yet: slot kept", since=now)
    except errors.ReservationError:
        return False
    return True


def _void(
    row: ProviderPayment, reservation: Reservation, reason: str, now: datetime
) -> ProviderPayment:
    """Cancel the intent at the provider: the authorisation, if any, is voided."""
    provider = providers.provider_named(row.provider)
    intent_id = str(row.provider_id)
    try:
        state = provider.cancel(intent_id)
    except ProviderRefused:
        state = provider.retrieve(intent_id)
        if state.status != Status.CANCELED:
            _mirror(row, state, now)
            logger.warning("Could not cancel %s (%s); settling it again", row.provider_id, state)
            return payment_settle(row) if state.status == Status.SUCCEEDED else row
    _mirror(row, state, now)
    closed = _close(row, Settled.VOIDED, reason, now)
    label = ProviderPayment.Reason(reason).label
    reservation_note(
        reservation=reservation, detail=f"Payment {row.provider_id} voided: {label}", now=now
    )
    return closed


def _close(row: ProviderPayment, outcome: str, reason: str, now: datetime) -> ProviderPayment:
    ProviderPayment.objects.filter(pk=row.pk, outcome="").update(
        outcome=outcome, reason=reason, settled_at=now
    )
    row.refresh_from_db()
    return row


def _settle_never_made(row: ProviderPayment, now: datetime | None) -> ProviderPayment:
    # The start failed before the provider answered: an intent may exist
    # there (the idempotency key finds it when the customer tries again);
    # once the reservation no longer needs a payment, it has none to wait for.
    reservation = Reservation.objects.get(pk=row.reservation_id)
    now = now or timezone.now()
    if reservation.current_status(now) != Reservation.Status.PENDING:
        return _close(row, Settled.VOIDED, _why_not(reservation, now), now)
    return row


def _cancel_quietly(provider: providers.Provider, intent_id: str) -> None:
    try:
        provider.cancel(intent_id)
    except providers.ProviderError:
        logger.warning("Could not cancel the duplicate PaymentIntent %s", intent_id, exc_info=True)


def _schedule(reservation_id: int, at: datetime) -> None:
    if settings.SCHEDULER_EXPIRY_JOBS:
        timeline.deadline_schedule(deadlines.kind_named(PAYMENT), reservation_id, at)


def payment_settle_intent(intent_id: str) -> ProviderPayment | None:
    """
    ``payment_settle`` the payment with the Stripe id ``intent_id`` (a webhook's).

    An intent this product did not record (a concurrent start's twin whose
    cancel failed) is cancelled if it names a reservation whose payment is
    another one. Returns the payment, or ``None`` for an unknown intent.
    Raises ``ProviderUnavailable``, and ``ProviderRefused`` for an intent
    Stripe does not know.
    """
    row = ProviderPayment.objects.filter(provider_id=intent_id).first()
    if row is not None:
        return payment_settle(row)
    provider = providers.provider_named("stripe")
    state = provider.retrieve(intent_id)
    if state.status in (Status.SUCCEEDED, Status.CANCELED):
        return None
    reservation = reservation_by_token(state.reservation)
    if reservation is not None and ProviderPayment.objects.filter(reservation=reservation).exists():
        _cancel_quietly(provider, intent_id)
    return None


def payments_due(now: datetime | None = None) -> QuerySet[ProviderPayment]:
    """Open payments whose reservation's hold ends within the check's lead, or ended."""
    now = now or timezone.now()
    lead = timedelta(seconds=settings.PAYMENT_CHECK_LEAD_SECONDS)
    return ProviderPayment.objects.filter(outcome="").exclude(
        reservation__status=Reservation.Status.PENDING, reservation__expires_at__gt=now + lead
    )


def payment_flag(*, intent_id: str, flag: str, detail: str, now: datetime | None = None) -> bool:
    """
    Flag for staff a payment that the provider refunded or that is disputed there.

    ``intent_id`` is the PaymentIntent the provider's event names. A refund
    this product asked for is no news and flags nothing. Records the flag in
    the reservation's audit trail. Returns whether a payment was flagged.
    """
    payment = Payment.objects.filter(reference=intent_id).select_related("reservation").first()
    if payment is None:
        return False
    if flag == Payment.Flag.REFUNDED_AT_PROVIDER and payment.refund_requested_at is not None:
        return False
    return _flag(payment, flag, detail, now)


def _flag(payment: Payment, flag: str, detail: str, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    flagged = (
        Payment.objects.filter(pk=payment.pk)
        .exclude(flag=flag)
        .update(flag=flag, flagged_at=now, flag_detail=detail[:200])
    )
    if flagged and payment.reservation is not None:
        reservation_note(
            reservation=payment.reservation,
            detail=f"{Payment.Flag(flag).label}: {detail}",
            now=now,
        )
    return bool(flagged)


def _booking_payment(reservation: Reservation) -> Payment:
    """The payment applied to a paid booking; ``NotRefundable`` when there is none."""
    payment = Payment.objects.filter(
        reservation=reservation,
        reference=reservation.payment_reference,
        outcome__in=[Outcome.APPLIED, Outcome.APPLIED_LATE],
    ).first()
    if payment is None:
        raise errors.NotRefundable()
    return payment


def booking_cancel_and_refund(
    *, reservation: Reservation, actor: AbstractBaseUser | None = None
) -> Payment:
    """
    Staff cancel a paid booking: the slot is released and the payment refunded at the provider.

    The cancellation and the refund request commit together; the refund
    follows with an idempotency key (``payment_refund``). A provider down
    leaves it requested: the payment deadline asks again. Raises
    ``NotRefundable`` unless the reservation is paid.
    """
    now = timezone.now()
    with transaction.atomic():
        reservation_cancel_paid(reservation=reservation, actor=actor, now=now)
        payment = _booking_payment(reservation)
        Payment.objects.filter(pk=payment.pk, refund_requested_at__isnull=True).update(
            refund_requested_at=now, refunded_by=actor if isinstance(actor, User) else None
        )
    payment.refresh_from_db()
    try:
        return payment_refund(payment)
    except ProviderUnavailable:
        logger.warning("Refund of %s waits for the provider", payment.reference, exc_info=True)
        _schedule(reservation.pk, now + timedelta(seconds=10))
        return payment


def payment_refund(payment: Payment) -> Payment:
    """
    Make a requested refund at the provider and record its id; idempotent.

    Raises ``ProviderUnavailable`` (still requested) and ``ProviderRefused``.
    """
    if payment.refund_requested_at is None or payment.refund_reference:
        return payment
    # The provider that took the money, whatever PAYMENT_PROVIDER says now.
    taken_by = ProviderPayment.objects.filter(payment=payment).values_list("provider", flat=True)
    provider = providers.provider_named(taken_by.first() or "simulated")
    try:
        reference = provider.refund(payment.reference, idempotency_key=f"refund-{payment.pk}")
    except ProviderRefused as refused:
        # For good (refunded or disputed at the provider already): staff decide.
        _flag(payment, Payment.Flag.REFUND_REFUSED, f"Refund refused: {refused}")
        raise
    now = timezone.now()
    Payment.objects.filter(pk=payment.pk, refund_reference="").update(
        refund_reference=reference, refunded_at=now
    )
    payment.refresh_from_db()
    if payment.reservation is not None:
        reservation_note(
            reservation=payment.reservation,
            detail=f"Refunded {payment.amount} {payment.currency}: {reference}",
            now=now,
        )
    return payment


def refunds_requested() -> QuerySet[Payment]:
    """Payments taken by a provider whose refund was asked for and not made, nor refused."""
    return Payment.objects.filter(
        refund_requested_at__isnull=False, refund_reference="", provider_payment__isnull=False
    ).exclude(flag=Payment.Flag.REFUND_REFUSED)


def refunds_due_to_staff() -> QuerySet[Payment]:
    """
    Payments staff are to hand back and have not marked refunded.

    Those refused on arrival (``refund_due``), and those of bookings the
    customer cancelled that no provider took (the simulated provider, cash,
    a transfer): no provider can refund them.
    """
    requested = Q(
        refund_requested_at__isnull=False, refund_reference="", provider_payment__isnull=True
    )
    return Payment.objects.filter(Q(outcome=Outcome.REFUND_DUE) | requested).filter(
        refunded_at__isnull=True
    )


def booking_cancel_by_customer(
    *, reservation: Reservation, now: datetime | None = None
) -> Payment | None:
    """
    The customer cancels their booking: a hold, or a paid booking with its refund.

    A pending reservation is cancelled as ``reservation_cancel`` does (no
    money taken; returns ``None``). A paid booking may be cancelled until
    ``CUSTOMER_CANCEL_HOURS`` before the game (``TooLateToCancel``): the
    slot is released (to its waiting list first) and the refund requested
    in the same transaction, cause and reason ``customer``. A payment the
    provider took is then refunded through it (a provider down leaves the
    refund requested: the payment deadline asks again; a refusal flags it
    for staff); any other payment (the simulated provider, cash at the
    desk) is left due to staff (``refunds_due_to_staff``). Returns the
    payment. Raises as ``reservation_cancel`` and ``reservation_cancel_paid``.
    """
    reservation.refresh_from_db()  # its status and payment reference as they stand
    if reservation.status != Reservation.Status.PAID:
        reservation_cancel(
            reservation=reservation, reason=Reservation.CancellationReason.CUSTOMER, now=now
        )
        return None
    with transaction.atomic():
        reservation_cancel_paid(
            reservation=reservation, reason=Reservation.CancellationReason.CUSTOMER, now=now
        )
        payment = _booking_payment(reservation)
        requested_at = reservation.cancelled_at or timezone.now()
        Payment.objects.filter(pk=payment.pk, refund_requested_at__isnull=True).update(
            refund_requested_at=requested_at
        )
    payment.refresh_from_db()
    if not refunds_requested().filter(pk=payment.pk).exists():
        return payment  # due to staff
    try:
        return payment_refund(payment)
    except ProviderUnavailable:
        logger.warning("Refund of %s waits for the provider", payment.reference, exc_info=True)
        _schedule(reservation.pk, timezone.now() + timedelta(seconds=10))
    except ProviderRefused:
        logger.error("The provider refused the refund of %s", payment.reference, exc_info=True)
    payment.refresh_from_db()
    return payment
