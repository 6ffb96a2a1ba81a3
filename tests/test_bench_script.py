"""The benchmark script, run without its extra, says what to install; its help needs none."""

import subprocess
import sys

from .conftest import PROJECT_DIR

WITHOUT_TQDM = """
import importlib.util, runpy, sys
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *args: None if name == "tqdm" else find_spec(name, *args)
sys.argv = ["scripts/bench/run.py", "--database", "sqlite"]
runpy.run_path("scripts/bench/run.py", run_name="__main__")
"""


def test_the_benchmarks_without_the_bench_extra_say_what_to_install():
    ran = subprocess.run(
        [sys.executable, "-c", WITHOUT_TQDM],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr
    assert "tqdm" in ran.stderr.split("not installed: ", 1)[1].split(".", 1)[0]
    assert "pip install -e '.[dev,bench]'" in ran.stderr


def test_the_benchmarks_help_needs_no_extra():
    ran = subprocess.run(
        [sys.executable, "-c", WITHOUT_TQDM.replace('"--database", "sqlite"', '"--help"')],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 0
    assert "--rounds" in ran.stdout
