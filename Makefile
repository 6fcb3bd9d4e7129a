# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1

.PHONY: install demo test test-fast lint bench ui clean

# pip compiles the venv's 42 000 modules to bytecode on one core (over a minute): compileall
# does it on every core. Compiled they must be, beforehand: where PYTHONDONTWRITEBYTECODE is
# set, no process writes what it compiles, and each one would compile all it imports again.
# compileall's status is ignored: a few packages ship test files in another Python's syntax.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev,bench]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

## demo: simulate a few days of observations and run the nightly flow for the whole fleet on the
## embedded default, with the cpu-small profile (the zoo's own architectures need a GPU worker)
demo: $(STAMP)
	$(BIN)/oceanml simulate --days 3 --devices 8 --per-day 60
	$(BIN)/oceanml run nightly --profile cpu-small

## test: the whole suite (unit, data, model, flows, integration), one pytest-xdist worker per
## core (tests/conftest.py says which tests run together on one worker, and in what order)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --durations=40

## test-fast: the inner loop (unit, data, model behaviour without training), one worker per
## core as `make test` (its time: docs/testing.md)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto -m "not slow and not integration" tests/unit tests/data tests/model

## lint: ruff, and the layers contract (entry points > flows > tasks > models > core)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

## ui: the Prefect UI on loopback, showing the runs the CLI made
ui: $(STAMP)
	$(BIN)/prefect server start --host 127.0.0.1

clean:
	rm -rf .oceanml data/manifests data/datasets data/versions dvc.lock
