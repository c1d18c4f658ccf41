"""A run that stops — killed, or asked to stop — leaves its staged work usable: the next run of the partition
reuses every unit of work that was done and publishes exactly the rows of a clean run; anything that
changes the results starts afresh."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_batch import RunConfig, run
from albert_batch.pipeline import units
from support import SCORE_TOLERANCE, TRICKY_TEXTS, published_partitions, read_published

pytestmark = pytest.mark.slow

PARTITION = "dt=2026-11-21"
UNITS = 12
ROWS = 3000
FILES = 300  # of 10 rows each, 25 to a unit of work (see `small_units`)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """300 small files: 12 units of work of 25 files each (see `small_units`)."""
    texts = [f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} (row {i})" for i in range(ROWS)]
    table = pa.table({"id": pa.array(range(ROWS), pa.int64()), "text": texts})
    (tmp_path / "input").mkdir()
    per_file = ROWS // FILES
    for number in range(FILES):
        pq.write_table(table.slice(number * per_file, per_file), tmp_path / f"input/part-{number:03d}.parquet")
    return tmp_path / "input"


@pytest.fixture
def small_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit of work is at most 16 MiB of row groups of at most 1,000 files; here 25 files, so that a small
    corpus of small files has many units, each of several files."""
    monkeypatch.setattr(units, "UNIT_FILES", FILES // UNITS)


def settings(corpus: Path, output: Path, models: dict[str, str], run_id: str) -> dict[str, Any]:
    return {"input": str(corpus), "output": str(output), "classifier_model": models["classifier"],
            "ner_model": models["ner"], "partition": [PARTITION], "precision": "fp32", "run_id": run_id,
            "resources": {"batch_size": 100}}


def start_cli(options: dict[str, Any]) -> subprocess.Popen:
    """``albert-batch run`` with these settings, in a process of its own (with its own embedded Ray), with the
    same small units of work."""
    from albert_batch.cli import run_argv

    code = (f"import sys; from albert_batch.pipeline import units; units.UNIT_FILES = {FILES // UNITS}; "
            "from albert_batch.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = run_argv(RunConfig(**options))[2:]
    return subprocess.Popen([sys.executable, "-c", code, "run", "-q", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def done_units(output: Path) -> set[int]:
    """Units whose staged pieces hold all their rows (each piece's rows counted once: no retries here)."""
    rows: dict[int, int] = {}
    for record in (output / "_staging" / PARTITION / "_pieces").glob("*.json"):
        piece = json.loads(record.read_text())
        rows[piece["unit"]] = rows.get(piece["unit"], 0) + sum(b - a for a, b in piece["ranges"])
    return {unit for unit, count in rows.items() if count == ROWS // UNITS}


def wait_for(check: Any, process: subprocess.Popen, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert process.poll() is None, f"the run ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def results(output: Path) -> dict[str, dict[Any, Any]]:
    """What a consumer reads, per table: id -> the row's results (not its run id or time; entity scores,
    like all fp32 scores from differently composed batches, only within SCORE_TOLERANCE, see `support`)."""
    return {
        "classifications": {r["id"]: (r["label"], r["score"]) for r in read_published(output, "classifications")},
        "entities": {r["id"]: [(e["label"], e["text"], e["start"], e["end"]) for e in r["entities"]]
                     for r in read_published(output, "entities")},
    }


def test_a_killed_run_is_resumed_and_the_next_run_publishes_exactly_a_clean_run_s_rows(
        tmp_path, corpus, tiny_models, ray_cluster, small_units):
    output = tmp_path / "output"
    killed = start_cli(settings(corpus, output, tiny_models, "killed"))
    wait_for(lambda: len(done_units(output)) >= UNITS // 2, killed, "half the units were staged")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    time.sleep(3)  # its embedded Ray's workers go with it (Ray's reaper); let any last write land
    staged = done_units(output)
    assert UNITS // 2 <= len(staged) < UNITS, staged
    assert not published_partitions(output, "classifications")

    summary = run(RunConfig(**settings(corpus, output, tiny_models, "resumed")))
    assert summary.units == {"total": UNITS, "reused": len(staged), "reused_from_runs": ["killed"], "earlier": {
        "run_id": "killed", "where": "staged", "files": {"unchanged": FILES, "new": 0, "changed": 0, "gone": 0}}}
    assert summary.input_rows == ROWS and summary.accepted_rows == ROWS

    clean = tmp_path / "clean"
    run(RunConfig(**settings(corpus, clean, tiny_models, "clean")))
    got, want = results(output), results(clean)
    assert sorted(r["id"] for r in read_published(output, "classifications")) == list(range(ROWS)), "each row once"
    assert got["entities"] == want["entities"]
    for row_id, (label, score) in want["classifications"].items():
        assert got["classifications"][row_id][0] == label
        assert got["classifications"][row_id][1] == pytest.approx(score, abs=SCORE_TOLERANCE)
    reused_rows = [r for r in read_published(output, "classifications") if r["run_id"] == "killed"]
    assert len(reused_rows) == len(staged) * (ROWS // UNITS), "rows keep the run id of the run that computed them"
    for table in ("classifications", "entities", "rejects"):  # the pieces of both runs, merged
        files = [p.name for p in (output / table / PARTITION).iterdir() if not p.name.startswith("_")]
        assert len(files) == 1, (table, files)


def test_sigterm_stops_a_run_within_seconds_and_a_run_with_other_settings_does_not_reuse_its_work(
        tmp_path, corpus, tiny_models, ray_cluster, small_units, caplog):
    """SIGTERM stops a run in seconds: nothing published, its work staged and said so. Work staged with a
    setting that changes results (here the NER windows' overlap; or another model, or other input files)
    is not reused by the next run: it starts afresh, and says why."""
    output = tmp_path / "output"
    first = settings(corpus, output, tiny_models, "stopped")
    stopped = start_cli({**first, "resources": {**first["resources"], "ner_window_overlap": 64}})
    wait_for(lambda: len(done_units(output)) >= 2, stopped, "two units were staged")
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=60)  # it stops in seconds; a minute is only a bound for a hung run

    assert stopped.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("albert-batch: stopped by SIGTERM: nothing was published; "), err
    assert f"units are staged in {output}/_staging/{PARTITION}, and the next run of partition {PARTITION} " \
           "resumes from them" in last
    assert "Traceback" not in err
    assert not published_partitions(output, "classifications")
    assert len(done_units(output)) >= 2 and (output / "_staging" / PARTITION / "_run.json").exists()

    summary = run(RunConfig(**settings(corpus, output, tiny_models, "this-run")))
    assert summary.units["reused"] == 0
    assert "starting afresh: the work run stopped staged for this partition cannot be reused, because " \
           "ner_window_overlap changed from 64 to 128" in caplog.text
    assert {r["run_id"] for r in read_published(output, "classifications")} == {"this-run"}


def test_sigterm_stops_a_run_that_waits_for_its_model_actors(tmp_path, corpus, tiny_models):
    """A run whose model actor waits for a resource that another actor holds (a node can host it, once the
    resource is free) is stopped by SIGTERM within seconds, like a run that processes."""
    output = tmp_path / "output"
    argv = ["run", "-q", "--input", str(corpus), "--output", str(output), "--classifier-model",
            tiny_models["classifier"], "--ner-model", tiny_models["ner"], "--model-actor-resources", "slot=1"]
    code = ("import sys, ray\n"
            "from albert_batch.pipeline.cluster import start_embedded_ray\n"
            "start_embedded_ray(num_cpus=2, resources={'slot': 1})\n"
            "holder = ray.remote(resources={'slot': 1}, num_cpus=0)(type('Holder', (), {'ping': lambda self: 1}))\n"
            "held = holder.remote(); ray.get(held.ping.remote())\n"
            "print('holding', flush=True)\n"
            "from albert_batch.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    waiting = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    assert waiting.stdout.readline().strip() == "holding"
    wait_for(lambda: (output / "_staging" / PARTITION).exists() or any(output.glob("_staging/*/_run.json")),
             waiting, "the run prepared its staging folder")
    time.sleep(5)  # it now waits for its model actor
    sent = time.monotonic()
    waiting.send_signal(signal.SIGTERM)
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 143, err
    assert time.monotonic() - sent < 20, "within seconds (a bound for a busy machine)"
    assert "stopped by SIGTERM: nothing was published; 0 of 1 units are staged" in err.strip().splitlines()[-1]
