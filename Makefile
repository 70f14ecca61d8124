# Two commands on a fresh machine: `make run` and `make test`. Both build .venv from the pinned lock
# (requirements.lock) whenever it is missing or older than the lock or pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-from-lock
DATA   ?= data/sample
OUT    ?= reports/latest

.PHONY: run test test-fast lab bench lock docs sample refresh-notebooks clean help

help:
	@echo "make run    - ingest, model, flag and report on $(DATA) into $(OUT)"
	@echo "make test   - the whole test suite (unit, statistical, notebooks, browser)"
	@echo "make lab    - JupyterLab on notebooks/ with the project kernel"
	@echo "make bench  - benchmark figures (by hand; not part of CI)"
	@echo "make docs   - regenerate docs/ from the schema and feature dictionary"
	@echo "make lock   - re-pin requirements.lock from pyproject.toml"
	@echo "make refresh-notebooks - re-run notebooks/ in place after a reviewed change of results"

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required; set PYTHON=...")'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/cramp run --data $(DATA) --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist load

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -x -m "not slow"

# One kernel: the notebooks' kernelspec is "cramp" (this environment's Python, registered here) and
# JupyterLab offers only it, not a second "Python 3 (ipykernel)". Root (containers) needs --allow-root.
LAB_ARGS ?=
lab: $(STAMP)
	$(PY) -m ipykernel install --user --name cramp --display-name "Python (cramp)"
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks \
	  --KernelSpecManager.allowed_kernelspecs=cramp --MultiKernelManager.default_kernel_name=cramp \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run.py

docs: $(STAMP)
	$(VENV)/bin/cramp docs

sample: $(STAMP)
	$(VENV)/bin/cramp synth --out data/sample --subjects 200 --days 90 --seed 20261128

refresh-notebooks: $(STAMP)
	scripts/refresh-notebooks

lock:
	rm -rf /tmp/cramp-lock-venv && $(PYTHON) -m venv /tmp/cramp-lock-venv
	/tmp/cramp-lock-venv/bin/pip install --quiet --upgrade pip setuptools wheel
	/tmp/cramp-lock-venv/bin/pip install --quiet -e '.[test]'
	{ echo "# Pinned lock of every dependency (runtime + test). Regenerate with 'make lock'."; \
	  /tmp/cramp-lock-venv/bin/pip freeze --all --exclude-editable | grep -vE '^(pip|cramp-pipeline)=='; } > requirements.lock

clean:
	rm -rf $(VENV) reports/latest
