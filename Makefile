# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever the project metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/taskhub run config.example.yaml

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The benchmark harness (bench/, README "Performance"): the bench extras besides test,
# and the machine-wide benchmark lock around the whole run. BENCH_ARGS passes flags,
# e.g. make bench BENCH_ARGS="--only accepted --pairs 1 --duration 3".
BENCH_LOCK ?= /tmp/taskhub-bench.lock
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	TASKHUB_BENCH_LOCKED=1 flock $(BENCH_LOCK) $(BIN)/python -m bench $(BENCH_ARGS)

# The documentation site (docs/, mkdocs.yml) into site/: --strict fails on any warning,
# a broken link or anchor, or an asset loaded from another host (docs/hooks/offline.py).
$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info site
