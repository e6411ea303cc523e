# CC Analytics Stack. Two commands matter: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: help install up down run migrate test lint audit bench analyze clean

help:
	@echo "make run      start the local stack, load the demo, build snapshots, print URLs"
	@echo "make test     lint, type-check and run the whole test suite (starts its own servers)"
	@echo "make up/down  start/stop the local stack (state in .local/)"
	@echo "make migrate  apply Alembic migrations to DATABASE_URL"
	@echo "make bench    run the benchmarks under bench/ and print RESULT lines"
	@echo "make analyze SQL=sql/analysis/segment_distribution.sql   DuckDB over the lake"

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,local]'
	@touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(PY) -m devstack.cli up

down: $(STAMP)
	$(PY) -m devstack.cli down

run: $(STAMP)
	$(PY) -m devstack.cli run

migrate: $(STAMP)
	$(PY) -m devstack.cli migrate

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy pipelines/domain serving pipelines/settings.py
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -q

# pip-audit over the pinned runtime closure; known ids accepted only with a reason in
# .pip-audit-ignore (scripts/audit.py). Fails when the vulnerability service is unreachable.
audit: $(STAMP)
	$(PY) scripts/lock_runtime.py --check
	$(PY) scripts/audit.py

bench: $(STAMP)
	$(PY) -m bench

analyze: $(STAMP)
	@test -n "$(SQL)" || (echo "usage: make analyze SQL=path.sql" >&2; exit 2)
	$(PY) -m scripts.analyze "$(SQL)"

clean: down
	rm -rf .local
