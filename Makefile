# `make run` and `make test` work on a fresh machine with Python 3.11 and make: they create .venv
# when missing and reinstall only when pyproject.toml changed.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
MLFLOW_PORT ?= 5000
DASHBOARD_PORT ?= 8080
# `make dashboard STUDY=optimizer DATASET=digits`: the journal file of that study.
STUDY ?= capacity
DATASET ?= digits

.PHONY: install run test test-slow test-all bench ui serve lint dashboard check-lock

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# dvc.yaml's commands say `python`: put the venv first on PATH so they use it.
run: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro
	$(PY) -m pipeline.evaluate --summary

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-all: $(STAMP)
	$(PY) -m pytest

# The committed dvc.lock must match the committed code and params (`dvc status`, data left out).
check-lock: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_dvc_lock.py

bench: $(STAMP)
	$(PY) benchmarks/bench_prepare.py
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_search.py

# mlflow starts its server (uvicorn) by name: the venv must be first on PATH.
ui: $(STAMP)
	@echo "MLflow UI on http://127.0.0.1:$(MLFLOW_PORT); open an experiment from the link"
	@echo "pipeline.search prints (…/runs?workflowType=machine_learning: the runs table)"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlruns/mlflow.db}" \
		--default-artifact-root mlruns/artifacts

# Serve the champion of the default dataset over HTTP on 127.0.0.1 (see README).
SERVE_MODEL ?= models:/pipeline-digits@champion
# The model's format is checked first (pt2 PyTorch only) and pickle stays off while it serves.
serve: $(STAMP)
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlruns/mlflow.db}" \
		$(PY) -m pipeline.predict --check-model "$(SERVE_MODEL)"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
		MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlruns/mlflow.db}" \
		MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false \
		$(VENV)/bin/mlflow models serve \
		-m $(SERVE_MODEL) --env-manager local --host 127.0.0.1 -p 5001

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests benchmarks
	$(VENV)/bin/mypy pipeline

# optuna-dashboard on 127.0.0.1 over the study's storage: $PIPELINE_STORAGE when set (a
# PostgreSQL study), else the local journal file (opened as it is, while searches append to it).
# The storage URL is read from the environment inside Python: on a command line `ps` would show
# its password to every local user.
dashboard: $(STAMP)
	@if [ -n "$${PIPELINE_STORAGE:-}" ]; then \
		$(PY) -c 'import os, optuna_dashboard; optuna_dashboard.run_server(os.environ["PIPELINE_STORAGE"], host="127.0.0.1", port=$(DASHBOARD_PORT))'; \
	else \
		$(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) \
			--storage-class JournalFileStorage studies/$(STUDY)-$(DATASET).journal; \
	fi
