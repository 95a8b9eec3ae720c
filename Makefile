# The two commands a newcomer needs: `make run` and `make test`. Both set up .venv first (idempotent:
# the install step re-runs only when requirements.txt or pyproject.toml change).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: run test test-quick lint format bench bench-quick bench-scale setup clean chromium

setup: $(STAMP)

$(STAMP): requirements.txt requirements-bench.txt requirements-bench-nodeps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-bench.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-bench-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py --server.address localhost --server.port $(PORT) --server.headless true \
		--browser.gatherUsageStats false

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The browser test drives Debian's Chromium (Playwright cannot download a browser here).
chromium:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "The browser test needs Debian's chromium: sudo apt-get install chromium"; exit 1; fi; }

test: $(STAMP) lint chromium
	$(PY) -m pytest -q -ra --durations=15

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The classic suites, then the issue benchmarks (hours on 2 cores; each caches its runs and truths in
# benchmarks/.workspace and rewrites its own results file; mislabel_text reads ../shared/data/sst2).
bench: $(STAMP)
	$(PY) -m benchmarks.run --suite full
	$(PY) -m benchmarks.byo --full
	$(PY) -m benchmarks.robustness --full
	$(PY) -m benchmarks.kronfluence_mnist5k
	$(PY) -m benchmarks.mislabel --full
	$(PY) -m benchmarks.mislabel_text --full
	$(PY) -m benchmarks.pruning --full
	$(PY) -m benchmarks.unrolled
	$(PY) -m benchmarks.unrolled_stages --full
	$(PY) -m benchmarks.airrep_teacher

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --suite quick

# Top-k of 10,000 queries over 200,000 x 2,048 memory-mapped features (~1.7 GB in benchmarks/.workspace).
bench-scale: $(STAMP)
	$(PY) -m benchmarks.scale

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
