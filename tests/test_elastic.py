"""Elastic clusters: a run on a cluster whose autoscaler adds the nodes its model actors need (none at the
start), and a run whose model actor's node is drained for preemption, as a spot notice does, then lost:
each finishes with exactly a clean run's rows."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from albert_batch import RunConfig, run
from albert_batch.dev.local_ray import LocalRayHead, start_autoscaling_head, start_head
from support import SCORE_TOLERANCE, TRICKY_TEXTS, read_published, write_corpus

pytestmark = pytest.mark.slow
PARTITION = "dt=2026-12-02"
ROWS = 4000  # enough that a run on one CPU takes many seconds of batches: time to drain its node mid-run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("elastic") / "input"
    root.mkdir()
    texts = [f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} Item {i} of the catalogue, reviewed twice." for i in range(ROWS)]
    texts[7] = None
    write_corpus(root / "part.parquet", list(range(len(texts))), texts)
    return root


@pytest.fixture(scope="module")
def clean(corpus: Path, tiny_models: dict[str, str], ray_cluster: Any) -> dict[Any, Any]:
    """What a consumer reads of a clean run of the corpus (classification only) on a fixed local Ray."""
    output = corpus.parent / "clean"
    run(RunConfig(input=str(corpus), output=str(output), tasks=["classify"], classifier_model=tiny_models["classifier"],
                  partition=[PARTITION], precision="fp32", run_id="clean"))
    return results(output)


def results(output: Path) -> dict[str, dict[Any, Any]]:
    return {"classifications": {r["id"]: (r["label"], r["score"]) for r in read_published(output, "classifications")},
            "rejects": {r["id"]: r["reason"] for r in read_published(output, "rejects")}}


def assert_same_rows(got: dict[str, dict[Any, Any]], want: dict[str, dict[Any, Any]]) -> None:
    """Every row once, with the clean run's label and (fp32, from differently composed batches) its score."""
    assert got["rejects"] == want["rejects"]
    assert got["classifications"].keys() == want["classifications"].keys()
    for row, (label, score) in want["classifications"].items():
        assert got["classifications"][row][0] == label
        assert got["classifications"][row][1] == pytest.approx(score, abs=SCORE_TOLERANCE)


def start_run(head: LocalRayHead, corpus: Path, output: Path, models: dict[str, str], *options: str) -> subprocess.Popen:
    """``albert-batch run`` on ``head``'s cluster, its model actors on nodes that offer ``model_node``."""
    return subprocess.Popen(
        [sys.executable, "-m", "albert_batch.cli", "run", "--input", str(corpus), "--output", str(output),
         "--tasks", "classify", "--classifier-model", models["classifier"], "--partition", PARTITION,
         "--precision", "fp32", "--model-actor-resources", "model_node=1", "--summary-json", str(output) + ".json",
         "--batch-size", "50", *options],
        env={**head.environment(), "RAY_ADDRESS": head.gcs_address}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def model_actor(head: LocalRayHead) -> dict[str, Any] | None:
    """The run's model actor, once alive, from Ray's state API."""
    actors = head.get("/api/v0/actors?detail=1&limit=1000")["data"]["result"]["result"]
    return next((a for a in actors if "ModelStage" in a["class_name"] and a["state"] == "ALIVE"), None)


def test_a_run_on_an_autoscaling_cluster_asks_for_its_model_nodes_and_grows_its_actors_as_they_join(
        corpus, clean, tiny_models, tmp_path):
    """A head of one CPU that cannot host a model actor, and a worker type of two CPUs that can (model_node),
    none started, at most two: the run with ``--model-actors 1..2`` asks the autoscaler for a model node,
    sizes its actors for that node (not for the head), starts, and may grow to two actors as a second node
    joins; it publishes exactly a clean run's rows, and its summary says how many actors it reached."""
    head = start_autoscaling_head(token=secrets.token_hex(16), log=tmp_path / "head.log", head_cpus=1,
                                  worker_types={"model": {"CPU": 2, "model_node": 1}}, max_workers=2)
    try:
        output = tmp_path / "output"
        process = start_run(head, corpus, output, tiny_models, "--model-actors", "1..2", "--wait-for-nodes-s", "180")
        shown, _ = process.communicate(timeout=600)
        assert process.returncode == 0, shown
        assert "waiting up to 180s for the autoscaler to add one" in shown
        summary = json.loads(Path(str(output) + ".json").read_text())
        stages, actors = summary["stages"], summary["cost"]["model_actors"]
        assert (stages["model_actors"], stages["max_model_actors"]) == (1, 2)
        assert (stages["cpus_per_model_actor"], stages["torch_threads"]) == (1.0, 2), "sized for a 2-CPU model node"
        assert 1 <= actors["min"] <= actors["max"] <= 2 and actors["max"] <= actors["count"]
        assert actors["over_time"][0] == [0, 1] and actors["over_time"][-1][1] == 0
        model_nodes = [n for n in head._alive_nodes() if n["resources_total"].get("model_node")]
        assert 1 <= len(model_nodes) <= 2, "the autoscaler started model nodes, within its limit"
        assert_same_rows(results(output), clean)
    finally:
        head.stop()


def test_a_model_node_drained_for_preemption_mid_run_costs_only_its_work_in_flight(corpus, clean, tiny_models, tmp_path):
    """Two model nodes; the one running the model actor gets a preemption notice (Ray's drain API, a short
    deadline) mid-run and is then lost, as a reclaimed spot instance is: Ray Data stops handing it batches,
    the actor starts again on the other node, the batches in flight are retried there, and the run exits 0
    with every row exactly once."""
    head = start_head(token=secrets.token_hex(16), log=tmp_path / "head.log", extra_args=["--num-cpus=2"])
    nodes = [head.add_node(log=tmp_path / f"node-{n}.log", resources={"model_node": 1}, num_cpus=1) for n in range(2)]
    try:
        output = tmp_path / "output"
        process = start_run(head, corpus, output, tiny_models, "--model-actors", "1", "--run-id", "drained")
        deadline = time.monotonic() + 300
        while not (actor := model_actor(head)):
            assert process.poll() is None, f"the run ended before its model actor was seen: {process.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(2)  # its model loaded, batches in flight
        drained = next(n for n in nodes if n.node_id == actor["node_id"])
        head.drain(drained.node_id, deadline_s=2)
        time.sleep(2)
        assert process.poll() is None, "the run was still going when its node went"
        drained.stop(crash=True)
        shown, _ = process.communicate(timeout=600)
        assert process.returncode == 0, shown
        after = next(a for a in head.get("/api/v0/actors?detail=1&limit=1000")["data"]["result"]["result"]
                     if a["actor_id"] == actor["actor_id"])
        assert int(after["num_restarts"]) >= 1, "the model actor started again on the other node"
        assert_same_rows(results(output), clean)
    finally:
        for node in nodes:
            node.stop()
        head.stop()
