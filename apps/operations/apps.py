from django.apps import AppConfig


class OperationsConfig(AppConfig):
    name = "apps.operations"
    label = "operations"
    verbose_name = "Operations"

    def ready(self) -> None:
        from prometheus_client import disable_created_metrics

        from escape_rooms_backend.signals import scheduler_heartbeat

        from .services import heartbeat_receive

        scheduler_heartbeat.connect(heartbeat_receive, dispatch_uid="operations_heartbeat")
        # /metrics: no "_created" sample beside each counter, which the text
        # format would show as a gauge of its own.
        disable_created_metrics()
