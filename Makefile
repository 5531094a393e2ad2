# SPM reporting framework. Two commands set everything up: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= $(shell command -v python3.11 || command -v python3)
export SPM_PROJECT_DIR := $(CURDIR)

.PHONY: setup demo demo-data check test system-deps bench lint lab serve templates clean

$(BIN)/.installed: pyproject.toml requirements.lock
	@echo "== creating $(VENV) and installing pinned dependencies (requirements.lock)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

setup: $(BIN)/.installed  ## create the virtual environment with pinned dependencies

data/demo.duckdb: | $(BIN)/.installed
	$(BIN)/spm demo-data

demo-data: $(BIN)/.installed  ## (re)generate the demo CRM into data/demo.duckdb
	$(BIN)/spm demo-data

demo: $(BIN)/.installed data/demo.duckdb  ## the main job on the embedded demo data: every owner's monthly report
	$(BIN)/spm data check
	$(BIN)/spm run --cadence monthly
	@$(BIN)/python -c "from spm_lib.cli import print_report_path; print_report_path('monthly', 'executive')"

check: $(BIN)/.installed  ## validate the configured source
	$(BIN)/spm data check

system-deps:  ## real parts the tests need (PostgreSQL server, Chromium)
	@bash scripts/system-deps.sh

test: $(BIN)/.installed system-deps data/demo.duckdb  ## the whole test suite, then every template under nbval
	$(BIN)/pytest tests
	$(BIN)/spm cube --cadence monthly && $(BIN)/spm cube --cadence quarterly && \
	  $(BIN)/spm cube --cadence annual && $(BIN)/spm cube --cadence weekly
	$(BIN)/pytest --nbval-lax -p no:cacheprovider templates/

lab: $(BIN)/.installed data/demo.duckdb  ## JupyterLab on templates/ with the demo data wired in
	$(BIN)/spm cube --cadence monthly
	cd templates && ../$(BIN)/jupyter lab

serve: $(BIN)/.installed data/demo.duckdb  ## live reports (Voila) opened from signed links; needs SPM_LINK_SECRET
	$(BIN)/spm serve

templates: $(BIN)/.installed  ## regenerate templates/*.ipynb from scripts/make_templates.py
	$(BIN)/python scripts/make_templates.py

bench: $(BIN)/.installed  ## benchmarks; figures in runs/bench/latest.json
	$(BIN)/python -m benchmarks

lint: $(BIN)/.installed  ## ruff (project rules and complexity) on the package, tests and benchmarks; mypy on the package
	$(BIN)/ruff check spm_lib tests benchmarks
	$(BIN)/mypy spm_lib

clean:  ## remove runs (never state/)
	rm -rf runs/*/ && touch runs/.gitkeep
