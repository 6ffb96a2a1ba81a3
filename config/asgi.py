"""ASGI entry point; starts the background scheduler as ``config.wsgi`` does."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

application = get_asgi_application()

from apps.reservations.apps import start_background_scheduler  # noqa: E402 (after setup)

start_background_scheduler()
