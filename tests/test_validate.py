"""Validation of a published partition (what the Airflow DAG checks before announcing it): a real run's
partition passes, and each way a partition can be incomplete or off-contract is refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_batch import RunConfig, run
from albert_batch.errors import ValidationError
from albert_batch.pipeline.validate import validate_partition
from support import TRICKY_TEXTS, write_corpus

PARTITION = "dt=2026-11-02"


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_models, ray_cluster) -> Path:
    root = tmp_path_factory.mktemp("validate")
    write_corpus(root / "input.parquet", list(range(len(TRICKY_TEXTS) + 1)), [*TRICKY_TEXTS, None])
    run(RunConfig(input=str(root / "input.parquet"), output=str(root / "output"), partition=[PARTITION],
                  classifier_model=tiny_models["classifier"], ner_model=tiny_models["ner"], run_id="run-v",
                  precision="fp32"))
    return root / "output"


@pytest.fixture
def output(published, tmp_path) -> Path:
    """A private copy of the published output, free to damage."""
    return Path(shutil.copytree(published, tmp_path / "output"))


def test_a_published_partition_passes_and_is_summarised(published):
    summary = validate_partition(published, PARTITION, ["classify", "ner"], run_id="run-v")
    assert summary.run_id == "run-v" and summary.partition == PARTITION
    assert summary.input_rows == len(TRICKY_TEXTS) + 1 and summary.rejected_rows == 1
    assert {t: v["rows"] for t, v in summary.tables.items()} == {
        "classifications": len(TRICKY_TEXTS), "entities": len(TRICKY_TEXTS), "rejects": 1}
    assert sum(summary.label_counts.values()) == len(TRICKY_TEXTS)
    assert set(summary.models) == {"classify", "ner"} and all(m["weights_sha256"] for m in summary.models.values())
    assert json.loads(json.dumps(summary.as_dict())) == summary.as_dict(), "plain JSON, for XCom"


def test_a_partition_without_success_is_refused(output):
    (output / "entities" / PARTITION / "_SUCCESS").unlink()
    with pytest.raises(ValidationError, match="entities/dt=2026-11-02 has no _SUCCESS"):
        validate_partition(output, PARTITION, ["classify", "ner"])


def test_a_partition_from_another_run_is_refused(output):
    with pytest.raises(ValidationError, match="published by run 'run-v', not by run 'run-w'"):
        validate_partition(output, PARTITION, ["classify"], run_id="run-w")


def test_a_stray_or_missing_data_file_is_refused(output):
    folder = output / "classifications" / PARTITION
    shutil.copy(next(folder.glob("*.parquet")), folder / "part-stray.parquet")
    with pytest.raises(ValidationError, match=r"holds files \['part-stray.parquet'\] the manifest does not list"):
        validate_partition(output, PARTITION, ["classify"])


def test_lost_rows_are_refused(output):
    folder = output / "classifications" / PARTITION
    [data] = folder.glob("*.parquet")
    table = pq.read_table(data)
    pq.write_table(table.slice(1), data)
    manifest = json.loads((folder / "_manifest.json").read_text())
    manifest["rows"] -= 1
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValidationError, match=r"input rows but \d+ results and 1 rejects — rows were lost"):
        validate_partition(output, PARTITION, ["classify"])


def test_a_file_off_the_output_contract_is_refused(output):
    folder = output / "rejects" / PARTITION
    [data] = folder.glob("*.parquet")
    table = pq.read_table(data)
    pq.write_table(table.set_column(1, "reason", pa.array([1] * table.num_rows, pa.int64())), data)
    with pytest.raises(ValidationError, match="does not have the rejects schema of the output contract"):
        validate_partition(output, PARTITION, ["classify"])


def test_a_manifest_whose_count_disagrees_with_the_files_is_refused(output):
    folder = output / "entities" / PARTITION
    manifest = json.loads((folder / "_manifest.json").read_text())
    manifest["rows"] += 5
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValidationError, match=f"holds {len(TRICKY_TEXTS)} rows but its manifest says"):
        validate_partition(output, PARTITION, ["ner"])
