# Two entry points for newcomers: `make run` and `make test`.
# Each creates .venv, installs what it needs (idempotent: stamps skip work
# already done), then runs.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
NPM_STAMP := node_modules/.installed-$(shell cksum package-lock.json 2>/dev/null | cut -d' ' -f1)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint typecheck pytest setup bench bench-full chromium postgresql redis screenshot clean

run: setup
	$(VENV)/bin/archon-chat serve

test: setup chromium postgresql redis lint typecheck pytest

setup: $(PIP_STAMP) $(NPM_STAMP)

$(PIP_STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	@rm -f $(VENV)/.installed-*
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@rm -f node_modules/.installed-*
	@touch $@

# The browser tests drive Debian's Chromium; never a browser download.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

# The PostgreSQL store tests use the server at 127.0.0.1:5432 when one answers, else
# they start a private one with Debian's binaries.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; }

# The cluster tests use the Redis at 127.0.0.1:6379 when one answers, else they start
# private ones with Debian's redis-server (the package may start a service: harmless).
redis:
	@[ -x /usr/bin/redis-server ] || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }

lint: setup
	$(VENV)/bin/ruff check archon_chat actors tests bench
	$(VENV)/bin/ruff format --check archon_chat actors tests bench

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest

# The README's picture of the panel mid-stream; outside `make test`, which never writes
# the repository.
screenshot: setup chromium
	ARCHON_CHAT_PANEL_SCREENSHOT=$(CURDIR)/docs/panel.png $(VENV)/bin/pytest -q -p no:randomly \
	  tests/e2e/test_panel.py::test_screenshot_mid_stream

bench: setup
	$(PY) -m bench --quick

bench-full: setup
	$(PY) -m bench --full

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
