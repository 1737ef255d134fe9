# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench deps test-deps system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

deps: $(STAMP) system-deps

system-deps:
	@scripts/install-system-deps.sh

test-deps: $(STAMP)
	@scripts/install-system-deps.sh --with-browser

run: deps
	$(BIN)/scaleflow dev

test: test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -p no:cacheprovider -n 3 --dist loadfile

bench: deps
	$(BIN)/python -m bench

lint: deps
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: deps
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var
