"""One DAG per YAML file in dags/configs/ (or in $ALBERT_BATCH_DAG_CONFIG_DIR): see
`albert_batch.airflow.dags` for what each DAG does and docs/airflow.md."""

import os
from pathlib import Path

from albert_batch.airflow.dags import dags_from_folder

CONFIG_DIR = os.environ.get("ALBERT_BATCH_DAG_CONFIG_DIR") or Path(__file__).parent / "configs"

globals().update(dags_from_folder(CONFIG_DIR))
