#!/usr/bin/env python
"""
Benchmarks of the expiry, on SQLite and PostgreSQL.

    python scripts/bench/run.py                  # the full run (about 18 minutes)
    python scripts/bench/run.py --quick          # small sizes, a minute or two a database (CI)
    python scripts/bench/run.py --database sqlite --phases lateness,burst --out var/bench-part

Phases: ``lateness`` (ours against the seed's 60-second poll and Celery ETA on
the local Redis), ``handover`` (from a hold's end to the waiting party's offer,
and a cascade of lapsing offers), ``reserve`` (the reserve path through
gunicorn, expiry job on and off, driven by wrk), ``burst``, ``catchup``,
``scale`` and ``profile`` (one reservation under cProfile). The comparisons
(ours, the poll and Celery; the job on and off) run ``--rounds`` times,
interleaved, and each figure is the median over rounds with its spread
(``scripts/bench/stats.py``). Each database is a throwaway one: a SQLite
file under ``--out``, or a PostgreSQL database created beside
``BENCH_POSTGRES_URL`` and dropped afterwards. A PostgreSQL or Redis
that cannot be reached is skipped, and the report says so.

Prints Markdown tables and writes ``results.md``, ``results.json`` and
``lateness.png`` to ``--out`` (default ``var/bench``), with each database's
own results (``sqlite.json``, ``postgresql.json``); the output of every worker,
gunicorn and Celery goes to ``--out/logs/<database>/``. ``make bench`` and
``make bench-quick`` install what it needs.
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
# The ``bench`` extra (pyproject.toml): said plainly, not as an ImportError.
BENCH_EXTRA = ("celery", "matplotlib", "tqdm")

PHASES = ["lateness", "handover", "reserve", "burst", "catchup", "scale", "profile"]
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Benchmarks of the expiry: lateness, waiting-list hand-over, reserve path, burst, "
            "catch-up, scale."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=(
            f"Environment: BENCH_POSTGRES_URL (default {DEFAULT_POSTGRES}), where a "
            f"throwaway database is created; BENCH_REDIS_URL (default {DEFAULT_REDIS}), "
            "for the Celery comparison. See docs/performance.md."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument(
        "--rounds",
        type=_rounds,
        default=3,
        help="rounds of each comparison, interleaved (the seed's 60-s poll: one round)",
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, of: {', '.join(PHASES)}"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench", help="output folder")
    args = parser.parse_args()
    if missing := [name for name in BENCH_EXTRA if importlib.util.find_spec(name) is None]:
        sys.exit(
            f"The benchmarks need the bench extra; not installed: {', '.join(missing)}. Run "
            "`make bench` (or `make bench-quick`), which installs it, or "
            "`.venv/bin/pip install -e '.[dev,bench]'`."
        )
    from scripts.bench import report

    phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))} (known: {', '.join(PHASES)})")
    if not phases:
        parser.error(f"no phases given (known: {', '.join(PHASES)})")

    out: Path = args.out.resolve()
    logs = out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)
    celery_problem = _redis_problem(redis_url) if "lateness" in phases else None
    results: dict = {
        "quick": args.quick,
        "rounds": args.rounds,
        "phases": phases,
        "machine": _machine(),
        "celery": celery_problem or "ran",
        "databases": {},
    }
    databases = ["sqlite", "postgresql"] if args.database == "all" else [args.database]
    started = time.monotonic()
    for database in databases:
        print(f"== {database}", file=sys.stderr, flush=True)
        try:
            with _throwaway(database, out) as env:
                (logs / database).mkdir()
                env.update(
                    BENCH_LOG_DIR=str(logs / database),
                    BENCH_REDIS_URL=redis_url,
                    BENCH_CELERY_QUEUE=f"escape_rooms_bench_{os.getpid()}",
                )
                if celery_problem:
                    env["BENCH_CELERY"] = "0"
                results["databases"][database] = _run_driver(
                    env, phases, args.quick, args.rounds, out, database
                )
        except _Unreachable as problem:
            print(f"   skipped: {problem}", file=sys.stderr)
            results["databases"][database] = {"skipped": str(problem)}
    results["seconds"] = round(time.monotonic() - started)

    (out / "results.json").write_text(json.dumps(results, indent=1))
    tables = report.markdown(results)
    (out / "results.md").write_text(tables)
    if report.plot(results, out / "lateness.png"):
        print(f"Wrote {out / 'lateness.png'}", file=sys.stderr)
    print(tables)
    print(
        f"Wrote {out / 'results.md'} and {out / 'results.json'} in {results['seconds']} s",
        file=sys.stderr,
    )
    return 0


class _Unreachable(RuntimeError):
    pass


def _rounds(value: str) -> int:
    rounds = int(value)
    if rounds < 1:
        raise argparse.ArgumentTypeError("at least one round")
    return rounds


def _run_driver(
    env: dict[str, str], phases: list[str], quick: bool, rounds: int, out: Path, database: str
) -> dict:
    python = sys.executable
    subprocess.run(  # noqa: S603 (our own manage.py)
        [python, str(ROOT / "manage.py"), "migrate", "--no-input", "-v", "0"], env=env, check=True
    )
    result = out / f"{database}.json"
    result.unlink(missing_ok=True)
    command = [
        python,
        str(ROOT / "scripts/bench/driver.py"),
        "--phases",
        ",".join(phases),
        "--result",
        str(result),
        "--rounds",
        str(rounds),
    ]
    if quick:
        command.append("--quick")
    subprocess.run(command, env=env, check=True, cwd=ROOT)  # noqa: S603 (our own driver)
    return json.loads(result.read_text())


@contextmanager
def _throwaway(database: str, out: Path) -> Iterator[dict[str, str]]:
    """An environment whose DATABASE_URL (and job store) is a fresh, empty database."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.bench"}
    env.pop("SCHEDULER_JOBSTORE_URL", None)
    if database == "sqlite":
        folder = out / "sqlite"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        env["DATABASE_URL"] = f"sqlite:///{folder / 'db.sqlite3'}"
        env["SCHEDULER_JOBSTORE_URL"] = f"sqlite:///{folder / 'jobs.sqlite3'}"
        try:
            yield env
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
    name = f"escape_rooms_bench_{os.getpid()}"  # two runs at once must not share it
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.Error as error:
        raise _Unreachable(
            f"PostgreSQL at {make_url(admin).render_as_string()}: {error}".strip()
        ) from None
    with connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    env["DATABASE_URL"] = make_url(admin).set(database=name).render_as_string(hide_password=False)
    try:
        yield env
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _redis_problem(url: str) -> str | None:
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as error:
        return f"skipped: Redis at {url} unreachable ({error})"
    return None


def _machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    import sqlite3

    packages = ["Django", "APScheduler", "SQLAlchemy", "psycopg", "celery", "gunicorn"]
    machine = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} × {cpu}",
        "memory": f"{memory_kib / 1024 / 1024:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        **{package: version(package) for package in packages},
    }
    for tool, flag in (("wrk", "--version"), ("redis-server", "--version"), ("psql", "--version")):
        if shutil.which(tool):
            found = subprocess.run([tool, flag], capture_output=True, text=True)  # noqa: S603
            machine[tool] = (found.stdout or found.stderr).strip().splitlines()[0]
    return machine


if __name__ == "__main__":
    sys.exit(main())
