# The two commands of the README: `make run` (an example job) and `make test` (everything CI runs).
# The fast tier for the development loop: `make unit` (lint and every test that needs no cluster
# and no root, one process per core, property tests at a fifth of their examples: about 35 s on 2
# idle cores; after `make install` once). `make test` runs every test at its full count.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The marker of the tests that need the real Kubernetes of tests/cluster (and root).
CLUSTER_MARKER := cluster

.PHONY: install run test unit lint suite fast cluster-bin

install:
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev,operator]'

run: install
	$(PYTHON) -m bndl.cli run examples/wordcount.yaml --workers 2

lint:
	ruff check .
	ruff format --check .
	mypy
	lint-imports

# The real Kubernetes for the end-to-end tests (binaries and images cached under ~/.cache), and
# the tools the suite runs (helm, actionlint).
cluster-bin:
	bash tests/cluster/build.sh

# Every test that needs no cluster and no root, spread over one process per core by pytest-xdist
# (a dev dependency); a module's tests stay in one process (--dist loadfile), so a module-scoped
# worker is started once. `make fast JOBS=1` runs them in this process, in file order. They start
# hundreds of Python processes and pytest rewrites every test module: compiled caches (__pycache__,
# ignored by git) are kept even where the environment sets PYTHONDONTWRITEBYTECODE (8 s of CPU).
# The hypothesis profile (tests/helpers/hypothesis_profiles.py): `dev` tries a fifth of each property
# test's examples; `make fast HYPOTHESIS_PROFILE=ci` (as the GitHub workflow runs it) all of them.
JOBS ?= auto
HYPOTHESIS_PROFILE ?= dev
fast:
	PYTHONDONTWRITEBYTECODE= HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(PYTHON) -m pytest -q -m "not $(CLUSTER_MARKER)" $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadfile)

unit: lint fast

# Every test: unit, property (every example: the `ci` hypothesis profile), process-level and
# end-to-end on the test cluster.
suite:
	HYPOTHESIS_PROFILE=ci $(PYTHON) -m pytest -q

test: install lint cluster-bin suite
