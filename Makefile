# Barista. `make up` runs it on embedded defaults; `make test` runs the tests.
# Both create and reuse .venv with a Python >= 3.12 they find themselves.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: up test lint bench chaos audit chromium clean

$(PY):
	@python=$${PYTHON:-$$(scripts/find-python)} || exit 1; \
	echo "Creating $(VENV) with $$python"; \
	"$$python" -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# A local run: DEBUG on (it is off unless asked for), loopback only.
up: $(STAMP)
	DEBUG=$${DEBUG:-1} $(PY) manage.py up

# Browser tests drive Debian's chromium; install it when missing (root + apt only).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's chromium for the browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); \
	  else \
	    echo "The browser tests need chromium (apt-get install chromium), or set BARISTA_CHROMIUM."; exit 1; \
	  fi; }

test: $(STAMP) chromium
	$(PY) -m pytest -m "not chaos and not cluster" $(PYTEST_ARGS)

# The proving suite: isolation under cancellation, worker/Redis/backend faults, hostile
# input, secrets, hygiene. Figures go to test-output/chaos-figures.json.
chaos: $(STAMP) chromium
	$(PY) -m pytest -m chaos tests/chaos $(PYTEST_ARGS)

# Static security checks: bandit (medium and up must be clean; see docs/security.md) and
# pip-audit (needs to reach a vulnerability database).
audit: $(STAMP)
	$(VENV)/bin/bandit -r apps project -q -ll
	$(VENV)/bin/pip-audit --skip-editable

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=$${DEBUG:-1} $(VENV)/bin/mypy  # django-stubs loads the settings
	$(VENV)/bin/lint-imports

bench: $(STAMP) haproxy
	$(PY) -m bench

clean:
	rm -rf $(VENV) var/test-db.sqlite3* .pytest_cache .mypy_cache .ruff_cache

# Barista as several hosts on this machine (issue 20, docs/deploy.md): network namespaces
# for PostgreSQL, Redis, two web, two worker, the simulator and HAProxy. Needs root, `ip
# netns`, haproxy and postgresql (apt-get install haproxy postgresql). Runs until Ctrl-C,
# then stops what it started and removes every namespace, veth and bridge it made.
.PHONY: cluster cluster-test cluster-clean haproxy
cluster: $(STAMP) haproxy
	$(PY) -m cluster up

# The tests on the cluster; they skip, saying why, where root or `ip netns` are missing.
cluster-test: $(STAMP) haproxy
	$(PY) -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

# The cluster's load balancer: Debian's HAProxy, installed when missing (root + apt only;
# elsewhere the cluster refuses, saying what is missing).
haproxy:
	@command -v haproxy >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's haproxy for the cluster"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null); \
	  fi; }

# Remove what a killed cluster left behind (its processes, namespaces, veths, bridge).
cluster-clean:
	$(PY) -m cluster clean
