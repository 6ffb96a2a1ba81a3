"""
Receivers that queue the messages a change calls for, in the change's own transaction.

Wired in ``MessagingConfig.ready()``. They decide and delegate; the outbox
(``services.messages_enqueue``) sends nothing before the commit.
"""

from collections.abc import Sequence
from typing import Any

from apps.payments.models import Payment
from apps.reservations.models import Reservation, WaitingEntry
from apps.rooms.models import TimeSlot

from . import services


def messages_for_reservations(
    sender: Any, reservations: Sequence[Reservation], **kwargs: Any
) -> None:
    """Receiver of ``reservations_changed``: queue what each reservation's new state calls for."""
    services.messages_enqueue_for_states(reservations)


def messages_for_payment(sender: Any, instance: Payment, created: bool, **kwargs: Any) -> None:
    """Receiver of ``post_save`` for payments: a refused payment tells its customer."""
    if created and (item := services.refund_due_for(instance)) is not None:
        services.messages_enqueue([item])


def messages_for_waiting_list(
    sender: Any,
    entries: Sequence[WaitingEntry],
    notice: str,
    booking: Reservation | None = None,
    reason: str = "",
    **kwargs: Any,
) -> None:
    """Receiver of ``waiting_list_changed``: tell each party what the notice says."""
    services.messages_enqueue(services.waiting_messages_for(entries, notice, booking, reason))


def messages_for_move(
    sender: Any, reservation: Reservation, from_slot: TimeSlot, **kwargs: Any
) -> None:
    """Receiver of ``reservation_moved``: tell the customer the new time, with a calendar file."""
    services.messages_enqueue([services.moved_message_for(reservation, from_slot)])
