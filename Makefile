# `make quickstart`: install into .venv and train, evaluate and predict on the built-in dataset.
# `make test`: install into .venv and run the tests on TEST_WORKERS processes (`make test PYTEST_ARGS='-m "not slow"'`:
# the fast subset).
# PYTHON is the interpreter the venv is made with (default python3); everything then runs inside the venv, with the
# pinned set of that Python's version: requirements.txt (3.11), requirements-py312.txt (3.12 and later).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQUIREMENTS := $(shell $(PYTHON) -c 'import sys; print("requirements-py312.txt" if sys.version_info >= (3, 12) else "requirements.txt")')
PYTEST_ARGS ?=
# Two xdist workers, a test file each at a time (a file's module fixtures are built once): most of a test's time is
# one XLA compilation on one core (README, "Tests": the times measured). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

$(VENV)/installed: $(REQUIREMENTS) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r $(REQUIREMENTS)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

.PHONY: quickstart test lint
quickstart: $(VENV)/installed
	PYTHON=$(PY) bash experiments/quickstart.sh runs/quickstart

test: $(VENV)/installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(VENV)/installed
	$(PY) -m ruff check .
