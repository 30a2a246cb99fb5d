# The two commands of the README:
#   make demo   - set up and run the main job
#   make test   - set up and run every test (what .ci/run calls)
# Both install what they need on a fresh machine (venv, Python packages).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: demo test lint test-core test-conformance test-wheel test-deps-min test-peers test-peers-ci bench setup clean dashboards dashboards-preview

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/traced-transport demo $(ARGS)

test: $(STAMP)
	bash scripts/system-deps.sh
	$(MAKE) --no-print-directory lint
	timeout 1200 $(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/conformance
	$(MAKE) --no-print-directory test-wheel test-deps-min
	$(MAKE) --no-print-directory test-conformance
	$(MAKE) --no-print-directory test-peers-ci

# ruff (lint and format) over the repository, mypy --strict over the library (pyproject.toml says what).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# What users install: the wheel, not editable, in fresh venvs (.venv-wheel with the demo and framework extras,
# .venv-core with none), its smoke suite run from a directory outside the repository.
test-wheel: $(STAMP)
	rm -rf .venv-wheel .venv-core
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PY) -m pip wheel -q --no-deps -w $$tmp/dist . ; \
	wheel=$$(ls $$tmp/dist/*.whl); \
	$(PYTHON) -m venv .venv-wheel; \
	.venv-wheel/bin/pip install -q "$$wheel[demo,uvicorn,aiohttp,websockets,hypercorn]" pytest pytest-timeout; \
	$(PYTHON) -m venv .venv-core; \
	.venv-core/bin/pip install -q "$$wheel"; \
	cp tests/wheel/test_wheel.py $$tmp/; \
	cd $$tmp && TRACED_TRANSPORT_WHEEL=$$wheel TRACED_TRANSPORT_CORE_PYTHON=$(CURDIR)/.venv-core/bin/python \
		timeout 300 $(CURDIR)/.venv-wheel/bin/python -m pytest -q -p no:cacheprovider -o timeout=120 test_wheel.py

# The tests of the telemetry, the exporters and the integrations on the LOWEST versions pyproject.toml
# declares (the main run above gets the newest); scripts/constraints_min.py pins them.
.venv-min/.installed: pyproject.toml scripts/constraints_min.py
	rm -rf .venv-min
	$(PYTHON) -m venv .venv-min
	$(PYTHON) scripts/constraints_min.py > .venv-min/constraints.txt
	.venv-min/bin/pip install -q -c .venv-min/constraints.txt -e '.[test]'
	touch $@

test-deps-min: .venv-min/.installed
	timeout 600 .venv-min/bin/python -m pytest -q -p no:cacheprovider tests/test_telemetry.py tests/exporters \
		tests/integrations --deselect tests/exporters/test_real_prometheus.py

test-conformance: $(STAMP)
	bash tests/conformance/setup_venvs.sh
	timeout 900 $(PY) tests/conformance/run.py --all-pythons

# Peer projects' own test suites (websockets, aiohttp; built from source into .venv-peers),
# plain and with traced_transport.instrument(pipes=True), compared test by test
# (docs/transparency.md). test-peers-ci: the transport subset that make test runs;
# test-peers: their whole suites.
test-peers-ci: $(STAMP)
	bash tests/conformance/setup_peers.sh
	timeout 900 $(PY) tests/conformance/peers.py --ci

test-peers: $(STAMP)
	bash tests/conformance/setup_peers.sh
	timeout 5400 $(PY) tests/conformance/peers.py --full $(ARGS)

# Regenerate grafana/dashboards/*.json from grafana/generate.py (a test fails when they are out of date).
dashboards: $(STAMP)
	$(PY) grafana/generate.py

# Re-plot grafana/preview.png from a real Prometheus scraping the demo (about 2 minutes).
dashboards-preview: $(STAMP)
	$(PY) -m pip install -q -e '.[preview]'
	$(PY) grafana/render_preview.py $(ARGS)

bench: $(STAMP)
	$(PY) bench/echo.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-3.* .venv-wheel .venv-core .venv-min .venv-peers build *.egg-info
