#!/usr/bin/env python
"""
Repair drift between the reservations and the job store.

    python scripts/reconcile.py            # report; exit 1 when there is drift
    python scripts/reconcile.py --fix      # repair; exit 1 when something could not be
    python scripts/reconcile.py --json

The same as ``python manage.py reconcile_expiry_jobs`` (one service behind
both: ``escape_rooms_backend.timeline.deadlines_reconcile``), for cron jobs and
operators who do not want to think about manage.py.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

from django.core.management import ManagementUtility  # noqa: E402

if __name__ == "__main__":
    ManagementUtility([sys.argv[0], "reconcile_expiry_jobs", *sys.argv[1:]]).execute()
