"""Signals the scheduler sends, for apps to receive without the scheduler importing them."""

from django.dispatch import Signal

# Sent when this process's scheduler starts, changes role, sweeps or stops,
# and every so often between. Keyword arguments, each optional: ``started``
# and ``stopped`` (bool), ``role`` ("runner" or "standby"), ``took_over``
# (bool, this process has just taken the runner lock), ``sweep_cancelled``
# (int, what the sweep that just ran cancelled), ``sweep_seconds`` (float,
# how long it took) and ``job_lateness`` (``JobLateness.snapshot()`` of
# ``escape_rooms_backend.lifecycle``: this process's deadline jobs, by kind).
# Receivers run in the scheduler's threads; what they raise is logged.
scheduler_heartbeat = Signal()
