# pgveil: `make demo` runs the demo, `make test` runs the whole test suite.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench conformance clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/pgveil demo

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

# the drivers' own test suites, direct and through pgveil (all-clear tier), each at the version
# pinned here; not part of `make test` (see README, "Conformance": how long it takes)
CONFORMANCE_VERSIONS ?= --asyncpg 0.32.0 --psycopg 3.3.4 --sqlalchemy 2.1.9 --node-postgres pg@8.23.0 --jdbc debian
conformance: $(STAMP)
	$(PY) bench/conformance/run.py $(CONFORMANCE_VERSIONS) $(CONFORMANCE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
