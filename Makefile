# One command each on a fresh machine: `make run` (install + train the embedded default), `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
# Our machines keep the CPU wheel of torch in /opt/wheels; GPU users install their CUDA torch into .venv first.
FIND    := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
CONFIG  ?= configs/tiny_cpu.yaml
ARGS    ?=

.PHONY: install run reproduce test test-fast lint bench reward pretrain evaluate prometheus clean constraints

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(FIND) "$(TORCH)"
	$(BIN)/pip install -q $(FIND) -e ".[dev,ocr]"
	touch $@

run: install
	$(BIN)/python -m deploy.train $(CONFIG) $(ARGS)

# make run once per seed (0, 1, 2), then mean and spread, the learning curves and the stock-pipeline check:
# bench/reproduce/results.md, results.json, learning.png
reproduce: install
	$(BIN)/python -m bench.reproduce --config $(CONFIG) $(ARGS)

# Prometheus (Debian package) backs the dashboard test; installed here when apt is usable, else that test skips.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) || \
	  echo "prometheus not installed: the dashboard test will be skipped"; }

test: install prometheus
	$(BIN)/python -m pytest -q -ra --durations=15 tests $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow" tests $(ARGS)

lint: install
	$(BIN)/ruff check actors learner reward_service deploy configs tests

bench: install
	$(BIN)/python -m bench.run $(ARGS)

reward: install
	$(BIN)/python -m reward_service.server --scorers shapes --port 8001 $(ARGS)

pretrain: install
	$(BIN)/python -m deploy.pretrain $(ARGS)

evaluate: install
	$(BIN)/python -m deploy.evaluate $(ARGS)

clean:
	rm -rf runs .pytest_cache

# deploy/constraints.txt: the versions of this environment, for every node of a cluster (torch left out)
constraints: install
	{ sed -n '1,3p' deploy/constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(torch|nvidia-|triton|hadolint)'; } > deploy/constraints.tmp
	mv deploy/constraints.tmp deploy/constraints.txt
