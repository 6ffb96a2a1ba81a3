# The two commands a new user needs: `make run` and `make test`.
# Both create .venv with Python 3.11 when it is missing and install the project.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium
PGBOUNCER := /usr/sbin/pgbouncer
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORT ?= 8000
# The suite runs again on this PostgreSQL (a test database is created beside it).
TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/escape_rooms

.PHONY: run test test-sqlite test-postgres worker install lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The benchmarks' extras (Celery, matplotlib, tqdm): never runtime dependencies.
BENCH_STAMP := $(VENV)/.installed-bench
WRK := /usr/bin/wrk

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# The reserve-path benchmark drives gunicorn with Debian's wrk.
$(WRK):
	@echo "Installing Debian's wrk for the reserve-path benchmark (apt-get)..."
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk

# The browser tests drive Debian's Chromium; never a browser download.
$(CHROMIUM):
	@echo "Installing Debian's chromium for the browser tests (apt-get)..."
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The pooler test runs the product behind Debian's pgbouncer (transaction mode).
$(PGBOUNCER):
	@echo "Installing Debian's pgbouncer for the pooler test (apt-get)..."
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer

## Serve the pages and the API on http://127.0.0.1:$(PORT) with the background scheduler.
run: $(STAMP)
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py load_demo_venue
	SITE_URL=$${SITE_URL:-http://127.0.0.1:$(PORT)} $(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

## Run the expiry scheduler as a dedicated worker (use with SCHEDULER_WORKER_MODE=true).
worker: $(STAMP)
	$(BIN)/python manage.py migrate --no-input
	SITE_URL=$${SITE_URL:-http://127.0.0.1:$(PORT)} $(BIN)/python manage.py start_scheduler

## Run the whole test suite on SQLite (browser tests included), then on
## PostgreSQL; branch coverage of both runs must stay at 90 % or more on the
## services and on the scheduler package.
test: $(STAMP) $(CHROMIUM) $(PGBOUNCER)
	$(BIN)/python -m pytest -m "not postgres"
	DATABASE_URL=$(TEST_POSTGRES_URL) $(BIN)/python -m pytest -m "not browser" --cov-append
	$(BIN)/coverage report --include='apps/*/services.py' --fail-under=90 --precision=1
	$(BIN)/coverage report --include='escape_rooms_backend/*.py' --fail-under=90 --precision=1

## One database only (no coverage gate).
test-sqlite: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -m "not postgres"

test-postgres: $(STAMP) $(PGBOUNCER)
	DATABASE_URL=$(TEST_POSTGRES_URL) $(BIN)/python -m pytest -m "not browser"

## Benchmarks of the expiry and the waiting list's hand-over on SQLite and PostgreSQL
## (about 18 minutes):
## tables in var/bench/results.md, figures in results.json, picture in lateness.png.
bench: $(BENCH_STAMP) $(WRK)
	$(BIN)/python scripts/bench/run.py $(BENCH_ARGS)

## The same at small sizes (a minute or two a database), so that the harness keeps working; run by CI.
bench-quick: $(BENCH_STAMP) $(WRK)
	$(BIN)/python scripts/bench/run.py --quick --out var/bench-quick $(BENCH_ARGS)

## Lint, format check, types and the import contracts (pyproject.toml, [tool.importlinter]).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .import_linter_cache *.egg-info
