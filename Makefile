# Accordion — developer entry points. `make demo` and `make test` are the README's two commands:
# each installs what it needs itself (a virtual environment in .venv), so both work on a fresh
# machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
COMPONENTS := solver workers operator
SRC := solver/accordion workers/accordion operator/accordion accordion

.PHONY: install demo test lint types layering unit crds check-crds bench bench-solver clean images

$(STAMP): pyproject.toml solver/pyproject.toml workers/pyproject.toml operator/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch from the CPU wheel (a looser pin pulls GBs of CUDA); see README.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --config-settings editable_mode=compat \
		-e ./solver -e './workers[torch]' -e './operator[run]' -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The README's first command: until local mode lands, the planner demo on examples/.
demo: install
	$(BIN)/accordion plan -f examples/cluster.yaml -f examples/services.yaml
	$(BIN)/accordion plan -f examples/cluster.yaml -f examples/services.yaml \
		--demand default/image-classifier=900 --demand default/sentiment=400

## The whole suite: lint, types, layering, CRDs in sync, tests.
test: install lint types layering check-crds unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy $(SRC) tests $(wildcard bench)

layering: install
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest -q

crds: install
	$(BIN)/accordion crds --out crds

check-crds: install
	$(BIN)/accordion crds --check crds

bench-solver: install
	$(PY) bench/solver/run.py

bench: bench-solver

images:
	docker build -f operator/Dockerfile -t accordion-operator:0.1.0 .
	docker build -f workers/Dockerfile -t accordion-worker:0.1.0 .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
