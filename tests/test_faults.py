"""Runs survive what a cluster does to them: killed actors and write tasks, lost nodes, an S3 that throttles
and fails. Each run is a real ``albert-batch run`` joining a real local Ray head (found and hurt through
Ray's state API), reading and writing a real S3 endpoint (moto) through a proxy that injects faults."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_batch.config import Precision
from albert_batch.contract import Task
from albert_batch.dev.local_ray import LocalRayHead, start_head
from albert_batch.dev.s3_proxy import FaultyProxy
from albert_batch.inference import models
from albert_batch.inference.predictors import build_predictor
from albert_batch.pipeline.validate import validate_partition
from albert_batch.pipeline.writer import WRITE_TASK
from support import SCORE_TOLERANCE, TRICKY_TEXTS, published_dataset

pytestmark = pytest.mark.slow

PARTITION = "dt=2026-11-20"
UNITS = 12  # row groups of the corpus: units of work of one row group each (see `cli_command`)
# Ray's own detection of a lost node, shortened for the test cluster (by default ~15 s: five 3 s checks).
FAST_NODE_LOSS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A fault-injecting proxy in front of moto, and a local head whose nodes (and our drivers) reach S3
    through it."""
    with FaultyProxy(s3_endpoint) as proxy:
        head = start_head(token=secrets.token_hex(16), log=tmp_path_factory.mktemp("ray") / "head.log",
                          extra_args=["--num-cpus=2"], env={"AWS_ENDPOINT_URL": proxy.endpoint, **FAST_NODE_LOSS})
        try:
            yield head, proxy
        finally:
            head.stop()


@pytest.fixture
def proxy(cluster: Any, s3_client: Any) -> FaultyProxy:
    """The proxy, forwarding everything at full speed, in front of a freshly reset S3."""
    _, proxy = cluster
    proxy.every, proxy.fail_all, proxy.delay = 0, False, lambda request: 0.0
    s3_client.create_dir("corpus")
    s3_client.create_dir("results")
    return proxy


def write_corpus(s3_client: Any, rows: int) -> None:
    """``s3://corpus/faults/``: ``rows`` rows in `UNITS` row groups."""
    texts = [f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} (row {i})" for i in range(rows)]
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "text": texts})
    with s3_client.open_output_stream("corpus/faults/part-0.parquet") as out:
        pq.write_table(table, out, row_group_size=rows // UNITS)


def slow_uploads(proxy: FaultyProxy, seconds: float) -> None:
    """Each upload of a data file takes ``seconds``, so that a write task is easy to catch running."""
    proxy.delay = lambda request: seconds if request.command in ("PUT", "POST") and "/part-" in request.path else 0.0


def cli_command(output: str, run_id: str, *extra: str, ray_address: str | None = None) -> list[str]:
    """``albert-batch run`` over the corpus, each of its 12 row groups a unit of work (the run's units are
    at most 16 MiB of row groups; set lower here, so that a small corpus has many)."""
    code = ("import sys; from albert_batch.pipeline import units; units.UNIT_BYTES = 1; "
            "from albert_batch.cli import main; sys.exit(main(sys.argv[1:]))")
    command = [sys.executable, "-c", code, "run", "--input", "s3://corpus/faults/", "--output", output,
               "--partition", PARTITION, "--run-id", run_id, "--precision", "fp32", "--batch-size", "200",
               "--rows-per-file", "1000", "-q", *extra]
    return command + (["--ray-address", ray_address] if ray_address else [])


def start_run(head: LocalRayHead, tiny_models: dict[str, str], output: str, run_id: str, *extra: str,
              summary: Path | None = None) -> subprocess.Popen:
    models = ["--classifier-model", tiny_models["classifier"], "--ner-model", tiny_models["ner"]]
    report = ["--summary-json", str(summary)] if summary else []
    return subprocess.Popen(cli_command(output, run_id, *models, *extra, *report, ray_address=head.gcs_address),
                            env=head.environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def staged_units(s3_client: Any, output: str) -> set[int]:
    """Units that have at least one piece staged."""
    found = s3_client.get_file_info(_pieces_selector(output))
    return {int(f.base_name[1:7]) for f in found if f.base_name.endswith(".json")}


def _pieces_selector(output: str) -> Any:
    import pyarrow.fs as pafs

    return pafs.FileSelector(f"{output.removeprefix('s3://')}/_staging/{PARTITION}/_pieces", allow_not_found=True)


def alive_actors(head: LocalRayHead, class_name: str) -> list[dict[str, Any]]:
    actors = head.get("/api/v0/actors?limit=1000&detail=1&filter_keys=state&filter_predicates=%3D"
                      "&filter_values=ALIVE")["data"]["result"]["result"]
    return [a for a in actors if class_name in a["class_name"] and a.get("pid")]


def tasks(head: LocalRayHead, name: str, state: str) -> list[dict[str, Any]]:
    found = head.get("/api/v0/tasks?limit=10000&detail=1&filter_keys=state&filter_predicates=%3D"
                     f"&filter_values={state}")["data"]["result"]["result"]
    return [t for t in found if t["name"] == name and t.get("worker_pid")]


def wait_until(done: Callable[[], bool], run: subprocess.Popen, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert run.poll() is None, f"the run ended before {what}: {run.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def one_line_error(stderr: str) -> str:
    """The error line a failed run ends its output with; no traceback comes before it (warnings may)."""
    assert "Traceback" not in stderr and 'File "' not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def published_rows(s3_client: Any, output: str, table: str) -> list[dict[str, Any]]:
    return published_dataset(s3_client, output.removeprefix("s3://"), table).to_pylist()


def test_killed_actors_and_a_killed_write_task_cost_time_not_rows(cluster, proxy, s3_client, tiny_models):
    """SIGKILL, by pid, of the tokenizer actor (a run laid out as on GPUs, with a tokenizer stage of its own),
    the model actor and a write task in the middle of its upload: Ray restarts the actors and retries their
    tasks and the write; every row is published exactly once, and no file of a write that died is published."""
    head, _ = cluster
    rows = 12_000  # 60 model batches: the model stage is still busy when its actor is killed
    write_corpus(s3_client, rows)
    slow_uploads(proxy, 0.3)
    output = "s3://results/killed-workers"
    run = start_run(head, tiny_models, output, "kills", "--tokenizer-actors", "1")
    killed: dict[str, int] = {}

    def kill(what: str, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        killed[what] = pid

    tokenized = "MapWorker(MapBatches(TokenizeStage)).submit"
    wait_until(lambda: len(tasks(head, tokenized, "FINISHED")) >= 2, run, "the tokenizer did two batches")
    kill("tokenizer actor", alive_actors(head, "MapBatches(TokenizeStage)")[0]["pid"])
    modelled = "MapWorker(MapBatches(ModelStage)).submit"
    wait_until(lambda: len(tasks(head, modelled, "FINISHED")) >= 5, run, "the model did five batches")
    kill("model actor", alive_actors(head, "MapBatches(ModelStage)")[0]["pid"])
    wait_until(lambda: bool(tasks(head, WRITE_TASK, "RUNNING")), run, "a write task was running")
    kill("write task", tasks(head, WRITE_TASK, "RUNNING")[0]["worker_pid"])
    _, err = run.communicate(timeout=300)

    assert run.returncode == 0, err
    assert set(killed) == {"tokenizer actor", "model actor", "write task"}
    for table in ("classifications", "entities"):
        ids = [r["id"] for r in published_rows(s3_client, output, table)]
        assert sorted(ids) == list(range(rows)), f"{table}: every row exactly once"
    summary = validate_partition(output, PARTITION, ["classify", "ner"], run_id="kills")  # files == manifest
    assert summary.input_rows == rows and summary.rejected_rows == 0


def test_a_lost_model_node_fails_the_run_in_bounded_time_and_a_replaced_one_lets_it_finish(
        cluster, proxy, s3_client, tiny_models, tmp_path):
    """Model actors run only on nodes that offer a ``model_node`` resource (with two CPUs, room for the
    tokenizer actor too, wherever Ray places it). Losing the only such node, a
    run waits ``--wait-for-nodes-s`` seconds for another, then fails with one line and keeps its staged work.
    The next run resumes that work; it loses its node too, but a replacement joins within its wait, and it
    finishes."""
    head, _ = cluster
    rows = 6000
    write_corpus(s3_client, rows)
    slow_uploads(proxy, 0.1)
    output = "s3://results/lost-node"
    placement = ["--model-actor-resources", "model_node=1", "--num-cpus-per-actor", "1"]
    node = head.add_node(log=tmp_path / "node-1.log", resources={"model_node": 1}, num_cpus=2)

    first = start_run(head, tiny_models, output, "first", *placement, "--wait-for-nodes-s", "5")
    modelled = "MapWorker(MapBatches(ModelStage)).submit"
    wait_until(lambda: len(staged_units(s3_client, output)) >= 1, first, "a unit was staged")
    node.stop(crash=True)
    _, err = first.communicate(timeout=180)
    assert first.returncode == 1, err
    assert "no node of the cluster could host a model actor (it needs {'CPU': 1.0, 'model_node': 1.0})" in err
    assert "the next run of the partition resumes it" in err and one_line_error(err), err
    assert not published_rows(s3_client, output, "classifications"), "nothing was published"
    staged_by_first = staged_units(s3_client, output)

    node = head.add_node(log=tmp_path / "node-2.log", resources={"model_node": 1}, num_cpus=2)
    report = tmp_path / "summary.json"
    # Long enough for a replacement node to start on a busy machine (starting one takes seconds, more under load).
    second = start_run(head, tiny_models, output, "second", *placement, "--wait-for-nodes-s", "120", summary=report)
    done_before = len(tasks(head, modelled, "FINISHED"))
    wait_until(lambda: len(tasks(head, modelled, "FINISHED")) > done_before, second, "the next run's model did a batch")
    node.stop(crash=True)
    replacement = head.add_node(log=tmp_path / "node-3.log", resources={"model_node": 1}, num_cpus=2)
    try:
        _, err = second.communicate(timeout=300)
    finally:
        replacement.stop()
    assert second.returncode == 0, err
    units = json.loads(report.read_text())["units"]
    assert units["total"] == UNITS and units["reused_from_runs"] == ["first"]
    assert 1 <= units["reused"] <= len(staged_by_first), (units, staged_by_first)
    assert sorted(r["id"] for r in published_rows(s3_client, output, "classifications")) == list(range(rows))


def test_an_s3_that_throttles_and_fails_gives_a_clean_run_s_results_and_counts_its_retries(
        cluster, proxy, s3_client, tiny_models, tmp_path):
    """One request in seven answered 503 SlowDown, 500 InternalError or a dropped connection: the run
    retries and publishes what the models give for the texts (the predictors called directly, as a healthy
    run publishes them), and says how many operations it retried. A store that fails every request for
    longer than the retry budget fails the run in one line, with nothing published."""
    head, _ = cluster
    rows = 2400
    write_corpus(s3_client, rows)
    proxy.every = 7
    report = tmp_path / "summary.json"
    faulty = start_run(head, tiny_models, "s3://results/faulty", "faulty", summary=report)
    _, err = faulty.communicate(timeout=300)
    assert faulty.returncode == 0, err
    assert sum(proxy.injected.values()) >= 10, proxy.injected
    retries = json.loads(report.read_text())["storage_retries"]
    assert sum(retries.values()) >= 3 and set(retries) <= {"throttled", "server error", "connection", "timeout"}

    texts = [f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} (row {i})" for i in range(rows)]
    classify, tag = (build_predictor(models.inspect(tiny_models[name], task), precision=Precision.FP32)
                     for name, task in (("classifier", Task.CLASSIFY), ("ner", Task.NER)))
    labels, entities = classify(texts), tag(texts)
    got = {r["id"]: r for r in published_rows(s3_client, "s3://results/faulty", "classifications")}
    assert sorted(got) == list(range(rows))
    for i, want in enumerate(labels):
        assert got[i]["label"] == want["label"] and abs(got[i]["score"] - want["score"]) <= SCORE_TOLERANCE
    got_entities = {r["id"]: r["entities"] for r in published_rows(s3_client, "s3://results/faulty", "entities")}
    assert all([(e["label"], e["start"], e["end"]) for e in got_entities[i]]
               == [(e["label"], e["start"], e["end"]) for e in want["entities"]] for i, want in enumerate(entities))

    proxy.every = 0
    slow_uploads(proxy, 0.1)
    down = start_run(head, tiny_models, "s3://results/down", "down")
    wait_until(lambda: len(staged_units(s3_client, "s3://results/down")) >= 1, down, "a unit was staged")
    proxy.fail_all = True
    try:
        _, err = down.communicate(timeout=300)
    finally:
        proxy.fail_all = False
    assert down.returncode == 1, err
    assert "gave up after 6 attempts" in err and one_line_error(err).startswith("albert-batch: run failed: "), err
    assert not published_rows(s3_client, "s3://results/down", "classifications")
