# `make test` and `make demo` work on a machine with only python3 and make:
# each creates .venv if missing and installs what it needs into it.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP := $(VENV)/.installed
comma := ,
EXTRAS := test,dev,docs,webob,redis,recipes,metrics

# Every package installed into .venv is pinned in constraints.txt (make lock writes it), so
# a fresh clone gets the versions that CI last passed with. make test-latest empties
# CONSTRAIN and sets UPGRADE to try the newest releases in a venv of its own.
LOCK := constraints.txt
CONSTRAIN ?= --constraint $(LOCK)
UPGRADE ?=

.PHONY: test test-latest lock demo docs bench bench-cluster lint typing pytest clean

# pip, setuptools and wheel come from the lock too: the package is built with them
# (--no-build-isolation) instead of the newest setuptools of an isolated build.
$(STAMP): setup.cfg setup.py pyproject.toml $(LOCK)
	$(PYTHON) tools/lock.py check
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(CONSTRAIN) $(UPGRADE) pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(CONSTRAIN) $(UPGRADE) --no-build-isolation \
	    -e '.[$(EXTRAS)]'
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

# make lock: pin what setup.cfg adds, keeping every other pin; make lock UPGRADE=1: move
# every pin to the newest release. Resolved for Python 3.11 on Linux, the project's
# machines, whatever Python runs the command.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $$(grep -sE '^uv==' $(LOCK) || echo uv)
	printf 'pip\nsetuptools\nwheel\n' | $(BIN)/uv pip compile --quiet \
	    --python-version 3.11 --python-platform linux --custom-compile-command 'make lock' \
	    $(if $(UPGRADE),--upgrade) $(foreach extra,$(subst $(comma), ,$(EXTRAS)),--extra $(extra)) \
	    --output-file $(LOCK) setup.cfg -

# make test-latest: the same checks with the newest release of everything, unlocked, in
# .venv-latest; it prints the versions it used. Not part of make test: run it before make
# lock UPGRADE=1, and when a dependency announces a release.
test-latest:
	rm -f .venv-latest/.installed
	$(MAKE) VENV=.venv-latest CONSTRAIN= UPGRADE='--upgrade --upgrade-strategy eager' \
	    .venv-latest/.installed
	.venv-latest/bin/python tools/lock.py compare
	$(MAKE) -k VENV=.venv-latest CONSTRAIN= test

clean:
	rm -rf .venv .venv-latest build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .tox docs/_build
