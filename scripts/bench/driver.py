#!/usr/bin/env python
"""
Run benchmark phases on this process's database; write their results as JSON.

Started by ``scripts/bench/run.py`` once per database, with ``DATABASE_URL``
pointing at a throwaway database it has migrated:

    python scripts/bench/driver.py --phases lateness,burst --result out.json [--quick] [--rounds 3]
"""

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.bench")

import django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", required=True, help="comma-separated phase names")
    parser.add_argument("--result", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--rounds", type=int, help="rounds of each comparison (default: 3)")
    args = parser.parse_args()
    django.setup()

    from scripts.bench.common import FULL, QUICK, say
    from scripts.bench.phases import PHASES

    sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        sizes = replace(sizes, rounds=args.rounds)
    results = {}
    for name in args.phases.split(","):
        started = time.monotonic()
        say(f"phase {name} ...")
        results[name] = PHASES[name](sizes)
        results[name]["phase_seconds"] = round(time.monotonic() - started, 1)
        args.result.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
