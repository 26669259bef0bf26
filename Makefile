# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install, run the CPU demo sweep, print the table
#   make test   create .venv, install, run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src scripts tests
	$(VENV)/bin/ruff format --check src scripts tests

demo: $(STAMP)
	$(PY) -m stnrepro.train -m experiment=demo_table
	$(PY) scripts/make_table.py --runs "$$(ls -d logs/demo/multiruns/*/ | tail -n 1)" \
		--name demo_table --out results/ --with-attention

clean:
	rm -rf $(VENV) logs outputs multirun wandb .pytest_cache
