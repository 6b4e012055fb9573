# The two commands a newcomer needs: `make run` and `make test`. Each does its own set-up.
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test lint services browser clean

$(PY):
	python3 -m venv $(VENV)

$(RUNTIME): pyproject.toml | $(PY)
	$(PIP) -e .
	touch $@

$(DEV): pyproject.toml | $(PY)
	$(PIP) -e '.[dev]'
	touch $@ $(RUNTIME)

services:
	@bash scripts/services.sh

browser:
	@bash scripts/browser.sh

run: $(RUNTIME) services
	$(VENV)/bin/sensorhub run

test: $(DEV) services browser
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(DEV)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
