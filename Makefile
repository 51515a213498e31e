# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast lint docs bench clean

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

# The tests that need no Redis (config, plugins, OpenAPI, log format, submission parsing,
# bench's own...), in seconds. The tests' Redis points where nothing listens, so a test
# that needs one but lacks the redis marker (tests/conftest.py) fails here, not passes.
test-fast: $(VENV)/.installed
	TASKHUB_TEST_REDIS_URL=redis://127.0.0.1:1/0 $(BIN)/python -m pytest -m "not redis" $(PYTEST_ARGS)

# The benchmark harness (bench/, README "Performance"): the bench extras besides test,
# and the machine-wide benchmark lock around the whole run. BENCH_ARGS passes flags,
# e.g. make bench BENCH_ARGS="--only accepted --pairs 1 --duration 3".
BENCH_LOCK ?= /tmp/taskhub-bench.lock
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

# The alternative row's stack (Starlette, limits, arq) in an environment of its own: arq
# pins redis-py below 6, taskhub needs 7.
ALT_VENV ?= .venv-alternative
$(ALT_VENV)/.installed: bench/alternative/requirements.txt
	$(PYTHON) -m venv $(ALT_VENV)
	$(ALT_VENV)/bin/python -m pip install --quiet -r bench/alternative/requirements.txt
	touch $@

bench: $(VENV)/.bench-installed $(ALT_VENV)/.installed
	TASKHUB_BENCH_LOCKED=1 TASKHUB_BENCH_ALTERNATIVE_PYTHON=$(ALT_VENV)/bin/python \
		flock $(BENCH_LOCK) $(BIN)/python -m bench $(BENCH_ARGS)

# The documentation site (docs/, mkdocs.yml) into site/: --strict fails on any warning,
# a broken link or anchor, or an asset loaded from another host (docs/hooks/offline.py).
$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Style, types (mypy strict on taskhub/) and the import contracts between the layers.
$(VENV)/.lint-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $@

lint: $(VENV)/.lint-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(ALT_VENV) .pytest_cache .ruff_cache *.egg-info site
