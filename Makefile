# execbox: `make run` installs everything and starts the service; `make test` runs the tests.
# Works on a fresh Debian 12 machine as root. Every target is idempotent.

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
TS_PREFIX := /usr/local/lib/execbox/typescript
STAMP := $(VENV)/.installed

# Debian packages: the sandbox, Python for .venv, and every language's toolchain
# (the per-language list is read from languages.toml, the single source of truth).
BASE_PACKAGES := bubblewrap libseccomp2 ca-certificates python3 python3-venv python3-dev gcc libc6-dev make
# What the tests need beyond that: Debian's Chromium for the playground's browser test
# (Playwright drives it; no browser is downloaded).
TEST_PACKAGES := chromium
LANG_PACKAGES = $(shell $(PYTHON) -c 'import tomllib; d = tomllib.load(open("src/execbox/languages/languages.toml", "rb")); print(" ".join(sorted({p for l in d["language"] for p in l.get("packages", [])})))' 2>/dev/null)
NPM_PACKAGES = $(shell $(PYTHON) -c 'import tomllib; d = tomllib.load(open("src/execbox/languages/languages.toml", "rb")); print(" ".join(sorted({p for l in d["language"] for p in l.get("npm", [])})))' 2>/dev/null)

.PHONY: setup system-packages typescript venv run serve test unit lint format bench check clean

setup: system-packages typescript venv ## install everything (idempotent, fast when done)

system-packages:
	@missing=""; for p in $(BASE_PACKAGES) $(TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo ">> installing base packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# A tool outside /usr/bin (rustup's rustc in ~/.cargo, say) is not what the sandbox sees.
	@missing=""; for p in $(LANG_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || PATH=/usr/bin:/bin command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo ">> installing language toolchains:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

typescript: system-packages
	@if [ ! -x $(TS_PREFIX)/node_modules/typescript/bin/tsc ] || [ ! -d $(TS_PREFIX)/node_modules/@types/node ]; then \
		echo ">> installing $(NPM_PACKAGES) into $(TS_PREFIX)"; \
		mkdir -p $(TS_PREFIX) && npm install --no-audit --no-fund --silent --prefix $(TS_PREFIX) $(NPM_PACKAGES); \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: setup ## install, then start the service on $(HOST):$(PORT)
	$(BIN)/execbox serve --host $(HOST) --port $(PORT)

serve: venv
	$(BIN)/execbox serve --host $(HOST) --port $(PORT)

test: setup ## the whole suite (needs root: the sandbox is real)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	EXECBOX_TESTS_REQUIRE_ALL=1 $(BIN)/pytest -q -ra --durations=20

unit: venv ## the pure-logic tests: no root, no servers, seconds
	$(BIN)/pytest -q tests/unit

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: venv
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

check: setup ## self-test every language in the sandbox
	$(BIN)/execbox languages --check

bench: setup ## sandbox overhead vs bare (bench/results/sandbox.json)
	$(BIN)/python bench/sandbox.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
