# The two commands of the README:
#   make demo   - set up and run the main job
#   make test   - set up and run every test (what .ci/run calls)
# Both install what they need on a fresh machine (venv, Python packages).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: demo test test-core test-conformance test-peers test-peers-ci bench setup clean dashboards dashboards-preview

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
	timeout 1200 $(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/conformance
	$(MAKE) --no-print-directory test-conformance
	$(MAKE) --no-print-directory test-peers-ci

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
	rm -rf $(VENV) .venv-3.* .venv-peers build *.egg-info
