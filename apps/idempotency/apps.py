from django.apps import AppConfig


class IdempotencyConfig(AppConfig):
    name = "apps.idempotency"
    label = "idempotency"
    verbose_name = "Idempotency keys"

    def ready(self) -> None:
        from escape_rooms_backend import housekeeping

        from .services import idempotency_keys_purge

        housekeeping.register("expired idempotency keys", idempotency_keys_purge)
