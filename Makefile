# The two contract commands are `make workbook` and `make test`; both bootstrap .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KERNEL := irra-workbook
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg
export IRRA_KERNEL := $(KERNEL)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup workbook test lab clean-smoke

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (irra-workbook)" >/dev/null
	if git rev-parse --git-dir >/dev/null 2>&1; then \
	  $(VENV)/bin/nbstripout --install && \
	  git config filter.nbstripout.extrakeys "metadata.papermill cell.metadata.papermill cell.metadata.execution metadata.widgets"; \
	fi
	touch $(STAMP)

workbook: $(STAMP)
	$(PY) -m irra_core.pipeline $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean-smoke:
	rm -rf outputs/smoke
