# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install the locked versions, run the CPU demo sweep, print the table
#   make test   create .venv, install the locked versions, lint, type-check, run the tests
# Other targets: make lock (re-resolve requirements.lock), make demo-check (regenerate the demo
# table into a temporary folder and diff it against results/), make table1 / table1-check (the
# same for Table 1 on Fashion-MNIST, about an hour on 2 cores), make test-fast (the tests not
# marked slow), make lint (ruff, then mypy on src/stnrepro as pyproject's [tool.mypy] sets it),
# make clean.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# The lock is resolved as of this date, so `make lock` gives the same file until it moves.
LOCK_DATE := 2026-12-01T00:00:00Z
UV_VERSION := 0.13.9

.PHONY: demo demo-check table1 table1-check test test-fast test-slurm lint lock venv clean

venv: $(STAMP)

# The locked versions first (hash-checked), then the package itself without resolving again.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# The inner loop: lint, type-check and the tests not marked slow (no subprocess sweeps,
# SLURM, DDP, wheel).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -m "not slow"

# --- SLURM: the SLURM tests (tests/test_slurm.py) on a one-node cluster they start themselves.
# Needs root and `apt-get install slurm-wlm munge`; without them the tests skip saying why.
test-slurm: $(STAMP)
	$(PY) -m pytest -q -rs tests/test_slurm.py
# --- end SLURM

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

lock:
	test -x $(VENV)/bin/uv || { test -x $(PY) || $(PYTHON) -m venv $(VENV); $(PY) -m pip install -q uv==$(UV_VERSION); }
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.10 \
		--exclude-newer $(LOCK_DATE) --generate-hashes --custom-compile-command "make lock" \
		--quiet -o $(LOCK)

demo: $(STAMP)
	$(PY) -m stnrepro.train -m experiment=demo_table
	$(VENV)/bin/stn-table --runs "$$(ls -d logs/demo/multiruns/*/ | tail -n 1)" \
		--name demo_table --out results/ --with-attention

# The demo again from scratch in a temporary folder; fails when its table differs from the
# committed one (same locked versions, CPU model, capability and thread count: same table).
demo-check: $(STAMP)
	tmp="$$(mktemp -d)" && STNREPRO_ROOT="$$tmp" $(PY) -m stnrepro.train -m experiment=demo_table \
		&& $(VENV)/bin/stn-table --runs "$$tmp/logs/demo/multiruns" --name demo_table \
			--out "$$tmp/results" --with-attention \
		&& diff -u results/demo_table.csv "$$tmp/results/demo_table.csv" \
		&& echo "demo-check: $$tmp/results/demo_table.csv equals results/demo_table.csv"

# Table 1 on Fashion-MNIST (experiment fashion_mnist_table, Debian's dataset-fashion-mnist),
# the table into results/, and the sweep's wall time, date and CPU beside it.
T1_SWEEP := $(PY) -m stnrepro.train -m experiment=fashion_mnist_table
T1_TABLE := $(VENV)/bin/stn-table --name fashion_mnist_table --dataset fashion_mnist
T1_MACHINE := $$(date -u +%F), $$(nproc) cores, $$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)
table1: $(STAMP)
	start=$$(date +%s) && $(T1_SWEEP) \
		&& echo "sweep wall time: $$(( $$(date +%s) - start )) s on $(T1_MACHINE)" \
			> results/fashion_mnist_table_wall.txt
	$(T1_TABLE) --runs "$$(ls -d logs/fashion_mnist_table/multiruns/*/ | tail -n 1)" --out results/
	cat results/fashion_mnist_table_wall.txt

table1-check: $(STAMP)
	tmp="$$(mktemp -d)" && STNREPRO_ROOT="$$tmp" $(T1_SWEEP) \
		&& $(T1_TABLE) --runs "$$tmp/logs/fashion_mnist_table/multiruns" --out "$$tmp/results" \
		&& diff -u results/fashion_mnist_table.csv "$$tmp/results/fashion_mnist_table.csv" \
		&& echo "table1-check: $$tmp/results/fashion_mnist_table.csv equals results/fashion_mnist_table.csv"

clean:
	rm -rf $(VENV) logs outputs multirun wandb .pytest_cache .mypy_cache
