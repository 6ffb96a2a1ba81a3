"""
WSGI entry point of the web server (``runserver``, gunicorn).

Importing this module is what "the web server runs" means: it starts the
background scheduler unless ``SCHEDULER_WORKER_MODE`` is set
(``apps.reservations.apps.start_background_scheduler``).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

application = get_wsgi_application()

from apps.reservations.apps import start_background_scheduler  # noqa: E402 (after setup)

start_background_scheduler()
