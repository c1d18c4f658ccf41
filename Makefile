# The same commands README and CI use. Each target sets up .venv on first use, from the lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# The lock: every package of the project's environment (CPython 3.11, Linux x86_64), pinned with hashes.
# requirements.lock has the CPU build of torch; requirements-gpu.lock has PyPI's CUDA build and, for every
# other package, the same pins. `make test VARIANT=gpu` (or any target) installs the GPU lock instead.
VARIANT ?= cpu
LOCK := $(if $(filter gpu,$(VARIANT)),requirements-gpu.lock,requirements.lock)
STAMP := $(VENV)/.installed-$(VARIANT)
# PyPI's torch for Linux is the CUDA build; the CPU build lives on PyTorch's own index. Where a machine keeps
# its wheels on disk for pip (PIP_FIND_LINKS), pip finds it there and the index is not asked.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SOURCE := $(if $(or $(filter gpu,$(VARIANT)),$(PIP_FIND_LINKS)),,--extra-index-url $(TORCH_CPU_INDEX))

# The tool that writes the lock, itself pinned: a new resolver may resolve the same ranges differently.
LOCK_TOOLS := .cache/lock-tools
LOCK_TOOL_PIN := uv==0.13.9
COMPILE := $(LOCK_TOOLS)/bin/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--extra test --extra airflow --extra iceberg --extra openlineage --extra docs -c constraints.txt
# Where the lock finds the CPU build, as above (uv reads no pip settings; best match across indexes, so
# torch's +cpu build wins over PyPI's CUDA build of the same version).
TORCH_CPU_FOR_LOCK := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url $(TORCH_CPU_INDEX) --index-strategy unsafe-best-match)

.PHONY: demo demo-iceberg monitor test unit check airflow bench docs lock lock-upgrade clean

# A new lock makes a new environment: nothing installed outside the lock survives. --no-deps: the lock
# names every package, so pip resolves nothing; --require-hashes: what it installs is what was locked.
$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps $(TORCH_SOURCE) -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) pipelines/demo.py

demo-iceberg: $(STAMP)
	$(PY) pipelines/demo.py --iceberg

# The demo's run on a local Ray head that exports its metrics, scraped by a local Prometheus (Debian's package,
# installed when missing where this user may); prints the URL and queries to try, and runs until Ctrl-C.
monitor: $(STAMP)
	$(PY) pipelines/monitor.py

airflow: $(STAMP)
	$(PY) pipelines/airflow_local.py

bench: $(STAMP)
	$(PY) -m benchmarks.run

# The documentation site (mkdocs.yml, docs/) on 127.0.0.1:8000, rebuilt as you edit.
docs: $(STAMP)
	$(PY) -m mkdocs serve

# The suite runs two test files at a time (pytest-xdist): each worker takes the next whole file, so that a file's
# module fixtures start once, the longest first (tests/durations.json), so that the last to finish are quick.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

unit: $(STAMP)
	$(PY) -m pytest -m unit -q

check: $(STAMP)
	$(VENV)/bin/ruff check albert_batch pipelines tests dags infra benchmarks docs

$(LOCK_TOOLS)/.installed:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet $(LOCK_TOOL_PIN)
	touch $@

# Re-resolve after pyproject.toml or constraints.txt changed, keeping every pin that still fits (seconds).
# The GPU lock takes the CPU lock's pins for every package they share, and PyPI's (CUDA) build of torch.
lock: $(LOCK_TOOLS)/.installed
	$(COMPILE) $(UPGRADE) $(TORCH_CPU_FOR_LOCK) -o requirements.lock pyproject.toml
	grep -E '^[A-Za-z0-9._-]+==' requirements.lock | grep -v '^torch==' | sed 's/ .*//' > $(LOCK_TOOLS)/cpu-pins.txt
	env -u PIP_FIND_LINKS $(COMPILE) $(UPGRADE) -c $(LOCK_TOOLS)/cpu-pins.txt -o requirements-gpu.lock pyproject.toml

# Every package to its newest release that pyproject.toml allows; then `make test` before committing.
lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

clean:
	rm -rf $(VENV) .demo .pytest_cache $(LOCK_TOOLS)
