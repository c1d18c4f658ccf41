# syntax=docker/dockerfile:1
# The Airflow image: the official Airflow image plus albert-batch with its `airflow` extra (the operators
# and hooks that submit runs to a Ray cluster). DAG files are not baked in: compose mounts dags/, and the
# Helm chart syncs them with git-sync (infra/k8s/airflow-values.yaml).
#
#   docker build -f infra/airflow.Dockerfile -t albert-batch-airflow:0.1.0 .
#
# A separate file rather than a target of infra/Dockerfile: the two images share no layer, base, user or
# Python environment, and each builds without the other's arguments.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
# Airflow only submits and watches runs, so it takes the CPU lock (the small CPU build of torch).
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu

# The base image's user (airflow, uid 50000, gid 0); packages go to its user site, as the image expects.
USER 50000:0
# Made by that user: a folder WORKDIR creates belongs to root, and building the wheel writes in it.
RUN mkdir /home/airflow/albert-batch
WORKDIR /home/airflow/albert-batch

COPY --chown=50000:0 requirements.lock ./

# Every package exactly as locked, with its hashes: the environment the test suite ran, Airflow at the
# image's own version included (tests/test_infra.py checks that they agree).
RUN pip install --no-cache-dir --require-hashes --no-deps --extra-index-url "$TORCH_CPU_INDEX_URL" -r requirements.lock

COPY --chown=50000:0 pyproject.toml README.md ./
COPY --chown=50000:0 albert_batch ./albert_batch
RUN pip install --no-cache-dir --no-deps --no-build-isolation ".[airflow]" && \
    python -c "import airflow, albert_batch.airflow; assert airflow.__version__ == '$AIRFLOW_VERSION', airflow.__version__"
