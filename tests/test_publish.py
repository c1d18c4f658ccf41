"""Publication is atomic for consumers: a run that dies at any moment leaves each partition as it was
or complete (a partition caught mid-swap has no _SUCCESS and is finished by the next run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from albert_batch import RunConfig, StorageError, run, storage
from albert_batch.pipeline import publish
from support import published_partitions, read_published, write_corpus


class Killed(BaseException):
    """Stands for the process dying: no except clause of ours catches it."""


def make_config(tmp_path: Path, models: dict[str, str], run_id: str, partition: str = "dt=2026-11-10") -> RunConfig:
    return RunConfig(input=str(tmp_path / "input"), output=str(tmp_path / "output"), run_id=run_id,
                     classifier_model=models["classifier"], ner_model=models["ner"], partition=[partition],
                     precision="fp32")


def state(out: Path, table: str, day: str = "2026-11-10") -> tuple[bool, set]:
    """(is the day's partition published?, run ids a consumer reads from it)"""
    rows = [r for r in read_published(out, table) if str(r["dt"]) == day]
    return (out / table / f"dt={day}" / "_SUCCESS").exists(), {r["run_id"] for r in rows}


def test_a_run_that_dies_mid_publication_is_finished_by_the_next_run(tmp_path, tiny_models, ray_cluster, monkeypatch):
    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/a.parquet", list(range(40)), ["old text"] * 39 + [None])
    run(make_config(tmp_path, tiny_models, "old"))
    write_corpus(tmp_path / "input/a.parquet", list(range(100, 130)), ["new text"] * 29 + [" "])

    real_write = storage.write_bytes

    def dying_write(loc, data):
        if loc.path.endswith("entities/dt=2026-11-10/_manifest.json"):
            raise Killed
        real_write(loc, data)

    monkeypatch.setattr(storage, "write_bytes", dying_write)
    with pytest.raises(Killed):
        run(make_config(tmp_path, tiny_models, "new"))
    monkeypatch.setattr(storage, "write_bytes", real_write)

    out = tmp_path / "output"
    assert state(out, "classifications") == (True, {"new"})   # complete, new
    assert state(out, "entities") == (False, set())           # mid-swap: hidden from consumers
    assert state(out, "rejects") == (True, {"old"})           # untouched, old
    assert (out / "_staging/dt=2026-11-10/_COMMIT.json").exists()

    # A run of another partition (it may run at the same time as a publication) leaves the commit alone.
    write_corpus(tmp_path / "input/a.parquet", [7], ["another day"])
    run(make_config(tmp_path, tiny_models, "other-day", partition="dt=2026-11-11"))
    assert state(out, "entities") == (False, set()) and (out / "_staging/dt=2026-11-10/_COMMIT.json").exists()

    # The next run of the partition finishes the committed publication first, then publishes its own.
    real_apply, applied = publish.apply_commit, []
    monkeypatch.setattr(publish, "apply_commit", lambda o, s, c: (applied.append(c["run_id"]), real_apply(o, s, c)))
    run(make_config(tmp_path, tiny_models, "later"))
    assert applied == ["new", "later"]
    for table in ("classifications", "entities", "rejects"):
        assert state(out, table) == (True, {"later"} if table != "rejects" else set())
    assert not (out / "_staging/dt=2026-11-10").exists()


def test_a_failed_publication_publishes_nothing_and_keeps_the_staged_work(tmp_path, tiny_models, ray_cluster, monkeypatch):
    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/a.parquet", [1, 2], ["one", "two"])

    def broken_publish(*args, **kwargs):
        raise publish.PublishError("the object store refused the commit")

    monkeypatch.setattr(publish, "publish", broken_publish)
    with pytest.raises(publish.PublishError, match="refused the commit"):
        run(make_config(tmp_path, tiny_models, "doomed"))
    out = tmp_path / "output"
    assert not published_partitions(out, "classifications")
    assert (out / "_staging/dt=2026-11-10/_run.json").exists(), "a failed publish keeps its staged work"


@pytest.mark.slow
def test_killing_the_process_at_any_point_leaves_no_partial_partition(tmp_path, tiny_models, ray_cluster):
    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/a.parquet", list(range(50)), [f"old document {i}" for i in range(49)] + [None])
    run(make_config(tmp_path, tiny_models, "old"))
    out = tmp_path / "output"
    before = {t: sorted(r["id"] for r in read_published(out, t)) for t in ("classifications", "entities", "rejects")}

    write_corpus(tmp_path / "input/a.parquet", list(range(1000, 4000)),
                 [f"Anna Schmidt visited Lisbon, number {i}." for i in range(3000)])
    command = [sys.executable, "-m", "albert_batch.cli", "run", "--input", str(tmp_path / "input"),
               "--output", str(out), "--classifier-model", tiny_models["classifier"],
               "--ner-model", tiny_models["ner"], "--partition", "dt=2026-11-10", "--run-id", "killed", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(command, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = out / "_staging/dt=2026-11-10"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not list(staging.rglob("*.parquet")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode in (-signal.SIGKILL, 0)

    # Each partition is the old one or the complete new one (should the run have won the race), never a mix.
    after = {"classifications": list(range(1000, 4000)), "entities": list(range(1000, 4000)), "rejects": []}
    for table, ids in before.items():
        published, run_ids = state(out, table)
        rows = sorted(r["id"] for r in read_published(out, table))
        if not published:  # caught mid-swap: hidden from consumers, and committed, so the next run finishes it
            assert (staging / "_COMMIT.json").exists() and not rows, table
            continue
        assert (rows, run_ids) in ((ids, {"old"}), (after[table], {"killed"} if after[table] else set())), table
    assert not published_partitions(out, "classifications")[1:], "no other partition appeared"

    # The next run of the partition (finishing the dead run's publication first, if it was committed)
    # leaves every table complete with its own rows and no others.
    write_corpus(tmp_path / "input/a.parquet", [1], ["again"])
    run(make_config(tmp_path, tiny_models, "next"))
    for table in ("classifications", "entities", "rejects"):
        published, _ = state(out, table)
        rows = sorted(r["id"] for r in read_published(out, table) if str(r["dt"]) == "2026-11-10")
        assert published and rows == ([] if table == "rejects" else [1]), table
    assert not (staging / "_COMMIT.json").exists()


def test_a_write_that_fails_is_reported_as_the_storage_error_it_was_and_publishes_nothing(
        tmp_path, tiny_models, ray_cluster):
    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/a.parquet", [1, 2], ["one", "two"])
    staging = tmp_path / "output/_staging/dt=2026-11-10"
    staging.mkdir(parents=True)
    (staging / "classifications").write_text("a file where the staged classifications go")
    with pytest.raises(StorageError) as failure:
        run(make_config(tmp_path, tiny_models, "blocked"))
    message = str(failure.value)
    assert message.startswith("run blocked failed while processing ") and ": writing " in message, message
    assert "non-directory entry exists" in message and "\n" not in message and 'File "' not in message, message
    assert not published_partitions(tmp_path / "output", "classifications")
