# The two commands of the README: `make run` (an example job) and `make test` (everything CI runs).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install run test lint unit clean

install:
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev,operator]'

run: install
	bndl run examples/wordcount.yaml --workers 2

lint:
	ruff check .
	ruff format --check .
	mypy
	lint-imports

unit:
	$(PYTHON) -m pytest -q

test: install lint unit
