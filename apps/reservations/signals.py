"""The reservations' domain signal."""

from django.dispatch import Signal

# Sent by the services (``apps.reservations.services``) inside the transaction
# that created or changed reservations, one or many, after the change: keyword
# argument ``reservations``, a list of ``Reservation`` instances as they now
# stand (a bulk change sends instances loaded with the fields it changed).
# Receivers that act outside the database defer to ``transaction.on_commit``.
reservations_changed = Signal()
