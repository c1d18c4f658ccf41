# The same commands README and CI use. Each target sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-iceberg test unit check airflow bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,airflow,iceberg,openlineage]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) pipelines/demo.py

demo-iceberg: $(STAMP)
	$(PY) pipelines/demo.py --iceberg

airflow: $(STAMP)
	$(PY) pipelines/airflow_local.py

bench: $(STAMP)
	$(PY) -m benchmarks.run

test: $(STAMP)
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest -m unit -q

check: $(STAMP)
	$(VENV)/bin/ruff check albert_batch pipelines tests dags infra benchmarks

clean:
	rm -rf $(VENV) .demo .pytest_cache
