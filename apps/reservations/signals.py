"""The reservations' domain signal."""

from django.dispatch import Signal

# Sent by the services (``apps.reservations.services``) once reservations,
# one or many, were created or changed: inside the transaction that changed
# them, or just after it committed (the bulk expiry, so that its locks are
# held no longer). Keyword argument ``reservations``: a list of
# ``Reservation`` instances as they now stand (a bulk change sends instances
# loaded with the fields it changed). Receivers that act outside the database
# defer to ``transaction.on_commit``, which runs at once outside a transaction.
reservations_changed = Signal()
