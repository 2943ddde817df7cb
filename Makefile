# gristmill: the two commands a new user needs are `make demo` and `make test`.
# Both create .venv/ (Python >= 3.11) and install the project with pinned dependencies first.

PYTHON ?= python3
# make test's pytest workers (pytest-xdist): the suite is sized for two cores (docs/development.md)
TEST_WORKERS ?= 2
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup setup-bench demo test test-fast test-budget lint bench-clean bench-trainer constraints clean help

help:
	@echo "make demo    set up .venv and run the main job end to end on the bundled sample crawl"
	@echo "make test    set up .venv and run every test (unit + end-to-end on real runners; TEST_WORKERS=2) but the budget ones"
	@echo "make test-budget  the shipped ablation at its full budget: its self-test finds the planted damage (~15 min)"
	@echo "make test-fast  the unit tests only (no Ray, no runs in other processes)"
	@echo "make setup   only create .venv and install gristmill (+ test tools)"
	@echo "make lint    ruff (configured in pyproject.toml; make test runs it first)"
	@echo "make bench-clean  benchmark the clean stage against datatrove (separate venv)"
	@echo "make bench-trainer  Ray Train loop vs a bare PyTorch loop (needs make demo's token shards)"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gristmill needs Python >= 3.11; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# pip byte-compiles what it installs (1 min of the 1 min 47 s here): not --no-compile, since where
	# PYTHONDONTWRITEBYTECODE is set (CI, this machine) every process would compile torch and Ray again
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,ops]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/gristmill demo --output runs/demo

lint: $(STAMP)
	$(BIN)/python -m ruff check .

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=30 -m "not budget"

# the shipped configs at their full budget (the ablation's self-test: ~15 minutes on 2 cores)
test-budget: $(STAMP)
	$(BIN)/python -m pytest -q -m budget

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow and not budget"

# the benchmarks' own extras (plots, reference implementations)
setup-bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,bench]'

bench-clean:
	bash bench/setup_bench_env.sh
	bench/.venv-bench/bin/python bench/bench_clean.py

bench-trainer: setup-bench
	test -f runs/demo/tokens/manifest.json || $(MAKE) demo
	$(BIN)/python bench/bench_trainer_overhead.py --threads 1
	$(BIN)/python bench/bench_trainer_overhead.py --threads 2

constraints: $(STAMP)
	head -2 constraints.txt > constraints.txt.new
	$(BIN)/python -m pip freeze | grep -v -e '^-e' -e '^gristmill' -e '@ file' -e '^# Editable' | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/' >> constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf runs .pytest_cache
