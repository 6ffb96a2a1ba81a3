"""Turn the benchmark results into Markdown tables and the lateness picture."""

from pathlib import Path
from typing import Any

from tabulate import tabulate

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


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


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

    rows = []
    for database, phase in _databases(results, "lateness"):
        for design in ("ours", "poll", "celery"):
            data = phase.get(design)
            if data is None:
                continue
            name = DESIGNS[design].format(interval=phase["poll"]["interval_s"])
            target = f"p99 ≤ 100 ms: {_verdict(data['p99_ms'], 100)}" if design == "ours" else ""
            rows.append(
                [
                    database,
                    name,
                    data["n"],
                    _ms(data["p50_ms"]),
                    _ms(data["p95_ms"]),
                    _ms(data["p99_ms"]),
                    _ms(data["max_ms"]),
                    _ratio(data.get("p50_ratio_to_ours")),
                    _ratio(data.get("p99_ratio_to_ours")),
                    target,
                ]
            )
    _section(
        parts,
        "### Expiry lateness: from `expires_at` until the slot is free\n\n",
        "database | design | holds | p50 | p95 | p99 | max | p50 / ours | p99 / ours | target",
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

    rows = []
    for database, phase in _databases(results, "reserve"):
        if "skipped" in phase:
            rows.append([database, phase["skipped"], "", "", "", "", "", ""])
            continue
        for jobs in ("on", "off"):
            data = phase[f"jobs_{jobs}"]
            rows.append(
                [
                    database,
                    f"expiry job {jobs}",
                    f"{data['created_per_s']:,.0f}",
                    _ms(data["p50_ms"]),
                    _ms(data["p99_ms"]),
                    _ms(data["one_client_p50_ms"], 2),
                    data["non_2xx"] + data["socket_errors"],
                    "",
                ]
            )
        cost_ms, cost_pct = phase["p50_cost_ms"], phase["throughput_cost_pct"]
        rows.append(
            [
                database,
                "cost of the job",
                f"{cost_pct:+.1f} %",
                f"{phase['p50_cost_8_clients_ms']:+.2f} ms",
                "",
                f"{cost_ms:+.2f} ms",
                "",
                f"p50 ≤ 1 ms: {_verdict(cost_ms, 1)}; throughput ≤ 20 %: {_verdict(cost_pct, 20)}",
            ]
        )
    _section(
        parts,
        "### Reserve path: `POST /api/reservations/` through gunicorn (4 workers)\n\n",
        "database | run | created / s (8 clients) | p50 (8 clients) | p99 (8 clients) | "
        "p50 (1 client) | errors | target",
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
    return "\n\n".join(parts) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    """
    Lateness of the three designs as cumulative distributions on a log time
    axis, one panel per database; returns whether there was anything to draw.
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
            if not data or not data.get("lateness_s"):
                continue
            values = np.sort(np.maximum(np.asarray(data["lateness_s"]) * 1000, 0.1))
            share = np.arange(1, len(values) + 1) / len(values)
            name = DESIGNS[design].format(interval=phase["poll"]["interval_s"])
            label = f"{name} (p50 {_ms(data['p50_ms'])}, p99 {_ms(data['p99_ms'])})"
            axis.step(values, share, where="post", color=colours[design], label=label, linewidth=2)
        axis.set_xscale("log")
        axis.set_xlabel("time from expires_at until the slot is free (ms, log scale)")
        axis.set_ylabel("share of holds released")
        axis.set_title(f"{database}: {phase['holds']:,} holds ending over {phase['spread_s']:g} s")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return True
