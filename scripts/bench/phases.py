"""
The six benchmark phases. Each takes the ``Sizes`` and returns a
JSON-ready dict; times are in milliseconds unless a key says otherwise.
"""

import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.messaging.models import Message
from apps.reservations.models import Reservation, WaitingEntry
from apps.reservations.services import reservation_create
from apps.reservations.waitlist import waiting_join
from apps.rooms.models import TimeSlot
from apps.rooms.selectors import timeslot_list_for_day
from escape_rooms_backend import scheduler, timeline

from .common import (
    PYTHON,
    ROOT,
    RUNNER_LINE,
    OfferWatch,
    Process,
    Sizes,
    bar,
    distribution,
    expiry_lateness,
    held_count,
    hold_slots,
    load_expiry_jobs,
    make_slots,
    manage,
    reset,
    say,
    start_worker,
    stored_expiry_job_count,
    timed,
    wait_for_slots,
    wait_until,
)
from .stats import compare, difference, percent_less, ratio, spread

# ---------------------------------------------------------------------------
# 1. Expiry lateness: ours, the seed's 60-second poll, Celery ETA
# ---------------------------------------------------------------------------


def _lateness_offsets(sizes: Sizes) -> list[float]:
    """When each hold ends, in seconds after the first: the same for every design and phase."""
    rng = random.Random(7)  # noqa: S311 (a benchmark's spread, not a secret)
    return sorted(rng.uniform(0, sizes.lateness_spread) for _ in range(sizes.lateness_holds))


LATENESS_FIGURES = ("p50_ms", "p95_ms", "p99_ms", "max_ms")


def lateness(sizes: Sizes) -> dict[str, Any]:
    """
    The same holds (ending spread over ``lateness_spread`` seconds, created in
    the order they end; for the seed's poll, over its sweep interval) under
    each design; per hold, the time from ``expires_at`` to the transaction
    that freed its slot.

    The designs take turns in each of ``rounds`` rounds (ours, the poll,
    Celery; then again), each run with fresh slots and a fresh worker; the
    seed's poll runs in the first ``poll_rounds`` rounds only. Per design:
    each round's distribution and raw lateness (``rounds``), and each
    figure's median and spread over rounds; against ours, the ratio of the
    p50s and of the p99s (``stats.compare``).
    """
    offsets = _lateness_offsets(sizes)
    designs = ["ours", "poll"] + (["celery"] if os.environ.get("BENCH_CELERY") != "0" else [])
    runs: dict[str, list[dict[str, Any]]] = {design: [] for design in designs}
    order = []
    for round_ in range(1, sizes.rounds + 1):
        for design in designs:
            if design == "poll" and round_ > sizes.poll_rounds:
                continue
            say(f"lateness, round {round_} of {sizes.rounds}: {design}")
            seconds = _lateness_run(design, sizes, offsets, round_)
            runs[design].append({"round": round_, **distribution(seconds), "lateness_s": seconds})
            order.append(f"{design} {round_}")
    results: dict[str, Any] = {
        "holds": len(offsets),
        "spread_s": sizes.lateness_spread,
        "rounds": sizes.rounds,
        "order": order,
    }
    for design in designs:
        results[design] = {
            **{key: spread([run[key] for run in runs[design]]) for key in LATENESS_FIGURES},
            "rounds": runs[design],
        }
    for design in designs[1:]:
        for key in ("p50_ms", "p99_ms"):
            results[design][f"{key}_vs_ours"] = compare(
                [run[key] for run in runs[design]], [run[key] for run in runs["ours"]], ratio
            )
    results["poll"]["interval_s"] = sizes.poll_seconds
    results["poll"]["spread_s"] = sizes.poll_seconds * 0.9
    return results


def _lateness_run(design: str, sizes: Sizes, offsets: list[float], round_: int) -> list[float]:
    """
    One design's run of the lateness phase's holds; their lateness, in seconds.

    The seed's poll gets the same draws stretched over the interval from its
    worker's start-up sweep to its next sweep, less a twentieth at either end,
    so that its holds end at (almost) every phase of the interval: over a
    shorter spread its lateness would be set by where the spread fell in it.
    """
    reset()
    slot_ids = make_slots(len(offsets))
    settings.SCHEDULER_EXPIRY_JOBS = design == "ours"
    runner = None
    try:
        if design == "poll":
            runner = _start_design(design, sizes, round_)  # it sweeps as it becomes runner
            span = sizes.poll_seconds * 0.9
            ends = [offset * span / sizes.lateness_spread for offset in offsets]
            first_end = timezone.now() + timedelta(seconds=sizes.poll_seconds * 0.05)
            reserved = _reserve_for_lateness(slot_ids, ends, first_end, celery=False)
            last_end = first_end + timedelta(seconds=span)
        else:
            runner = _start_design(design, sizes, round_)
            first_end = timezone.now() + timedelta(seconds=sizes.lateness_lead)
            reserved = _reserve_for_lateness(
                slot_ids, offsets, first_end, celery=design == "celery"
            )
            last_end = first_end + timedelta(seconds=sizes.lateness_spread)
        timeout = (last_end - timezone.now()).total_seconds() + sizes.poll_seconds + 60
        pending = Reservation.objects.filter(status=Reservation.Status.PENDING)
        if wait_until(pending.count, what=f"{design}: holds pending", timeout=timeout) is None:
            raise RuntimeError(f"{design}: holds still pending after {timeout:.0f} s")
    finally:
        if runner is not None:
            runner.stop()
        settings.SCHEDULER_EXPIRY_JOBS = True
        if design == "celery":
            _forget_celery_queue()
    return expiry_lateness(reserved)


def _start_design(design: str, sizes: Sizes, round_: int) -> Process:
    if design == "ours":
        return start_worker(
            f"lateness-ours-{round_}", SCHEDULER_POLL_SECONDS=str(sizes.worker_poll_seconds)
        )
    if design == "poll":
        # The seed's design: no job per reservation, a sweep every minute.
        return start_worker(
            f"lateness-poll-{round_}",
            SCHEDULER_EXPIRY_JOBS="false",
            SCHEDULER_SWEEP_SECONDS=str(int(sizes.poll_seconds)),
        )
    from .celery_app import app

    app.control.purge()
    worker = Process(
        f"lateness-celery-{round_}",
        [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "scripts.bench.celery_app",
            "worker",
            "-P",
            "threads",
            "-c",
            "4",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
        ],
    )
    worker.wait_for_line("ready.")
    return worker


def _forget_celery_queue() -> None:
    """Delete this run's queue and Kombu's bindings for it from Redis."""
    import redis

    queue = os.environ.get("BENCH_CELERY_QUEUE", "escape_rooms_bench")
    client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    keys = list(client.scan_iter(f"*{queue}*"))
    if keys:
        client.delete(*keys)


def _reserve_for_lateness(slot_ids, offsets, first_end, *, celery: bool) -> list[int]:
    from .celery_app import expire_reservation

    made = []
    late = 0
    with bar(len(offsets), "reserving") as progress:
        for slot_id, offset in zip(slot_ids, offsets, strict=True):
            ends = first_end + timedelta(seconds=offset)
            hold_seconds = (ends - timezone.now()).total_seconds()
            late += hold_seconds <= 0
            reservation = reservation_create(
                time_slot_id=slot_id,
                customer_name="Bench Customer",
                customer_email=f"bench{slot_id}@example.com",
                party_size=3,
                hold_seconds=hold_seconds,
            )
            if celery:
                expire_reservation.apply_async((reservation.pk,), eta=reservation.expires_at)
            made.append(reservation.pk)
            progress.update()
    if late:
        say(f"lateness: {late} holds were created after they should have ended (slow machine?)")
    return made


# ---------------------------------------------------------------------------
# 2. Hand-over: a lapsing hold's slot offered to the first party waiting
# ---------------------------------------------------------------------------


def handover(sizes: Sizes) -> dict[str, Any]:
    """
    From a hold's end to the waiting party's offer, with the worker running:
    the lateness phase's holds, each slot with 1 to 3 parties waiting; then
    one slot whose offers lapse one after another down a list of parties.
    """
    return {"spread": _handover_spread(sizes), "cascade": _handover_cascade(sizes)}


def _handover_spread(sizes: Sizes) -> dict[str, Any]:
    """
    The lateness phase's holds (same ends, same pace, made through
    ``reservation_create``), each slot with 1 to 3 parties waiting; per
    hold, from its ``expires_at`` to its slot's offer: the clock in the
    transaction that made it (``created_at``), the moment another connection
    first saw it committed (``OfferWatch``), and the offer's message handed
    to the mail backend (``sent_at``).
    """
    offsets = _lateness_offsets(sizes)
    rng = random.Random(11)  # noqa: S311 (a benchmark's spread, not a secret)
    parties = [rng.randint(1, 3) for _ in offsets]
    say(f"hand-over: {len(offsets):,} holds with {sum(parties):,} parties waiting")
    reset()
    slot_ids = make_slots(len(offsets))
    wait_for_slots(slot_ids, parties)
    worker = start_worker("handover", SCHEDULER_POLL_SECONDS=str(sizes.worker_poll_seconds))
    time.sleep(sizes.settle_seconds)  # the start-up sweep and reconcile: nothing to do
    watch = OfferWatch()
    watch.start()
    try:
        first_end = timezone.now() + timedelta(seconds=sizes.lateness_lead)
        held = _reserve_for_lateness(slot_ids, offsets, first_end, celery=False)
        last_end = first_end + timedelta(seconds=sizes.lateness_spread)
        timeout = (last_end - timezone.now()).total_seconds() + 60
        offers = Reservation.objects.filter(is_offer=True)
        sent = Message.objects.filter(kind=Message.Kind.OFFER, status=Message.Status.SENT)
        if wait_until(lambda: len(held) - offers.count(), what="offers", timeout=timeout) is None:
            raise RuntimeError(f"hand-over: offers still missing after {timeout:.0f} s")
        if wait_until(lambda: len(held) - sent.count(), what="offers unsent", timeout=180) is None:
            raise RuntimeError("hand-over: offer messages still unsent after 180 s")
    finally:
        watch.stop()
        worker.stop()
    ends = dict(Reservation.objects.filter(pk__in=held).values_list("time_slot_id", "expires_at"))
    made, seen, mailed = [], [], []
    for pk, slot_id, created_at in offers.values_list("pk", "time_slot_id", "created_at"):
        made.append((created_at - ends[slot_id]).total_seconds())
        if pk in watch.seen:
            seen.append(watch.seen[pk] - ends[slot_id].timestamp())
    for slot_id, sent_at in sent.values_list("reservation__time_slot_id", "sent_at"):
        mailed.append((sent_at - ends[slot_id]).total_seconds())
    first_parties = WaitingEntry.objects.filter(
        status=WaitingEntry.Status.OFFERED, customer_email__endswith="-1@example.com"
    ).count()
    if first_parties != len(held):
        raise RuntimeError(f"hand-over: {first_parties} of {len(held)} offers to the first party")
    return {
        "holds": len(held),
        "parties": sum(parties),
        "spread_s": sizes.lateness_spread,
        "made": {**distribution(made), "seconds": made},
        "seen": {**distribution(seen), "missed": len(made) - len(seen), "seconds": seen},
        "sent": {**distribution(mailed), "seconds": mailed},
        "watch_interval_ms": watch.interval * 1000,
        "watch_polls": watch.polls,
        "watch_mean_gap_ms": watch.mean_gap_ms,
    }


def _handover_cascade(sizes: Sizes) -> dict[str, Any]:
    """
    One slot, ``cascade_parties`` parties waiting (joined through
    ``waiting_join``), offers of ``cascade_offer_seconds``: the hold lapses,
    then each offer in turn; from each one's end to the next offer.
    """
    count, offer_s = sizes.cascade_parties, sizes.cascade_offer_seconds
    say(f"hand-over: a cascade down {count} parties, offers of {offer_s} s")
    reset()
    [slot_id] = make_slots(1)
    offer_s_before, settings.WAITLIST_OFFER_SECONDS = settings.WAITLIST_OFFER_SECONDS, offer_s
    worker = start_worker(
        "handover-cascade",
        SCHEDULER_POLL_SECONDS=str(sizes.worker_poll_seconds),
        WAITLIST_OFFER_SECONDS=str(offer_s),
    )
    time.sleep(sizes.settle_seconds)
    watch = OfferWatch()
    watch.start()
    try:
        # Long enough for the worker to see the hold's job (SQLite: its poll).
        hold = reservation_create(
            time_slot_id=slot_id,
            customer_name="Bench Customer",
            customer_email="holder@example.com",
            party_size=3,
            hold_seconds=sizes.worker_poll_seconds + 1,
        )
        for k in range(count):
            waiting_join(
                time_slot_id=slot_id,
                customer_name=f"Waiting Party {k + 1}",
                customer_email=f"party{k + 1}@example.com",
                party_size=3,
            )
        # Done when the last party has its offer, and every offer's message is sent.
        offers = Reservation.objects.filter(is_offer=True)
        unsent = Message.objects.filter(kind=Message.Kind.OFFER).exclude(status=Message.Status.SENT)

        def left() -> int:
            return count - offers.count() + unsent.count()

        timeout = (hold.expires_at - timezone.now()).total_seconds() + count * offer_s + 60
        if wait_until(left, what="cascade", timeout=timeout) is None:
            raise RuntimeError(f"hand-over: the cascade did not finish in {timeout:.0f} s")
    finally:
        watch.stop()
        worker.stop()
        settings.WAITLIST_OFFER_SECONDS = offer_s_before
    chain = list(offers.order_by("created_at", "pk").values_list("pk", "created_at", "expires_at"))
    ends = [hold.expires_at] + [expires_at for _, _, expires_at in chain[:-1]]
    pairs = list(zip(chain, ends, strict=True))
    made = [(created_at - end).total_seconds() for (_, created_at, _), end in pairs]
    # The first hand-over is the hold's; the others, each lapsing offer's.
    seen = [watch.seen[pk] - end.timestamp() for (pk, _, _), end in pairs[1:] if pk in watch.seen]
    sent_at = dict(
        Message.objects.filter(kind=Message.Kind.OFFER, status=Message.Status.SENT).values_list(
            "reservation_id", "sent_at"
        )
    )
    mailed = [(sent_at[pk] - end).total_seconds() for (pk, _, _), end in pairs[1:] if pk in sent_at]
    return {
        "parties": count,
        "offer_seconds": offer_s,
        "hold_to_first_offer_ms": made[0] * 1000,
        "made": {**distribution(made[1:]), "seconds": made[1:]},
        "seen": {**distribution(seen), "missed": len(made) - 1 - len(seen), "seconds": seen},
        "sent": {**distribution(mailed), "seconds": mailed},
        "hold_end_to_last_offer_ms": (chain[-1][1] - hold.expires_at).total_seconds() * 1000,
    }


# ---------------------------------------------------------------------------
# 3. The reserve path, with and without the expiry job
# ---------------------------------------------------------------------------


# More reservations a second than this machine makes: how many slots a run gets.
RESERVE_MOST_PER_S = 1500
WORKER_READY = "Bench: worker ready"  # each worker's line (scripts/bench/gunicorn.conf.py)

RESERVE_FIGURES = (
    "created_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "one_client_p50_ms",
    "one_client_p99_ms",
)


def reserve_path(sizes: Sizes) -> dict[str, Any]:
    """
    ``POST /api/reservations/`` through gunicorn, driven by wrk; expiry jobs
    on and off, interleaved: on, off, on, off... for ``rounds`` rounds, each
    run with fresh slots and a fresh gunicorn.

    Per setting: each round's figures (``rounds``) and each figure's median
    and spread over rounds. The job's cost (``cost``), on against off, by
    ``stats.compare``: ``throughput_pct`` (how much less was created a
    second), ``one_client_p50_ms`` (the request's own cost) and
    ``p50_8_clients_ms``.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"skipped": "wrk is not installed (make bench installs it with apt-get)"}
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for round_ in range(1, sizes.rounds + 1):
        for jobs in ("on", "off"):
            say(f"reserve path, round {round_} of {sizes.rounds}: expiry jobs {jobs}")
            runs[jobs].append({"round": round_, **_reserve_run(wrk, sizes, jobs, round_)})
    results: dict[str, Any] = {
        "clients": sizes.reserve_clients,
        "seconds": sizes.reserve_seconds,
        "alone_seconds": sizes.reserve_alone_seconds,
        "warmup_seconds": sizes.reserve_warmup_seconds,
        "gunicorn_workers": sizes.gunicorn_workers,
        "rounds": sizes.rounds,
        "order": [f"{jobs} {round_}" for round_ in range(1, sizes.rounds + 1) for jobs in runs],
    }
    for jobs, rounds in runs.items():
        results[f"jobs_{jobs}"] = {
            **{key: spread([run[key] for run in rounds]) for key in RESERVE_FIGURES},
            "errors": sum(run["non_2xx"] + run["socket_errors"] for run in rounds),
            "rounds": rounds,
        }

    def on_off(key: str) -> tuple[list[float], list[float]]:
        return [run[key] for run in runs["on"]], [run[key] for run in runs["off"]]

    # The p50 with 8 clients on SQLite is mostly waiting for its one write
    # lock; the cost of the job itself shows with one client.
    results["cost"] = {
        "throughput_pct": compare(*on_off("created_per_s"), percent_less),
        "one_client_p50_ms": compare(*on_off("one_client_p50_ms"), difference),
        "p50_8_clients_ms": compare(*on_off("p50_ms"), difference),
    }
    return results


def _reserve_run(wrk: str, sizes: Sizes, jobs: str, round_: int) -> dict[str, Any]:
    """One run of the reserve path, on fresh slots and a fresh gunicorn; its figures."""
    reset()
    # Each wrk run books from its own range of slots, one second's worth to spare:
    # the measured run from the bottom, then the one client, then the warm-up.
    per_s = RESERVE_MOST_PER_S
    alone_from = int(per_s * (sizes.reserve_seconds + 1))
    warmup_from = alone_from + int(per_s * (sizes.reserve_alone_seconds + 1))
    slot_ids = make_slots(warmup_from + int(per_s * (sizes.reserve_warmup_seconds + 1)))
    if slot_ids != list(range(slot_ids[0], slot_ids[0] + len(slot_ids))):
        raise RuntimeError("wrk books slots by id: they must be one contiguous range")
    port = _free_port()
    server = Process(
        f"reserve-{jobs}-{round_}",
        [PYTHON, "-m", "gunicorn", "-c", "scripts/bench/gunicorn.conf.py"],
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=str(sizes.gunicorn_workers),
        SCHEDULER_WORKER_MODE="true",
        SCHEDULER_EXPIRY_JOBS="true" if jobs == "on" else "false",
        # The production hold limits, each request a customer of its own
        # (reserve.lua) behind a trusted proxy: the limits' counts as a venue has them.
        MAX_PENDING_HOLDS_PER_EMAIL="2",
        MAX_PENDING_HOLDS_PER_ADDRESS="10",
        TRUSTED_PROXIES="127.0.0.1",
    )
    clients, threads = sizes.reserve_clients, 2
    try:
        # Every worker has loaded the application (they load it at once, on 2 cores).
        server.wait_for_line(WORKER_READY, count=sizes.gunicorn_workers)
        _wait_http(f"http://127.0.0.1:{port}/api/rooms/")
        if sizes.reserve_warmup_seconds:
            _wrk(wrk, port, sizes.reserve_warmup_seconds, clients, threads, slot_ids[warmup_from])
        measured = _wrk(wrk, port, sizes.reserve_seconds, clients, threads, slot_ids[0])
        # One client, nothing to wait for: the request's own cost.
        alone = _wrk(wrk, port, sizes.reserve_alone_seconds, 1, 1, slot_ids[alone_from])
    finally:
        server.stop()
    created = measured["requests"] - measured["non_2xx"]
    return {
        "requests": measured["requests"],
        "created_per_s": created / (measured["duration_us"] / 1e6),
        "non_2xx": measured["non_2xx"] + alone["non_2xx"],
        "socket_errors": measured["socket_errors"] + alone["socket_errors"],
        "p50_ms": measured["p50_us"] / 1000,
        "p90_ms": measured["p90_us"] / 1000,
        "p99_ms": measured["p99_us"] / 1000,
        "max_ms": measured["max_us"] / 1000,
        "one_client_requests": alone["requests"],
        "one_client_p50_ms": alone["p50_us"] / 1000,
        "one_client_p99_ms": alone["p99_us"] / 1000,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (our local server)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _wrk(wrk: str, port: int, seconds: float, clients: int, threads: int, first: int) -> Any:
    output = subprocess.run(  # noqa: S603 (wrk, found on PATH)
        [
            wrk,
            f"-t{threads}",
            f"-c{clients}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            str(ROOT / "scripts/bench/reserve.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            str(first),
            str(threads),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    if not result["requests"]:
        raise RuntimeError(f"wrk: no request answered in {seconds:g} s with {clients} clients")
    return result


# ---------------------------------------------------------------------------
# 4. Burst: many holds ending in the same second
# ---------------------------------------------------------------------------


def burst(sizes: Sizes) -> dict[str, Any]:
    """``burst_holds`` holds ending within one second, with the worker running."""
    count = sizes.burst_holds
    say(f"burst: {count:,} holds ending in the same second")
    reset()
    slot_ids = make_slots(count)
    worker = start_worker("burst", SCHEDULER_POLL_SECONDS=str(sizes.worker_poll_seconds))
    try:
        time.sleep(sizes.settle_seconds)  # the start-up sweep and reconcile: nothing to do
        # Time to write every job through the public path, plus the worker's
        # look for new jobs, then the burst.
        lead = sizes.worker_poll_seconds + 1 + count * 0.003
        first_end = timezone.now() + timedelta(seconds=lead)
        reservations = hold_slots(slot_ids, lambda i: first_end + timedelta(seconds=i / count))
        with bar(count, "writing expiry jobs") as progress:
            for reservation in reservations:
                timeline.deadlines_sync([reservation])
                progress.update()
        overran = (timezone.now() - first_end).total_seconds()
        last_end = first_end + timedelta(seconds=1)
        free_at = wait_until(lambda: held_count(slot_ids), what="slots held", timeout=lead + 120)
        drained_at = wait_until(
            stored_expiry_job_count, what="jobs in the store", timeout=120, interval=0.05
        )
    finally:
        worker.stop()
    seconds = expiry_lateness()
    return {
        "holds": count,
        "setup_overran_s": max(0.0, overran),
        "all_free_after_last_expiry_ms": _ms_after(free_at, last_end),
        "store_drained_after_last_expiry_ms": _ms_after(drained_at, last_end),
        "lateness": distribution(seconds),
    }


def _ms_after(moment: float | None, reference) -> float | None:
    return None if moment is None else (moment - reference.timestamp()) * 1000


# ---------------------------------------------------------------------------
# 5. Catch-up: holds that fell due while no scheduler ran
# ---------------------------------------------------------------------------


def catchup(sizes: Sizes) -> dict[str, Any]:
    """``catchup_holds`` overdue holds with their jobs in the store; then the worker starts."""
    count = sizes.catchup_holds
    say(f"catch-up: {count:,} overdue holds, then start_scheduler")
    reset()
    slot_ids = make_slots(count)
    now = timezone.now()
    reservations = hold_slots(slot_ids, lambda i: now - timedelta(seconds=60 * i / count))
    load_expiry_jobs(reservations)
    scheduler.stop_scheduler()
    if stored_expiry_job_count() != count:
        raise RuntimeError("the expiry jobs were not all written")
    worker = Process("catchup", manage("start_scheduler"), SCHEDULER_WORKER_MODE="true")
    spawned = time.time()
    try:
        runner_after_s = worker.wait_for_line(RUNNER_LINE)
        free_at = wait_until(lambda: held_count(slot_ids), what="slots held", timeout=120)
        drained_at = wait_until(
            stored_expiry_job_count, what="jobs in the store", timeout=120, interval=0.05
        )
    finally:
        worker.stop()
    return {
        "holds": count,
        "worker_runner_after_ms": runner_after_s * 1000,
        "all_free_after_spawn_ms": None if free_at is None else (free_at - spawned) * 1000,
        "all_free_after_runner_ms": (
            None if free_at is None else (free_at - spawned - runner_after_s) * 1000
        ),
        "store_drained_after_spawn_ms": None
        if drained_at is None
        else (drained_at - spawned) * 1000,
    }


# ---------------------------------------------------------------------------
# 6. Scale: a big job store, a big reservations table
# ---------------------------------------------------------------------------


def scale(sizes: Sizes) -> dict[str, Any]:
    results: dict[str, Any] = {"pending": sizes.scale_pending, "history": sizes.scale_history}
    for label, pending in (("empty_store", 0), ("full_store", sizes.scale_pending)):
        say(f"scale: worker start with {pending:,} pending holds in the store")
        reset()
        if pending:
            slot_ids = make_slots(pending)
            reservations = hold_slots(slot_ids, _hours_from_now(2))
            load_expiry_jobs(reservations)
            scheduler.stop_scheduler()
        worker = Process(f"scale-{label}", manage("start_scheduler"), SCHEDULER_WORKER_MODE="true")
        try:
            runner_after_s = worker.wait_for_line(RUNNER_LINE)
            # The start-up sweep and reconcile run just after; let them finish.
            time.sleep(sizes.settle_seconds)
            memory = worker.memory_mib()
        finally:
            worker.stop()
        results[label] = {"runner_after_ms": runner_after_s * 1000, **memory}

    say(f"scale: {sizes.scale_history:,} historical reservations")
    reset()
    _history(sizes.scale_history)
    room_slots = make_slots(24, start=timezone.now() + timedelta(days=2))
    hold_slots(room_slots[::2], lambda i: timezone.now() + timedelta(minutes=20))
    room = TimeSlot.objects.get(pk=room_slots[0]).room
    day = timezone.localtime(TimeSlot.objects.get(pk=room_slots[0]).starts_at).date()
    now = timezone.now()

    def sweep_query():
        return list(
            Reservation.objects.due_for_expiry(now)
            .order_by("expires_at", "pk")
            .values_list("time_slot_id", flat=True)[:1000]
        )

    def availability_query():
        return list(timeslot_list_for_day(room=room, day=day, now=now))

    runs = 50
    results["sweep_query"] = {**timed(sweep_query, runs), "plan": _plan(sweep_query)}
    results["availability_query"] = {
        **timed(availability_query, runs),
        "plan": _plan(availability_query),
    }
    return results


def _hours_from_now(hours: float) -> Callable[[int], datetime]:
    """Hold ``i`` ends ``hours`` from now plus ``i`` seconds."""
    later = timezone.now() + timedelta(hours=hours)
    return lambda i: later + timedelta(seconds=i)


def _history(count: int) -> None:
    """``count`` past reservations: ten per past slot, one paid and nine cancelled."""
    per_slot = 10
    slot_ids = make_slots(max(1, count // per_slot), start=timezone.now() - timedelta(days=4000))
    ended = timezone.now() - timedelta(days=1)
    paid = {"status": Reservation.Status.PAID, "paid_at": ended}
    cancelled = {
        "status": Reservation.Status.CANCELLED,
        "cancelled_at": ended,
        "cancellation_reason": Reservation.CancellationReason.EXPIRED,
    }
    with bar(count, "writing history") as progress:
        for chunk_start in range(0, len(slot_ids), 2000):
            rows = [
                Reservation(
                    time_slot_id=slot_id,
                    expires_at=ended,
                    **(paid if k == 0 else cancelled),
                    customer_name="Past Customer",
                    customer_email=f"past{slot_id}-{k}@example.com",
                    party_size=3,
                    price=Decimal("89.00"),
                    currency="EUR",
                )
                for slot_id in slot_ids[chunk_start : chunk_start + 2000]
                for k in range(per_slot)
            ]
            Reservation.objects.bulk_create(rows, batch_size=5000)
            progress.update(len(rows))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _plan(query) -> list[str]:
    """The database's plan for the query ``query`` runs (EXPLAIN of the SQL it sends)."""
    with CaptureQueriesContext(connection) as captured:
        query()
    sql = captured.captured_queries[-1]["sql"]
    prefix = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
    with connection.cursor() as cursor:
        cursor.execute(prefix + sql)
        return [" ".join(str(part) for part in row) for row in cursor.fetchall()]


# ---------------------------------------------------------------------------
# 7. Where one reservation's time goes: cProfile, in-process
# ---------------------------------------------------------------------------

PROFILE_TOP = 15
# Our own code: the functions the profile's second table lists.
OURS = ("/apps/", "/escape_rooms_backend/", "/config/")


def profile(sizes: Sizes) -> dict[str, Any]:
    """
    ``POST /api/reservations/`` in this process through Django's test client, under cProfile.

    The request as gunicorn's worker runs it, without the HTTP server: the
    middleware, the API, the service with its locks and counts, the event and
    message rows, the jobs written to the store. The web process writes jobs
    with a paused scheduler, as with ``SCHEDULER_WORKER_MODE``. Each row is
    per reservation: calls, own time and time including callees (µs; the
    profiler roughly doubles them, so read the shares, not the sums).
    """
    import cProfile
    import pstats

    from django.test import Client

    reset()
    count = sizes.profile_reservations
    warmup = 50
    slot_ids = make_slots(2 * count + warmup)
    client = Client(HTTP_HOST="127.0.0.1")

    def reserve(slot_id: int) -> None:
        response = client.post(
            "/api/reservations/",
            {
                "slot_id": slot_id,
                "customer_name": "Bench Customer",
                "customer_email": f"bench{slot_id}@example.com",
                "party_size": 3,
            },
            content_type="application/json",
            REMOTE_ADDR=f"10.0.{slot_id // 256 % 256}.{slot_id % 256}",
        )
        if response.status_code != 201:
            raise RuntimeError(f"reserve: {response.status_code} {response.content[:200]!r}")

    for slot_id in slot_ids[:warmup]:
        reserve(slot_id)
    plain = []
    for slot_id in slot_ids[warmup : warmup + count]:
        started = time.perf_counter()
        reserve(slot_id)
        plain.append(time.perf_counter() - started)
    profiler = cProfile.Profile()
    profiler.enable()
    for slot_id in slot_ids[warmup + count :]:
        reserve(slot_id)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(own for _, _, own, _, _ in stats.values())

    def row(key: tuple[str, int, str], value: tuple) -> dict[str, Any]:
        path, line, name = key
        short = path.split("site-packages/")[-1] if "site-packages/" in path else path
        short = short.split(str(ROOT) + "/")[-1]
        short = re.sub(r"^.*/lib/python3\.\d+/", "", short)  # the standard library
        calls, _, own, cumulative, _ = value
        return {
            "function": f"{short}:{line}({name})" if line else name,
            "calls": calls / count,
            "own_us": own / count * 1e6,
            "cumulative_us": cumulative / count * 1e6,
        }

    by_own = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)
    ours = [item for item in stats.items() if any(part in item[0][0] for part in OURS)]
    ours.sort(key=lambda item: item[1][3], reverse=True)
    return {
        "reservations": count,
        "plain": distribution(plain),
        "profiled_us": total / count * 1e6,
        "by_own_time": [row(*item) for item in by_own[:PROFILE_TOP]],
        "ours_by_cumulative": [row(*item) for item in ours[:PROFILE_TOP]],
    }


PHASES = {
    "lateness": lateness,
    "handover": handover,
    "reserve": reserve_path,
    "burst": burst,
    "catchup": catchup,
    "scale": scale,
    "profile": profile,
}
