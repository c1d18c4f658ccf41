"""`make airflow`: a local Airflow 3 (standalone, SQLite) and a local Ray head (loopback, token
authentication), with a demo DAG that catches up on the last three days of a generated corpus.

Everything lives under .demo/airflow/. Ctrl-C stops both. The demo models come from `make demo`'s
cache (.demo/models; trained here on first use, about five minutes on two cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"
HERE = DEMO / "airflow"
BIN = Path(sys.executable).parent
DAYS = 3
DOCS_PER_DAY = 300
DAG_CONFIG = """\
# Written by `make airflow`: the demo corpus, one partition a day, caught up from {start}.
dag_id: albert_batch_demo
description: Demo corpus (generated) - sentiment and entities, one partition per day
schedule: "@daily"
start_date: {start}
catchup: true
max_active_runs: 1
input: {corpus}/dt={{{{ ds }}}}/
output: {output}
tasks: [classify, ner]
classifier_model: {models}/classify
ner_model: {models}/ner
connections: {{ray: ray_default, aws: aws_default}}
job: {{timeout_hours: 1, poll_seconds: 5}}
wait_for_input: {{timeout_hours: 1, poke_seconds: 30, marker: _SUCCESS}}
retries: 1
retry_delay_minutes: 1
"""


def prepare(today: dt.date) -> Path:
    """Demo models, a corpus partition for each of the last DAYS days, and the DAG config folder."""
    from albert_batch.dev import corpus

    models = DEMO / "models"
    if not all((models / task / "training_report.json").exists() for task in ("classify", "ner")):
        import ray

        from pipelines.demo import build_models

        ray.init(include_dashboard=False, log_to_driver=False)
        build_models(models)
        ray.shutdown()
    start = today - dt.timedelta(days=DAYS - 1)
    for i in range(DAYS):
        day = start + dt.timedelta(days=i)
        folder = HERE / "corpus" / f"dt={day.isoformat()}"
        if not (folder / "_SUCCESS").exists():
            corpus.write_corpus(folder, corpus.generate(DOCS_PER_DAY, seed=100 + i, split="inference"))
            (folder / "_SUCCESS").touch()  # what a producer writes last
    configs = HERE / "dag-configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / "demo.yaml").write_text(DAG_CONFIG.format(start=start.isoformat(), corpus=HERE / "corpus",
                                                         output=HERE / "results", models=models))
    return configs


def main(argv: list[str] | None = None) -> int:
    from albert_batch.dev.local_ray import start_head, stop_process_group

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-port", type=int, default=8080)
    parser.add_argument("--ray-dashboard-port", type=int, default=8265)
    parser.add_argument("--reset", action="store_true", help="start from scratch (drops .demo/airflow)")
    args = parser.parse_args(argv)
    if args.reset:
        shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir(parents=True, exist_ok=True)
    configs = prepare(dt.datetime.now(dt.UTC).date())

    token_file = HERE / "ray-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_hex(16))
        token_file.chmod(0o600)
    token = token_file.read_text().strip()
    try:
        ray_head = start_head(token=token, dashboard_port=args.ray_dashboard_port, log=HERE / "ray-head.log")
    except RuntimeError as err:
        sys.exit(str(err))
    home = HERE / "airflow-home"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(args.airflow_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{args.airflow_port}/execution/",
        "ALBERT_BATCH_DAG_CONFIG_DIR": str(configs),
        "AIRFLOW_CONN_RAY_DEFAULT": json.dumps({"conn_type": "ray", "host": f"http://127.0.0.1:{args.ray_dashboard_port}",
                                                "password": token}),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    print(f"""
albert-batch local stack
  Ray dashboard  http://127.0.0.1:{args.ray_dashboard_port}   (token: {token_file})
  Airflow UI     http://127.0.0.1:{args.airflow_port}   (user admin; password in {home}/simple_auth_manager_passwords.json.generated)
  DAG            albert_batch_demo: catches up on {DAYS} days of {HERE / 'corpus'}
  Results        {HERE / 'results'}/{{classifications,entities,rejects}}/dt=YYYY-MM-DD/
Starting Airflow (standalone); Ctrl-C stops Airflow and Ray.
""", flush=True)
    airflow = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, start_new_session=True)
    try:
        return airflow.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process_group(airflow)
        ray_head.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
