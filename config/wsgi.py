"""
WSGI entry point of the web server (``runserver``, gunicorn).

Importing this module is what "the web server runs" means: it starts the
background scheduler unless ``SCHEDULER_WORKER_MODE`` is set (see
``apps.reservations.apps.ReservationsConfig.start_background_scheduler``).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

application = get_wsgi_application()

from django.apps import apps  # noqa: E402

from apps.reservations.apps import ReservationsConfig  # noqa: E402

config = apps.get_app_config("reservations")
assert isinstance(config, ReservationsConfig)  # noqa: S101
config.start_background_scheduler()
