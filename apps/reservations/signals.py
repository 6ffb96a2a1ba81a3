"""The reservations' domain signal."""

from django.dispatch import Signal

# Sent by the services (``apps.reservations.services``) once reservations,
# one or many, were created or changed, inside the transaction that changed
# them: what receivers write to the database (the customers' messages)
# commits or rolls back with the change. Keyword argument ``reservations``: a
# list of ``Reservation`` instances as they now stand (a bulk change sends
# instances loaded with only the fields it changed). Receivers that act
# outside the database defer to ``transaction.on_commit``.
reservations_changed = Signal()

# Sent by the waiting list's services inside the transaction that changed the
# list, for what its parties are to be told. Keyword arguments ``entries``:
# the ``WaitingEntry`` instances concerned; ``notice``: ``joined``,
# ``slot_booked`` (then also ``booking``, the paid reservation), ``slot_free``
# or ``slot_closed`` (then also ``reason``, the closure's) (see
# ``apps.reservations.offers``).
waiting_list_changed = Signal()

# Sent by ``apps.reservations.changes.reservation_move`` inside the transaction
# that moved a reservation to another time slot, after ``reservations_changed``.
# Keyword arguments ``reservation``: the reservation on its new slot;
# ``from_slot``: the ``TimeSlot`` it left.
reservation_moved = Signal()
