# Whistle — the two set-up commands on a fresh clone are `make demo` and `make test`.
# Both bootstrap everything: a virtualenv with the project installed, Debian's clickhouse-server,
# and Apache Kafka's jars (resolved from Maven Central on first `stack up`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: bootstrap demo lint lock test test-pure test-fast stack-up stack-down clean

DASHBOARD_ASSETS := whistle/edges/dashboard_static

bootstrap: $(VENV)/.installed /usr/sbin/clickhouse-server /usr/bin/chromedriver $(DASHBOARD_ASSETS)/node_modules/.package-lock.json

$(VENV)/.installed: pyproject.toml infra/constraints.txt
	@command -v java >/dev/null || { echo "error: Java not found: install a JDK 17+ (apt-get install -y openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "error: Maven not found: install it (apt-get install -y maven)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c infra/constraints.txt -e '.[test,audit]'
	touch $@

# Re-resolve the dependency ranges of pyproject.toml in a scratch venv and pin the result (then `make test`, commit).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q -e '.[test,audit]'
	{ head -2 infra/constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^whistle'; } > infra/constraints.new && mv infra/constraints.new infra/constraints.txt
	rm -rf .lock-venv

/usr/sbin/clickhouse-server /usr/bin/chromedriver:
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q clickhouse-server clickhouse-client chromium chromium-driver fonts-wqy-microhei

# The dashboard's front-end (Apache ECharts) from npm, exactly as locked in package-lock.json; served from the project.
$(DASHBOARD_ASSETS)/node_modules/.package-lock.json: $(DASHBOARD_ASSETS)/package.json $(DASHBOARD_ASSETS)/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: install Node.js and npm (apt-get install -y nodejs npm)"; exit 1; }
	cd $(DASHBOARD_ASSETS) && npm ci --no-audit --no-fund --ignore-scripts
	touch $@

demo: bootstrap
	$(BIN)/whistle demo

# The house rules: layers point down only (import-linter contract in pyproject.toml), ruff, mypy on the runtime packages.
lint: $(VENV)/.installed
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/mypy

test: bootstrap
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that need no server (markers set from each test's fixtures, tests/conftest.py).
test-pure: $(VENV)/.installed
	$(BIN)/python -m pytest -m pure -q $(PYTEST_ARGS)

test-fast: bootstrap
	$(BIN)/python -m pytest -m "not drill" $(PYTEST_ARGS)

stack-up: bootstrap
	$(BIN)/whistle stack up

stack-down: bootstrap
	$(BIN)/whistle stack down

clean:
	rm -rf $(VENV) .whistle .pytest_cache
