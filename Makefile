# The two commands of the README: `make run` (an example job) and `make test` (everything CI runs).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install run test lint unit clean

install:
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev,operator]'

run: install
	$(PYTHON) examples/python_api.py

lint:
	ruff check .
	ruff format --check .
	mypy
	lint-imports

unit:
	$(PYTHON) -m pytest -q

test: install lint unit
