"""
The operator's numbers for ``/metrics``, in Prometheus' text format.

Most of ``/metrics`` is state, and the state is in the database: every web
worker and every scheduler process writes there, so ``VenueCollector`` reads
it at scrape time (a handful of small queries, each served by an index,
however long the audit trail) and any web worker answers the same. Counters
that only grow are kept in the database too: the heartbeats' sweeps,
takeovers and the runners' counts of their jobs' lateness. The reserve
outcomes are counted in the web processes that see them: with
``PROMETHEUS_MULTIPROC_DIR`` set (several gunicorn workers),
``prometheus_client`` keeps them in files there and adds up every worker's;
without it, in this process's default registry.
"""

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from time import monotonic

from django.conf import settings
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from apps.messaging.selectors import outbox_backlog, outbox_due
from escape_rooms_backend import deadlines, timeline
from escape_rooms_backend.lifecycle import LATENESS_BUCKETS

from .selectors import (
    holds_pending,
    job_lateness_totals,
    lateness_histogram,
    overdue_holds,
    running_schedulers,
    scheduler_counters,
)

ROLES = ("runner", "standby")


class VenueCollector(Collector):
    """Read the holds, the deadlines, the scheduler and the outbox from the database at ``now``."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def collect(self) -> Iterator[Metric]:
        started = monotonic()
        now = self.now or timezone.now()
        yield from self._deadlines(now)
        yield from self._holds(now)
        yield from self._scheduler(now)
        yield from self._outbox(now)
        yield GaugeMetricFamily(
            "escape_rooms_metrics_collect_seconds",
            "How long reading these numbers from the database took, seconds.",
            value=monotonic() - started,
        )

    def _deadlines(self, now: datetime) -> Iterator[Metric]:
        window = settings.METRICS_LATENESS_WINDOW_SECONDS
        lateness = GaugeHistogramMetricFamily(
            "escape_rooms_deadline_lateness_seconds",
            f"Seconds from a deadline's due time until its work was done, for the deadlines "
            f"done in the last {window} s (a window, not a counter: no rate()). The hold's "
            f"end (kind expiry) only: its releases are in the audit trail.",
            labels=["kind"],
        )
        histogram = lateness_histogram(now, timedelta(seconds=window), LATENESS_BUCKETS)
        buckets = [
            (floatToGoString(bound), float(count))
            for bound, count in zip(histogram.bounds, histogram.cumulative, strict=True)
        ]
        lateness.add_metric(
            [deadlines.EXPIRY], [*buckets, ("+Inf", float(histogram.count))], histogram.sum
        )
        yield lateness
        yield self._job_lateness()
        jobs = GaugeMetricFamily(
            "escape_rooms_deadline_jobs",
            "Jobs in the job store, by deadline kind.",
            labels=["kind"],
        )
        try:
            counts = timeline.jobs_per_kind()
        except Exception:  # reported as down, not raised: the other numbers still matter
            up = 0.0
        else:
            up = 1.0
            for kind, count in counts.items():
                jobs.add_metric([kind], float(count))
        yield jobs
        yield GaugeMetricFamily(
            "escape_rooms_job_store_up", "1 when the job store answered, else 0.", value=up
        )

    def _job_lateness(self) -> Metric:
        family = HistogramMetricFamily(
            "escape_rooms_deadline_job_lateness_seconds",
            "Seconds from a deadline job's run time until it returned, by kind, counted by "
            "the runners since they started (a job that folded others in counts once); "
            "up to a minute behind.",
            labels=["kind"],
        )
        width = len(LATENESS_BUCKETS) + 2
        totals = job_lateness_totals(width)
        for kind in deadlines.kinds():
            counts = totals.get(kind.name, [0.0] * width)
            buckets = [
                (floatToGoString(bound), count)
                for bound, count in zip(LATENESS_BUCKETS, counts, strict=False)
            ]
            family.add_metric([kind.name], [*buckets, ("+Inf", counts[-2])], counts[-1])
        return family

    def _holds(self, now: datetime) -> Iterator[Metric]:
        grace = settings.METRICS_OVERDUE_SECONDS
        yield GaugeMetricFamily(
            "escape_rooms_holds_pending",
            "Pending reservations: holds waiting for payment, lapsed ones not yet released too.",
            value=float(holds_pending()),
        )
        overdue = overdue_holds(now - timedelta(seconds=grace))
        yield GaugeMetricFamily(
            "escape_rooms_holds_overdue",
            f"Pending reservations more than {grace:g} s past "
            f"expires_at: lapsed holds no job or sweep has released.",
            value=float(overdue.count),
        )
        oldest = overdue.oldest_age_seconds
        yield GaugeMetricFamily(
            "escape_rooms_holds_overdue_oldest_age_seconds",
            "Seconds since the oldest overdue hold's expires_at; 0 when none is overdue.",
            value=0.0 if oldest is None else oldest + grace,
        )

    def _scheduler(self, now: datetime) -> Iterator[Metric]:
        counters = scheduler_counters()
        sweeps = SummaryMetricFamily(
            "escape_rooms_sweep_duration_seconds",
            "Sweeps run by every runner (count) and how long they took (sum), seconds.",
            count_value=counters.sweeps,
            sum_value=counters.sweep_seconds,
        )
        yield sweeps
        if counters.last_sweep_at is not None:
            yield GaugeMetricFamily(
                "escape_rooms_sweep_last_success_timestamp_seconds",
                "When the latest sweep finished (Unix time).",
                value=counters.last_sweep_at.timestamp(),
            )
        yield CounterMetricFamily(
            "escape_rooms_runner_takeovers",
            "Times a scheduler process took the runner lock (each start of a runner, "
            "and each failover to a standby).",
            value=counters.takeovers,
        )
        processes = GaugeMetricFamily(
            "escape_rooms_scheduler_processes",
            "Scheduler processes with a fresh heartbeat, by role: runner (runs the jobs; "
            "0 means none) or standby.",
            labels=["role"],
        )
        alive = {role: running_schedulers(now, role=role) for role in ROLES}
        for role in ROLES:
            processes.add_metric([role], float(len(alive[role])))
        yield processes
        runners = alive["runner"]
        yield GaugeMetricFamily(
            "escape_rooms_runner_up",
            "1 when a runner has sent a heartbeat within two sweep intervals, else 0.",
            value=1.0 if runners else 0.0,
        )
        if runners:
            yield GaugeMetricFamily(
                "escape_rooms_runner_heartbeat_age_seconds",
                "Seconds since the runner's latest heartbeat.",
                value=max(0.0, min((now - beat.beat_at).total_seconds() for beat in runners)),
            )

    def _outbox(self, now: datetime) -> Iterator[Metric]:
        backlog = outbox_backlog()
        due = outbox_due(now)
        messages = GaugeMetricFamily(
            "escape_rooms_outbox_messages",
            "Customer messages in the outbox by state: pending (not sent yet), due (pending "
            "and due for an attempt now), failing (pending, the last attempt failed) and "
            "failed (given up on; staff may send them again).",
            labels=["state"],
        )
        messages.add_metric(["pending"], float(backlog.pending))
        messages.add_metric(["due"], float(due.count))
        messages.add_metric(["failing"], float(backlog.failing))
        messages.add_metric(["failed"], float(backlog.failed))
        yield messages
        yield GaugeMetricFamily(
            "escape_rooms_outbox_oldest_due_age_seconds",
            "Seconds the longest-waiting due message has waited past its attempt; 0 when none.",
            value=due.oldest_age_seconds(now),
        )
        yield GaugeMetricFamily(
            "escape_rooms_outbox_oldest_pending_age_seconds",
            "Seconds since the oldest pending message was queued; 0 when none.",
            value=backlog.oldest_age_seconds(now) or 0.0,
        )


def metrics_exposition(*, now: datetime | None = None) -> bytes:
    """Every number of ``/metrics`` in the Prometheus text format (version 0.0.4)."""
    registry = CollectorRegistry()
    registry.register(VenueCollector(now))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every gunicorn worker's counters, from the files they write there.
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)  # this process's counters, and its process_* numbers
    return generate_latest(registry)
