# gristmill: the two commands a new user needs are `make demo` and `make test`.
# Both create .venv/ (Python >= 3.11) and install the project with pinned dependencies first.

PYTHON ?= python3
# make test's pytest workers (pytest-xdist): the suite is sized for two cores (docs/development.md)
TEST_WORKERS ?= 2
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup setup-bench demo test test-fast test-budget lint chromium bench-clean bench-trainer constraints clean help

help:
	@echo "make demo    set up .venv and run the main job end to end on the bundled sample crawl"
	@echo "make test    set up .venv and run every test (unit + end-to-end on real runners; TEST_WORKERS=2) but the budget ones"
	@echo "make test-budget  the shipped ablation at its full budget: its self-test finds the planted damage (~15 min)"
	@echo "make test-fast  the unit tests only (no Ray, no runs in other processes)"
	@echo "make setup   only create .venv and install gristmill (+ test tools)"
	@echo "make lint    ruff (configured in pyproject.toml; make test runs it first)"
	@echo "make chromium  install headless Chromium when missing (make test needs it: report.html is checked in it)"
	@echo "make bench-clean  benchmark the clean stage against datatrove (separate venv)"
	@echo "make bench-trainer  Ray Train loop vs a bare PyTorch loop (needs make demo's token shards)"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gristmill needs Python >= 3.11; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# pip would byte-compile what it installs on one core (1 min of the 1 min 47 s here); compileall does it
	# on every core. Compiled at install all the same: where PYTHONDONTWRITEBYTECODE is set (CI, this
	# machine) every process would compile torch and Ray again. (Like pip, a file that does not compile,
	# such as a package's Python 2 test data, is passed over.)
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[test,ops]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/gristmill demo --output runs/demo

lint: $(STAMP)
	$(BIN)/python -m ruff check .

# report.html is checked as a browser renders it (tests/test_report_browser.py): headless Chromium, installed
# here when missing (as root; otherwise the command to run is printed). Under make test that test fails, not
# skips, without it (GRISTMILL_REQUIRE_CHROMIUM).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	else \
		echo "make test needs Chromium (report.html is checked in a headless browser): run" \
		     "'sudo apt-get install -y chromium' (Debian/Ubuntu) and make test again" >&2; exit 1; \
	fi

test: lint chromium
	GRISTMILL_REQUIRE_CHROMIUM=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=30 -m "not budget"

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
