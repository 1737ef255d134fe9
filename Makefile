# Two commands do all set-up: `make run` and `make test`.
#
# Each goes in this order, so that apt comes before the long pip step:
#   1. system-deps  Debian packages (memcached, redis, python3.X-venv if PYTHON lacks it;
#                   chromium and tmux too for `make test`), installed only when missing;
#   2. venv         the venv, made or mended if an earlier run left it half-made;
#   3. a stamp      `make run`: the package alone (`pip install -e .`);
#                   `make test`: the package with its test tools (`.[dev]`).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The venv's own file: scripts/ensure-venv.sh touches it whenever it makes or mends the
# venv, which makes every stamp below out of date.
VENV_CFG := $(VENV)/pyvenv.cfg
STAMP := $(VENV)/.installed
# Through the venv's python, never bin/pip (its #! line breaks when the venv moves).
PIP = $(BIN)/python -m pip
DEV_STAMP := $(VENV)/.installed-dev
# `make test` (and what it needs) also installs the browser the dashboard test drives.
SYSTEM_DEPS_FLAGS :=
test test-deps: SYSTEM_DEPS_FLAGS := --with-browser

.PHONY: run test lint format bench deps test-deps system-deps venv clean FORCE

system-deps:
	@scripts/install-system-deps.sh --python $(PYTHON) $(SYSTEM_DEPS_FLAGS)

# Checked on every run (FORCE); the file changes only when the venv is made or mended.
$(VENV_CFG): FORCE | system-deps
	@scripts/ensure-venv.sh $(PYTHON) $(VENV)

venv: $(VENV_CFG)

$(STAMP): pyproject.toml $(VENV_CFG)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $(STAMP)

# `.[dev]` holds the package as well: `make run` after `make test` installs nothing.
$(DEV_STAMP): pyproject.toml $(VENV_CFG)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP) $(DEV_STAMP)

deps: $(STAMP)

test-deps: $(DEV_STAMP)

run: deps
	$(BIN)/scaleflow dev

test: test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -p no:cacheprovider -n 3 --dist loadfile --no-loadscope-reorder

# The benchmarks reuse the test suite's stack helpers, so they need the test tools.
bench: $(DEV_STAMP)
	$(BIN)/python -m bench

lint: $(DEV_STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var
