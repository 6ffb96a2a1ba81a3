"""ASGI entry point; starts the background scheduler exactly as ``config.wsgi`` does."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

application = get_asgi_application()

from django.apps import apps  # noqa: E402

from apps.reservations.apps import ReservationsConfig  # noqa: E402

config = apps.get_app_config("reservations")
assert isinstance(config, ReservationsConfig)  # noqa: S101
config.start_background_scheduler()
