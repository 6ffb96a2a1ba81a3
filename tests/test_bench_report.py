"""The benchmark's figures over rounds, its overlap rule and the tables it renders."""

import subprocess
import sys

import pytest

from scripts.bench import report
from scripts.bench.stats import compare, difference, overlap, percent_less, ratio, spread

from .conftest import PROJECT_DIR


def test_a_spread_is_the_median_and_the_extremes_over_rounds():
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "rounds": 3}
    assert spread([4.0]) == {"median": 4.0, "min": 4.0, "max": 4.0, "rounds": 1}
    with pytest.raises(ValueError):
        spread([])


def test_spreads_that_share_a_point_overlap():
    assert overlap([1, 3], [3, 5])
    assert overlap([1, 10], [4, 5])
    assert not overlap([1, 2.9], [3, 5])


def test_overlapping_spreads_are_no_measurable_difference():
    compared = compare([10.0, 12.0, 11.0], [9.0, 10.5, 13.0], difference)

    assert compared["measurable"] is False
    assert compared["value"] == pytest.approx(0.5)


def test_apart_spreads_give_the_medians_difference_and_the_rounds_own_range():
    compared = compare([12.0, 14.0, 13.0], [10.0, 10.5, 11.0], difference)

    assert compared == {
        "measurable": True,
        "value": pytest.approx(13.0 - 10.5),
        "low": pytest.approx(2.0),  # round 3: 13 - 11
        "high": pytest.approx(3.5),  # round 2: 14 - 10.5
        "pairs": "round",
    }


def test_rounds_of_unequal_number_are_compared_all_against_all():
    compared = compare([60_000.0], [4.0, 5.0, 8.0], ratio)

    assert compared["pairs"] == "all"
    assert compared["value"] == pytest.approx(12_000)
    assert (compared["low"], compared["high"]) == (pytest.approx(7_500), pytest.approx(15_000))


def test_a_throughput_cost_is_how_much_less_in_percent():
    assert percent_less(90.0, 100.0) == pytest.approx(10.0)
    assert percent_less(110.0, 100.0) == pytest.approx(-10.0)


def _reserve(on_created, off_created, on_alone_p50, off_alone_p50):
    def setting(created, alone):
        return {
            "created_per_s": spread(created),
            "p50_ms": spread([50.0, 51.0, 52.0]),
            "p90_ms": spread([60.0, 61.0, 62.0]),
            "p99_ms": spread([70.0, 71.0, 72.0]),
            "max_ms": spread([80.0, 81.0, 82.0]),
            "one_client_p50_ms": spread(alone),
            "one_client_p99_ms": spread([9.0, 9.5, 10.0]),
            "errors": 0,
            "rounds": [],
        }

    return {
        "clients": 8,
        "seconds": 8,
        "alone_seconds": 3,
        "gunicorn_workers": 4,
        "rounds": 3,
        "order": ["on 1", "off 1", "on 2", "off 2", "on 3", "off 3"],
        "jobs_on": setting(on_created, on_alone_p50),
        "jobs_off": setting(off_created, off_alone_p50),
        "cost": {
            "throughput_pct": compare(on_created, off_created, percent_less),
            "one_client_p50_ms": compare(on_alone_p50, off_alone_p50, difference),
            "p50_8_clients_ms": compare([50.0, 51.0, 52.0], [50.0, 51.0, 52.0], difference),
        },
    }


def _lateness():
    ours = [[4.0, 10.0], [5.0, 12.0], [6.0, 11.0]]
    celery = [[5.5, 30.0], [4.5, 29.0], [7.0, 35.0]]

    def design(rounds):
        runs = [
            {"round": k + 1, "p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "max_ms": p99, "n": 2}
            | {"lateness_s": [p50 / 1000, p99 / 1000]}
            for k, (p50, p99) in enumerate(rounds)
        ]
        return {
            key: spread([run[key] for run in runs])
            for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms")
        } | {"rounds": runs}

    poll = design([[30_000.0, 59_000.0]])
    poll |= {"interval_s": 60.0, "spread_s": 60.0}
    phase = {
        "holds": 2,
        "spread_s": 8.0,
        "rounds": 3,
        "order": ["ours 1", "poll 1", "celery 1", "ours 2", "celery 2", "ours 3", "celery 3"],
        "ours": design(ours),
        "poll": poll,
        "celery": design(celery),
    }
    for name in ("poll", "celery"):
        for key in ("p50_ms", "p99_ms"):
            phase[name][f"{key}_vs_ours"] = compare(
                [run[key] for run in phase[name]["rounds"]],
                [run[key] for run in phase["ours"]["rounds"]],
                ratio,
            )
    return phase


def test_the_tables_give_medians_with_spreads_and_the_overlap_rule():
    results = {
        "databases": {
            "sqlite": {
                "lateness": _lateness(),
                # The job's cost: throughput apart (a percentage), 1-client p50 overlapping.
                "reserve": _reserve(
                    [90.0, 92.0, 95.0], [100.0, 104.0, 110.0], [8, 9, 10], [8, 8.5, 11]
                ),
            },
            "postgresql": {"skipped": "unreachable"},
        }
    }

    tables = report.markdown(results)

    lines = tables.splitlines()
    [on] = [line for line in lines if "| expiry job on" in line]
    assert "92 [90–95]" in on
    assert "9.00 [8.00–10.00] ms" in on
    [cost] = [line for line in lines if "| cost of the job" in line]
    assert "+11.5 % [+10.0 to +13.6]" in cost  # 1 - 92/104; rounds 1 - 90/100, 1 - 95/110
    assert cost.count(report.NO_DIFFERENCE) == 2  # the 1-client p50 and the 8-client p50
    assert "throughput ≤ 10 %: missed" in cost
    [celery] = [line for line in lines if "Celery ETA" in line]
    assert "5.5 [4.5–7.0] ms" in celery
    assert report.NO_DIFFERENCE in celery  # p50: 4.5–7.0 against 4.0–6.0
    assert "2.7× [2.4× to 3.2×]" in celery  # p99: 30 / 11; rounds 29 / 12 to 35 / 11
    [poll] = [line for line in lines if "seed: sweep every 60 s" in line]
    assert "| 30.0 s " in poll  # one round: no brackets
    assert "6,000× [5,000× to 7,500×]" in poll
    assert "postgresql: skipped (unreachable)" in tables


def test_one_round_against_one_gives_the_difference_without_a_range():
    compared = compare([12.0], [10.0], difference)

    assert report._compared(compared, "ms") == "+2.00 ms"
    assert report._compared(compare([12.0], [12.0], difference), "ms") == report.NO_DIFFERENCE


def test_the_benchmarks_refuse_fewer_than_one_round():
    ran = subprocess.run(
        [sys.executable, "scripts/bench/run.py", "--rounds", "0"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 2
    assert "at least one round" in ran.stderr
