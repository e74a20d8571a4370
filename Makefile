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

.PHONY: setup run test smoke lint bench sweep clean help

help:
	@echo "make run [ARGS='model=... method=...']   the default CPU experiment (or any overrides)"
	@echo "make test                                the test suite (CPU)"
	@echo "make smoke | lint | bench | sweep SWEEP=lr | clean | setup [TORCH=...]"

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q $(TORCH) $(TRITON)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

setup: $(STAMP)

run: setup
	$(PY) -m runner $(ARGS)

smoke: setup
	$(PY) -m runner experiment=smoke $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check runner tasks models methods kernels tests bench

bench: setup
	$(PY) bench/overhead.py

sweep: setup
	$(PY) -m runner -m +sweep=$(SWEEP) $(ARGS)

clean:
	rm -rf runs outputs multirun .pytest_cache .ruff_cache
