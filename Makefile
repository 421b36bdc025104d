# `make test` and `make demo` work on a machine with only python3 and make:
# each creates .venv if missing and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo docs bench bench-cluster lint typing pytest clean

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev,docs,webob,redis,recipes]'
	touch $(STAMP)

test: lint typing pytest docs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typing: $(STAMP)
	$(BIN)/mypy --strict

pytest: $(STAMP)
	$(BIN)/pytest

# The documentation site, offline, with every warning and unresolved reference an error.
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -n -q -b html docs docs/_build/html

demo: $(STAMP)
	$(BIN)/python -m examples.demo $(if $(PORT),--port $(PORT))

# make bench: the full run recorded in BENCHMARKS.md; make bench QUICK=1: a smoke run.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,--breakdown)

# make bench-cluster: the hop between processes on both directories, through gunicorn -w 4
# (the Redis half needs redis-server).
bench-cluster: $(STAMP)
	$(BIN)/python -m bench.cluster

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .tox docs/_build
