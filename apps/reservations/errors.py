"""
Refusals of the reservation services.

Each error carries a machine-readable ``code`` and an HTTP ``status`` so that
every interface (API, pages, admin) presents the same refusal the same way.
Messages are constants that the tests reuse.
"""

from typing import ClassVar


class ReservationError(Exception):
    """Base of every refusal; a refused operation has changed nothing."""

    code: ClassVar[str] = "reservation_error"
    status: ClassVar[int] = 409
    default_message: ClassVar[str] = "The reservation could not be changed."

    def __init__(self, message: str | None = None, *, fields: dict[str, list[str]] | None = None):
        self.message = message or self.default_message
        self.fields = fields or {}
        super().__init__(self.message)


class SlotNotFound(ReservationError):
    code = "slot_not_found"
    status = 404
    default_message = "No time slot with this id exists."


class SlotUnavailable(ReservationError):
    code = "slot_unavailable"
    default_message = (
        "This time slot can no longer be booked: it has started or its room is closed."
    )


class SlotClosed(SlotUnavailable):
    """
    The venue closed the room (or itself) at the slot's time (``Closure``).

    A ``SlotUnavailable`` with a code of its own, so that an interface that
    knows only the one refuses it the same way.
    """

    code = "slot_closed"
    default_message = "The venue is closed at this time: this time slot cannot be booked."


class SlotTaken(ReservationError):
    code = "slot_taken"
    default_message = "This time slot was just taken by someone else."


class InvalidReservation(ReservationError):
    code = "invalid"
    status = 400
    default_message = "Some fields are not valid."


class HoldExpired(ReservationError):
    code = "hold_expired"
    default_message = (
        "The payment hold on this reservation has expired; the time slot was released."
    )


class AlreadyPaid(ReservationError):
    code = "already_paid"
    default_message = "This reservation is already paid."


class AlreadyCancelled(ReservationError):
    code = "already_cancelled"
    default_message = "This reservation is cancelled."


class HoldNotExtendable(ReservationError):
    code = "hold_not_extendable"
    default_message = "This hold cannot be extended."


class TooManyHolds(ReservationError):
    code = "too_many_holds"
    status = 429
    default_message = "Too many reservations are waiting for payment."

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AmountMismatch(ReservationError):
    code = "amount_mismatch"
    default_message = (
        "The amount paid does not match the price; the payment will be refunded and the "
        "reservation is unchanged."
    )


class PaymentReferenceConflict(ReservationError):
    code = "reference_conflict"
    default_message = (
        "This payment reference was already used for another reservation or amount; "
        "nothing was recorded."
    )


class PayAtProvider(ReservationError):
    code = "pay_at_provider"
    default_message = (
        "Payments are taken by the payment provider: start paying with "
        "POST /api/reservations/<token>/payment/."
    )


class PaymentNotStarted(ReservationError):
    code = "payment_not_started"
    default_message = "No payment was started for this reservation."


class PaymentsConfirmedAtOnce(ReservationError):
    code = "payment_confirmed_at_once"
    default_message = (
        "The payment provider confirms payments at once: pay with "
        "POST /api/reservations/<token>/pay/."
    )


class CardDeclined(ReservationError):
    code = "card_declined"
    status = 402
    default_message = "The card was declined. Try another card."


class ProviderUnavailable(ReservationError):
    code = "payment_provider_unavailable"
    status = 503
    default_message = (
        "The payment provider cannot be reached just now; nothing was charged. Try again in "
        "a minute."
    )


class NotRefundable(ReservationError):
    code = "not_refundable"
    default_message = "Only a paid booking can be cancelled with a refund."


class TooLateToCancel(ReservationError):
    code = "too_late_to_cancel"
    default_message = (
        "This booking can no longer be cancelled online: it starts within {hours} hours. "
        "Please call the venue."
    )


class TooLateToChange(ReservationError):
    code = "too_late_to_change"
    default_message = (
        "This booking can no longer be moved online: it starts within {hours} hours. "
        "Please call the venue."
    )


class NotMovable(ReservationError):
    code = "not_movable"
    default_message = (
        "An offer from the waiting list cannot be moved to another time: pay for it first, "
        "or let it go to the next party."
    )


class SlotAvailable(ReservationError):
    code = "slot_available"
    default_message = "This time slot is free: reserve it instead of waiting for it."


class AlreadyWaiting(ReservationError):
    code = "already_waiting"
    default_message = "This email address is already on this time slot's waiting list."


class AlreadyHolding(ReservationError):
    code = "already_holding"
    default_message = (
        "This email address holds this time slot already: pay for it on its page instead of "
        "waiting for it."
    )


class TooManyWaiting(ReservationError):
    code = "too_many_waiting"
    status = 429
    default_message = (
        "This email address or network is already waiting for as many time slots as "
        "allowed: leave one of those waiting lists first."
    )


class NotWaiting(ReservationError):
    code = "not_waiting"
    default_message = "This place on the waiting list has ended; there is nothing to leave."


class NotPaid(ReservationError):
    code = "not_paid"
    default_message = "Only a paid booking can be checked in or marked a no-show."


class CheckInNotOpen(ReservationError):
    code = "check_in_not_open"
    default_message = "Check-in opens one hour before the game starts."


class GameNotStarted(ReservationError):
    code = "game_not_started"
    default_message = "A party can be marked a no-show only once its game has started."


class AttendanceUnchanged(ReservationError):
    code = "attendance_unchanged"
    default_message = "This booking is already marked so; nothing was changed."


TOO_MANY_HOLDS = (
    "Too many reservations ({limit}) from this email address or network are waiting for "
    "payment: pay or cancel one, or wait for a hold to end."
)
EXTENSION_LIMIT = "This hold has already been extended {limit} times, the most allowed."
OFFER_NOT_EXTENDABLE = (
    "An offer from the waiting list cannot be kept longer: the next party is waiting for it."
)
HOLD_ENDS_AT_START = "The hold already lasts until the game starts; it cannot be extended."
PARTY_SIZE_OUT_OF_RANGE = "This room takes {min} to {max} players."
MOVE_WITHIN_ROOM = "Choose another time of the same room."
