from django.apps import AppConfig


class MessagingConfig(AppConfig):
    name = "apps.messaging"
    label = "messaging"
    verbose_name = "Customer messages"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from apps.payments.models import Payment
        from apps.reservations.models import Reservation, WaitingEntry
        from apps.reservations.signals import (
            reservation_moved,
            reservations_changed,
            waiting_list_changed,
        )

        from . import deadlines, receivers

        deadlines.register()
        reservations_changed.connect(
            receivers.messages_for_reservations,
            sender=Reservation,
            dispatch_uid="reservation_messages",
        )
        waiting_list_changed.connect(
            receivers.messages_for_waiting_list,
            sender=WaitingEntry,
            dispatch_uid="waiting_list_messages",
        )
        reservation_moved.connect(
            receivers.messages_for_move, sender=Reservation, dispatch_uid="reservation_moved"
        )
        post_save.connect(
            receivers.messages_for_payment, sender=Payment, dispatch_uid="payment_messages"
        )
