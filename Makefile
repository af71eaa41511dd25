# `make quickstart`: install into .venv and train, evaluate and predict on the built-in dataset.
# `make test`: install into .venv and run the tests.
PYTHON ?= python3
VENV := .venv

$(VENV)/installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

.PHONY: quickstart test
quickstart: $(VENV)/installed
	bash experiments/quickstart.sh runs/quickstart

test: $(VENV)/installed
	$(VENV)/bin/python -m pytest
