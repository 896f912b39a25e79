# The two commands of the README: `make run` (an example job) and `make test` (everything CI runs).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install run test lint suite cluster-bin

install:
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev,operator]'

run: install
	$(PYTHON) -m bndl.cli run examples/wordcount.yaml --workers 2

lint:
	ruff check .
	ruff format --check .
	mypy
	lint-imports

# The real Kubernetes for the end-to-end tests (binaries and images cached under ~/.cache).
cluster-bin:
	bash tests/cluster/build.sh

suite:
	$(PYTHON) -m pytest -q

test: install lint cluster-bin suite
