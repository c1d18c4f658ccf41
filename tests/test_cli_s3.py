"""`albert-batch run` as users call it — a real process with its own embedded Ray — against a real S3
endpoint: S3 in, S3 out, a model from an S3 prefix, a YAML config with flags on top; no secret leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from support import FAKE_SECRET, TRICKY_TEXTS, published_dataset


def upload_folder(fs: pafs.S3FileSystem, folder: str, prefix: str) -> None:
    for path in Path(folder).iterdir():
        with fs.open_output_stream(f"{prefix}/{path.name}") as out:
            out.write(path.read_bytes())


@pytest.mark.slow
def test_the_cli_runs_s3_to_s3_and_never_prints_or_writes_a_secret(tmp_path, tiny_models, s3_client):
    fs = s3_client
    for bucket in ("corpus", "results", "models"):
        fs.create_dir(bucket)
    texts = [*TRICKY_TEXTS, None, "   "]
    for i, chunk in enumerate((texts[:7], texts[7:])):
        start = 0 if i == 0 else 7
        table = pa.table({"id": pa.array(range(start, start + len(chunk)), pa.int64()), "text": chunk})
        pq.write_table(table, f"corpus/reviews/dt=2026-11-05/part-{i}.parquet", filesystem=fs)
    upload_folder(fs, tiny_models["classifier"], "models/sentiment/v1")

    job = tmp_path / "job.yaml"
    job.write_text(
        "input: s3://corpus/reviews/dt=2026-11-05/\n"
        "output: s3://results/reviews\n"
        "classifier_model: s3://models/sentiment/v1\n"
        f"ner_model: {tiny_models['ner']}\n"
        "partition: [dt=2000-01-01]\n"
        "precision: fp32\n"
    )
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "ALBERT_BATCH_CACHE": str(tmp_path / "cache")}
    summary_file = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "albert_batch.cli", "run", "--config", str(job), "--partition", "dt=2026-11-05",
         "--run-id", "cli-run", "--summary-json", str(summary_file)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run cli-run: published 3 partitions" in proc.stdout
    assert "rows: 14 in, 12 processed, 2 rejected (blank_text: 1, null_text: 1)" in proc.stdout

    classifications = published_dataset(fs, "results/reviews", "classifications")
    assert sorted(classifications.column("id").to_pylist()) == list(range(12))
    assert set(classifications.column("dt").to_pylist()) == {"2026-11-05"}
    assert set(classifications.column("model").to_pylist()) == {"s3://models/sentiment/v1"}
    assert published_dataset(fs, "results/reviews", "entities").num_rows == 12
    assert sorted(published_dataset(fs, "results/reviews", "rejects").column("id").to_pylist()) == [12, 13]

    with fs.open_input_stream("results/reviews/classifications/dt=2026-11-05/_manifest.json") as fh:
        manifest = json.loads(fh.read())
    assert manifest["models"]["classify"]["location"] == "s3://models/sentiment/v1"
    assert manifest["input"]["location"] == "s3://corpus/reviews/dt=2026-11-05"
    assert json.loads(summary_file.read_text())["input_rows"] == 14

    # Nothing secret anywhere: process output, summary, the run's details log, every object written.
    details = list((tmp_path / "cache/logs").glob("run-cli-run.log"))
    assert details and "details of this run are logged to" in details[0].read_text()
    written = [proc.stdout, proc.stderr, summary_file.read_text(), details[0].read_text()]
    for info in fs.get_file_info(pafs.FileSelector("results", recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as fh:
                written.append(fh.read().decode("latin-1"))
    assert not [w for w in written if FAKE_SECRET in w]
    assert list((tmp_path / "cache/models").iterdir()), "the S3 model was cached on this node"


@pytest.mark.slow
def test_an_unreachable_s3_endpoint_is_reported_with_the_location_and_no_secret(tmp_path, tiny_models, s3_client):
    fs = s3_client
    fs.create_dir("corpus")
    pq.write_table(pa.table({"id": [1], "text": ["hello"]}), "corpus/in/part-0.parquet", filesystem=fs)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET}
    proc = subprocess.run(
        [sys.executable, "-m", "albert_batch.cli", "run", "--input", "s3://corpus/in", "--output",
         "s3://no-such-bucket-here/out", "--tasks", "classify", "--classifier-model", tiny_models["classifier"], "-q"],
        env={**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "s3://corpus/in" in proc.stderr
    assert FAKE_SECRET not in proc.stdout + proc.stderr


def test_an_output_bucket_that_does_not_exist_is_refused_before_any_work(tmp_path, tiny_models, s3_client):
    """Found by writing (and deleting) a small object where the run stages its work, before Ray starts: not
    at the first write, after the whole corpus was classified."""
    fs = s3_client
    fs.create_dir("corpus")
    pq.write_table(pa.table({"id": [1], "text": ["hello"]}), "corpus/in/part-0.parquet", filesystem=fs)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "ALBERT_BATCH_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "albert_batch.cli", "run", "--input", "s3://corpus/in", "--output",
         "s3://no-such-bucket-here/out", "--tasks", "classify", "--classifier-model", tiny_models["classifier"], "-q"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("albert-batch: error: output s3://no-such-bucket-here/out cannot be written: writing "
                           "s3://no-such-bucket-here/out/_staging/dt="), last
    assert "NO_SUCH_BUCKET" in last and "Traceback" not in proc.stderr
    assert "no-such-bucket-here" not in [i.base_name for i in fs.get_file_info(pafs.FileSelector(""))]
