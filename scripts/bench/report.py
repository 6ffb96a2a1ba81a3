"""Turn the benchmark results into Markdown tables and the lateness picture."""

from pathlib import Path
from typing import Any

from tabulate import tabulate

# Issue 19's reservations a second with 8 clients, job on.
RESERVE_FLOOR = {"sqlite": 500, "postgresql": 300}

DESIGNS = {
    "ours": "ours: a job per hold",
    "poll": "seed: sweep every {interval:g} s",
    "celery": "Celery ETA task per hold",
}


def _ms(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "did not finish"
    if value >= 10_000:
        return f"{value / 1000:,.1f} s"
    return f"{value:,.{digits}f} ms"


def _verdict(value: float | None, limit: float) -> str:
    return "missed" if value is None or value > limit else "met"


def _at_least(figure: dict[str, Any], floor: float) -> str:
    return "met" if figure["median"] >= floor else "missed"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


def _spread_ms(figure: dict[str, Any] | None, digits: int = 1) -> str:
    """A figure over rounds (``stats.spread``, in ms): "4.7 [4.1–5.3] ms", in s from 10 s."""
    if figure is None:
        return "did not finish"
    scale, unit = (1000, "s") if figure["median"] >= 10_000 else (1, "ms")
    text = f"{figure['median'] / scale:,.{digits}f}"
    if figure["rounds"] > 1:
        text += f" [{figure['min'] / scale:,.{digits}f}–{figure['max'] / scale:,.{digits}f}]"
    return f"{text} {unit}"


def _spread_count(figure: dict[str, Any]) -> str:
    text = f"{figure['median']:,.0f}"
    if figure["rounds"] > 1:
        text += f" [{figure['min']:,.0f}–{figure['max']:,.0f}]"
    return text


NO_DIFFERENCE = "no measurable difference"


def _compared(comparison: dict[str, Any], unit: str) -> str:
    """
    A comparison (``stats.compare``): "no measurable difference" when the
    spreads overlap; otherwise the measure of the medians and, in brackets,
    its smallest and largest over pairs of rounds. ``unit``: "ms", "%" or "×".
    """
    if not comparison["measurable"]:
        return NO_DIFFERENCE
    value, low, high = comparison["value"], comparison["low"], comparison["high"]
    if unit == "×":
        text, extremes = _ratio(value), f"{_ratio(low)} to {_ratio(high)}"
    else:
        digits = 2 if unit == "ms" else 1
        text = f"{value:+,.{digits}f} {unit}"
        extremes = f"{low:+,.{digits}f} to {high:+,.{digits}f}"
    return text if low == high else f"{text} [{extremes}]"  # one pair of rounds: no range


def _cost_verdict(comparison: dict[str, Any], limit: float) -> str:
    """Whether a cost is within ``limit``; a cost whose spreads overlap is met only if its
    medians' difference is within the limit too."""
    if comparison["measurable"]:
        return _verdict(comparison["value"], limit)
    return "met" if comparison["value"] <= limit else "unclear (spreads overlap)"


def _section(parts: list[str], title: str, headers: str, rows: list[list[Any]]) -> None:
    """Append a titled table to ``parts`` (``headers``: "a | b | c"), unless there are no rows."""
    if rows:
        parts.append(title + tabulate(rows, headers.split(" | "), tablefmt="github"))


def _databases(results: dict[str, Any], phase: str):
    for database, phases in results["databases"].items():
        if "skipped" in phases:
            continue
        if phase in phases:
            yield database, phases[phase]


def markdown(results: dict[str, Any]) -> str:
    parts = []
    skipped = [
        f"- {database}: skipped ({phases['skipped']})"
        for database, phases in results["databases"].items()
        if "skipped" in phases
    ]
    if skipped:
        parts.append("\n".join(skipped))
    parts.append(
        "Comparisons run interleaved, in rounds. A figure over rounds is the median, with "
        "the smallest and largest round in brackets; a comparison whose two spreads overlap "
        f'reads "{NO_DIFFERENCE}", otherwise it gives the difference (or ratio) of the '
        "medians, with the smallest and largest of the rounds' own differences in brackets."
    )

    lateness_title = "### Expiry lateness: from `expires_at` until the slot is free\n\n"
    rows = []
    for database, phase in _databases(results, "lateness"):
        lateness_title = (
            "### Expiry lateness: from `expires_at` until the slot is free\n\n"
            f"{phase['holds']:,} holds a round, ending over {phase['spread_s']:g} s "
            f"(for the seed's poll, the same draws over {phase['poll']['spread_s']:g} s of the "
            f"{phase['poll']['interval_s']:g} s between two of its sweeps); the designs "
            f"in turn in each round ({', '.join(phase['order'])}).\n\n"
        )
        for design in ("ours", "poll", "celery"):
            data = phase.get(design)
            if data is None:
                continue
            name = DESIGNS[design].format(interval=phase["poll"]["interval_s"])
            p99 = data["p99_ms"]["median"]
            target = f"p99 ≤ 100 ms: {_verdict(p99, 100)}" if design == "ours" else ""
            rows.append(
                [
                    database,
                    name,
                    len(data["rounds"]),
                    _spread_ms(data["p50_ms"]),
                    _spread_ms(data["p95_ms"]),
                    _spread_ms(data["p99_ms"]),
                    _spread_ms(data["max_ms"]),
                    _compared(data["p50_ms_vs_ours"], "×") if "p50_ms_vs_ours" in data else "",
                    _compared(data["p99_ms_vs_ours"], "×") if "p99_ms_vs_ours" in data else "",
                    target,
                ]
            )
    _section(
        parts,
        lateness_title,
        "database | design | rounds | p50 | p95 | p99 | max | p50 / ours | p99 / ours | target",
        rows,
    )

    rows = []
    for database, phase in _databases(results, "handover"):
        spread = phase["spread"]
        gap = spread["watch_mean_gap_ms"]
        for key, what in (
            ("made", "offer made (its `created_at`)"),
            ("seen", f"offer seen committed (a poll every {gap:.0f} ms)"),
            ("sent", "offer's message sent (its `sent_at`)"),
        ):
            data = spread[key]
            target = ""
            if key == "seen":
                missed = f", {data['missed']} not seen" if data["missed"] else ""
                target = f"p99 ≤ 50 ms: {_verdict(data.get('p99_ms'), 50)}{missed}"
            rows.append(
                [
                    database,
                    what,
                    data["n"],
                    _ms(data.get("p50_ms")),
                    _ms(data.get("p95_ms")),
                    _ms(data.get("p99_ms")),
                    _ms(data.get("max_ms")),
                    target,
                ]
            )
    _section(
        parts,
        "### Waiting-list hand-over: from a hold's end to the first waiting party's offer\n\n",
        "database | measured to | offers | p50 | p95 | p99 | max | target",
        rows,
    )

    rows = []
    for database, phase in _databases(results, "handover"):
        cascade = phase["cascade"]
        for key, what in (
            ("made", "next offer made"),
            ("seen", "next offer seen committed"),
            ("sent", "next offer's message sent"),
        ):
            data = cascade[key]
            rows.append(
                [
                    database,
                    f"{cascade['parties']} parties, offers of {cascade['offer_seconds']} s",
                    what,
                    data["n"],
                    _ms(data.get("p50_ms")),
                    _ms(data.get("max_ms")),
                    _ms(cascade["hold_end_to_last_offer_ms"]) if key == "made" else "",
                ]
            )
    _section(
        parts,
        "### Waiting-list cascade: from each lapsing offer's end to the next party's offer\n\n",
        "database | list | measured to | hand-overs | p50 | max | hold's end → last offer made",
        rows,
    )

    reserve_title = "### Reserve path: `POST /api/reservations/` through gunicorn\n\n"
    rows = []
    for database, phase in _databases(results, "reserve"):
        if "skipped" in phase:
            rows.append([database, phase["skipped"], *[""] * 9])
            continue
        reserve_title = (
            f"### Reserve path: `POST /api/reservations/` through gunicorn "
            f"({phase['gunicorn_workers']} workers)\n\n"
            f"{phase['rounds']} rounds, expiry job on and off in turn "
            f"({', '.join(phase['order'])}), each with a fresh gunicorn and fresh slots: "
            f"{phase['clients']} clients for {phase['seconds']:g} s, then 1 client for "
            f"{phase['alone_seconds']:g} s. The cost of the job is on against off.\n\n"
        )
        for jobs in ("on", "off"):
            data = phase[f"jobs_{jobs}"]
            target = ""
            if jobs == "on":
                floor = RESERVE_FLOOR[database]
                target = (
                    f"≥ {floor}/s: {_at_least(data['created_per_s'], floor)}; "
                    f"p99 ≤ 50 ms: {_verdict(data['p99_ms']['median'], 50)}; "
                    f"1-client p50 ≤ 5 ms: {_verdict(data['one_client_p50_ms']['median'], 5)}"
                )
            rows.append(
                [
                    database,
                    f"expiry job {jobs}",
                    _spread_count(data["created_per_s"]),
                    _spread_ms(data["p50_ms"]),
                    _spread_ms(data["p90_ms"]),
                    _spread_ms(data["p99_ms"]),
                    _spread_ms(data["max_ms"]),
                    _spread_ms(data["one_client_p50_ms"], 2),
                    _spread_ms(data["one_client_p99_ms"], 2),
                    data["errors"],
                    target,
                ]
            )
        cost = phase["cost"]
        rows.append(
            [
                database,
                "cost of the job",
                _compared(cost["throughput_pct"], "%"),
                _compared(cost["p50_8_clients_ms"], "ms"),
                "",
                "",
                "",
                _compared(cost["one_client_p50_ms"], "ms"),
                "",
                "",
                f"p50 ≤ 1 ms: {_cost_verdict(cost['one_client_p50_ms'], 1)}; "
                f"throughput ≤ 10 %: {_cost_verdict(cost['throughput_pct'], 10)}",
            ]
        )
    _section(
        parts,
        reserve_title,
        "database | run | created / s (8 clients) | p50 (8 clients) | p90 (8 clients) | "
        "p99 (8 clients) | max (8 clients) | p50 (1 client) | p99 (1 client) | errors | target",
        rows,
    )

    rows = []
    for database, phase in _databases(results, "burst"):
        free = phase["all_free_after_last_expiry_ms"]
        worst = phase["lateness"].get("max_ms")
        # Each slot within 1 s of its own expiry: the later of the worst
        # recorded lateness and the moment another process saw the last slot free.
        verdict = _verdict(None if free is None or worst is None else max(free, worst), 1000)
        rows.append(
            [
                database,
                f"{phase['holds']:,}",
                _ms(free),
                _ms(phase["lateness"].get("p50_ms")),
                _ms(worst),
                _ms(phase["store_drained_after_last_expiry_ms"]),
                f"every slot free ≤ 1 s after its expiry: {verdict}",
            ]
        )
    _section(
        parts,
        "### Burst: holds ending in the same second, worker running\n\n",
        "database | holds | all free after the last expiry | lateness p50 | lateness max | "
        "job store drained after the last expiry | target",
        rows,
    )

    rows = []
    for database, phase in _databases(results, "catchup"):
        rows.append(
            [
                database,
                f"{phase['holds']:,}",
                _ms(phase["worker_runner_after_ms"]),
                _ms(phase["all_free_after_runner_ms"]),
                _ms(phase["all_free_after_spawn_ms"]),
                _ms(phase["store_drained_after_spawn_ms"]),
                f"≤ 1 s after the worker runs: {_verdict(phase['all_free_after_runner_ms'], 1000)}",
            ]
        )
    _section(
        parts,
        "### Catch-up: holds that fell due while no scheduler ran\n\n",
        "database | holds | process start → runner | runner → all free | "
        "process start → all free | process start → store drained | target",
        rows,
    )

    rows = []
    for database, phase in _databases(results, "scale"):
        empty, full = phase["empty_store"], phase["full_store"]
        rows.append(
            [
                database,
                "worker start, empty store",
                _ms(empty["runner_after_ms"]),
                f"{empty['peak_rss_mib']:.0f} MiB",
                "",
            ]
        )
        rows.append(
            [
                database,
                f"worker start, {phase['pending']:,} pending holds in the store",
                _ms(full["runner_after_ms"]),
                f"{full['peak_rss_mib']:.0f} MiB",
                f"≤ 1 s: {_verdict(full['runner_after_ms'], 1000)}; "
                f"≤ 150 MB: {_verdict(full['peak_rss_mib'] * 1.048576, 150)}",
            ]
        )
        for key, label in (
            ("sweep_query", "sweep query"),
            ("availability_query", "room-day availability query"),
        ):
            data = phase[key]
            rows.append(
                [
                    database,
                    f"{label}, {phase['history']:,} past reservations",
                    f"{_ms(data['median_ms'], 2)} median, {_ms(data['max_ms'], 2)} max",
                    "",
                    f"≤ 20 ms: {_verdict(data['max_ms'], 20)}",
                ]
            )
    _section(parts, "### Scale\n\n", "database | what | time | peak RSS | target", rows)
    for database, phase in _databases(results, "profile"):
        plain = phase["plain"]
        title = (
            f"### Profile of one reservation ({database})\n\n"
            f"`POST /api/reservations/` in-process (Django's test client, no HTTP server), "
            f"{phase['reservations']:,} reservations: {plain['p50_ms']:.2f} ms p50 each "
            f"without the profiler, {phase['profiled_us'] / 1000:.2f} ms with it. Per "
            "reservation; own time excludes callees, total includes them.\n\n"
        )
        for key, what in (
            ("by_own_time", "the largest own times"),
            ("ours_by_cumulative", "our own functions, by total time"),
        ):
            rows = [
                [
                    f"`{item['function']}`",
                    f"{item['calls']:.1f}",
                    f"{item['own_us']:,.0f}",
                    f"{item['cumulative_us']:,.0f}",
                ]
                for item in phase[key]
            ]
            _section(
                parts,
                title + f"{what.capitalize()}:\n\n",
                "function | calls | own µs | total µs",
                rows,
            )
            title = ""
    return "\n\n".join(parts) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    """
    Lateness of the three designs as cumulative distributions on a log time
    axis, one line per round, one panel per database; returns whether there
    was anything to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = list(_databases(results, "lateness"))
    if not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    colours = {"ours": "#1b7837", "poll": "#b2182b", "celery": "#2166ac"}
    for axis, (database, phase) in zip(axes[0], panels, strict=True):
        for design in ("ours", "celery", "poll"):
            data = phase.get(design)
            if not data:
                continue
            name = DESIGNS[design].format(interval=phase["poll"]["interval_s"])
            rounds = len(data["rounds"])
            label: str | None = (
                f"{name}, {rounds} round{'s' if rounds > 1 else ''} "
                f"(p50 {_spread_ms(data['p50_ms'])}, p99 {_spread_ms(data['p99_ms'])})"
            )
            for run in data["rounds"]:
                if not run["lateness_s"]:
                    continue
                values = np.sort(np.maximum(np.asarray(run["lateness_s"]) * 1000, 0.1))
                share = np.arange(1, len(values) + 1) / len(values)
                axis.step(
                    values, share, where="post", color=colours[design], label=label, linewidth=1.5
                )
                label = None  # one legend entry for all of a design's rounds
        axis.set_xscale("log")
        axis.set_xlabel("time from expires_at until the slot is free (ms, log scale)")
        axis.set_ylabel("share of holds released")
        axis.set_title(
            f"{database}: {phase['holds']:,} holds a round, ending over {phase['spread_s']:g} s"
        )
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return True
