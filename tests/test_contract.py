"""The output contract lives in one module that needs only pyarrow: the tables and their schemas, the columns a
partition key may not take, and the manifest that a reader can parse without knowing every field."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from albert_batch import contract
from albert_batch.contract import (
    RESERVED_COLUMNS,
    TASK_OUTPUTS,
    Manifest,
    RejectReason,
    Task,
    schema,
    tables_for,
)


def heavy_modules_after(code: str) -> list[str]:
    """The heavy packages a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys; print(sorted(m for m in ('ray', 'ray.data', 'torch', 'transformers') if m in sys.modules))"
    return ast.literal_eval(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)


def test_importing_the_contract_needs_neither_ray_nor_torch():
    assert heavy_modules_after("import albert_batch.contract") == []


def test_validating_a_partition_imports_no_ray(tmp_path):
    code = (
        "from albert_batch.errors import ValidationError\n"
        "from albert_batch.pipeline.validate import validate_partition\n"
        f"try: validate_partition({str(tmp_path)!r}, 'dt=2026-11-01', ['classify', 'ner'])\n"
        "except ValidationError: pass\n"
        "else: raise SystemExit('an empty output validated')\n"
    )
    assert heavy_modules_after(code) == []


def test_every_task_writes_its_own_table_and_the_rejects_come_last():
    assert tables_for([Task.NER, Task.CLASSIFY]) == ["entities", "classifications", "rejects"]
    assert {output.table for output in TASK_OUTPUTS.values()} == {"classifications", "entities"}
    assert set(TASK_OUTPUTS) == set(Task), "every task has an output"


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_the_schemas_are_the_documented_ones_with_the_input_s_id_type(id_type):
    assert schema("classifications", id_type).names == [
        "id", "label", "score", "scores", "truncated", "model", "run_id", "processed_at"]
    assert schema("entities", id_type).names == ["id", "entities", "model", "run_id", "processed_at"]
    assert schema("rejects", id_type).names == ["id", "reason", "run_id", "detail"]
    assert all(schema(table, id_type).field("id").type == id_type for table in tables_for(Task))
    assert schema("classifications", id_type).field("processed_at").type == pa.timestamp("us", tz="UTC")
    with pytest.raises(KeyError, match="no output table 'labels'"):
        schema("labels", id_type)


def test_every_output_column_is_reserved_from_partition_keys():
    columns = {name for table in tables_for(Task) for name in schema(table, pa.int64()).names}
    assert columns == RESERVED_COLUMNS


def test_reject_reasons_are_the_documented_ones():
    assert [r.value for r in RejectReason] == ["null_id", "null_text", "blank_text", "invalid_utf8", "too_long",
                                               "processing_error"]
    # docs/outputs.md ("What it writes") documents every reason.
    page = (Path(__file__).resolve().parent.parent / "docs" / "outputs.md").read_text(encoding="utf-8")
    assert all(f"`{r.value}`" in page for r in RejectReason)


def test_a_manifest_round_trips_and_a_reader_ignores_fields_it_does_not_know():
    manifest = Manifest(table="rejects", run_id="r1", partition={"dt": "2026-11-01"}, tasks=["classify"], rows=2,
                        files=["part-r1-00000.parquet"], input={"location": "/in", "files": 1, "rows": 5},
                        counts={"input_rows": 5, "rejected_rows": 2}, models={}, precision="fp32")
    assert Manifest.from_json(manifest.to_json()) == manifest
    grown = manifest.to_json().replace(b'"table"', b'"added_later": {"x": 1},\n  "table"', 1)
    assert Manifest.from_json(grown) == manifest


def test_the_marker_files_are_hidden_from_consumers():
    for name in (contract.STAGING_DIR, contract.COMMIT, contract.MANIFEST, contract.SUCCESS):
        assert name.startswith("_"), f"{name} would be read as data by Spark, Hive and DuckDB"
