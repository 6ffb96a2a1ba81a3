"""
gunicorn for the production stack: ``gunicorn -c config/gunicorn.conf.py``.

Each worker loads ``config.wsgi``, so each offers a background scheduler; the
runner lock (``escape_rooms_backend.runner``) lets exactly one of them, or a
``manage.py start_scheduler`` worker, run the jobs. With
``SCHEDULER_WORKER_MODE=true`` the web workers only write jobs.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
wsgi_app = "config.wsgi:application"
# Not needed; with --preload (GUNICORN_CMD_ARGS) each worker starts its own
# scheduler after the fork (apps.reservations.apps.start_background_scheduler).
preload_app = False
timeout = 30
graceful_timeout = 30
accesslog = "-"
errorlog = "-"
