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

# JupyterLab on the project kernel; refuses to start without the ipywidgets front end (the explorers need it)
lab: $(STAMP)
	@$(VENV)/bin/jupyter labextension list 2>&1 | grep -q "@jupyter-widgets/jupyterlab-manager v.*enabled.*OK" || { \
	  echo "error: the ipywidgets front-end extension @jupyter-widgets/jupyterlab-manager is missing or disabled;" \
	       "reinstall with $(PY) -m pip install -e '.[dev]' (it brings jupyterlab_widgets matching ipywidgets)" \
	       "or enable it: $(VENV)/bin/jupyter labextension enable @jupyter-widgets/jupyterlab-manager"; exit 2; }
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean-smoke:
	rm -rf outputs/smoke
