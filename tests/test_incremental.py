"""A partition whose input changed since its last publication processes only what changed: units of work of
unchanged files are reused, new and changed files are processed, rows of files that are gone are not
published, and the partition holds exactly what a fresh run of the new input would publish. Hive folders
and Iceberg tables alike."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_batch import RunConfig, iceberg, run
from albert_batch.pipeline.inputs import plan_input
from albert_batch.pipeline.units import WorkUnit, pack
from albert_batch.storage import Location
from support import SCORE_TOLERANCE, TRICKY_TEXTS, read_published

PARTITION = "dt=2026-12-06"
FILES = 10
ROWS = 20  # per file, one row group each: with a small unit_mib, each file is a unit of work


def write_file(folder: Path, number: int, *, first_id: int, rows: int = ROWS, salt: str = "") -> None:
    """A file of ``rows`` rows from ``first_id`` on; every fifth text is too long (rejected, see ``settings``)."""
    ids = list(range(first_id, first_id + rows))
    texts = [("x" * 300 if i % 5 == 0 else f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} {salt}(row {i})") for i in ids]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": texts}), folder / f"part-{number:02d}.parquet")


def settings(corpus: Path, output: str, models: dict[str, str], run_id: str) -> dict[str, Any]:
    return {"input": str(corpus), "output": output, "classifier_model": models["classifier"],
            "ner_model": models["ner"], "partition": [PARTITION], "precision": "fp32", "run_id": run_id,
            "max_text_chars": 200, "resources": {"batch_size": 50, "unit_mib": 0.001}}


def results(rows: dict[str, list[dict[str, Any]]]) -> dict[str, dict[Any, Any]]:
    """Each table's rows by id, without the run id and time (entity scores within SCORE_TOLERANCE, below)."""
    return {
        "classifications": {r["id"]: (r["label"], r["score"]) for r in rows["classifications"]},
        "entities": {r["id"]: [(e["label"], e["text"], e["start"], e["end"]) for e in r["entities"]]
                     for r in rows["entities"]},
        "rejects": {r["id"]: r["reason"] for r in rows["rejects"]},
    }


def assert_same(got: dict[str, list[dict[str, Any]]], want: dict[str, list[dict[str, Any]]]) -> None:
    for table in got:
        assert len(got[table]) == len(want[table]), f"{table}: each row once"
    got_by_id, want_by_id = results(got), results(want)
    assert got_by_id["entities"] == want_by_id["entities"]
    assert got_by_id["rejects"] == want_by_id["rejects"]
    assert got_by_id["classifications"].keys() == want_by_id["classifications"].keys()
    for row_id, (label, score) in want_by_id["classifications"].items():
        assert got_by_id["classifications"][row_id][0] == label
        assert got_by_id["classifications"][row_id][1] == pytest.approx(score, abs=SCORE_TOLERANCE)


def hive(output: Path) -> dict[str, list[dict[str, Any]]]:
    return {table: read_published(output, table) for table in ("classifications", "entities", "rejects")}


def test_units_of_unchanged_files_are_kept_and_the_rest_is_cut_anew(tmp_path):
    """Earlier units whose files are all unchanged stay as they were; a changed file's unit, and the row
    groups of unchanged files it held, are cut anew; a file that is gone takes its units with it."""
    for number in range(4):
        write_file(tmp_path / "in", number, first_id=number * ROWS)
    plan = plan_input(Location.parse(str(tmp_path / "in")), id_column="id", text_column="text")
    size = max(f.row_groups[0][1] for f in plan.files)
    earlier = plan.units(max_bytes=2 * size)  # two files to a unit
    assert [[s.path.rsplit("/", 1)[-1] for s in u.segments] for u in earlier] == [
        ["part-00.parquet", "part-01.parquet"], ["part-02.parquet", "part-03.parquet"]]
    assert pack(plan.files, max_bytes=size, keep=earlier) == earlier, "an unchanged input keeps its units"

    write_file(tmp_path / "in", 3, first_id=3 * ROWS, rows=ROWS + 1)  # changed
    write_file(tmp_path / "in", 4, first_id=4 * ROWS)  # new
    (tmp_path / "in" / "part-00.parquet").unlink()  # gone
    changed = plan_input(Location.parse(str(tmp_path / "in")), id_column="id", text_column="text")
    units = changed.units(max_bytes=size, keep=earlier)
    assert [[s.path.rsplit("/", 1)[-1] for s in u.segments] for u in units] == [
        ["part-01.parquet"], ["part-02.parquet"], ["part-03.parquet"], ["part-04.parquet"]]
    assert [u.index for u in units] == [0, 1, 2, 3]
    assert not {u.key for u in units} & {u.key for u in earlier}, "no earlier unit survives unchanged here"
    assert WorkUnit.from_record(units[0].as_record(), 0) == units[0]
    kept = changed.units(max_bytes=4 * size, keep=[WorkUnit.from_record(u.as_record()) for u in units[:2]])
    assert [u.key for u in kept[:2]] == [u.key for u in units[:2]], "kept whatever the unit size is now"
    assert [len(u.segments) for u in kept] == [1, 1, 2], "the rest packed to the size asked for"


def test_a_changed_partition_processes_only_new_and_changed_files_and_publishes_what_a_fresh_run_would(
        tmp_path, tiny_models, ray_cluster, caplog):
    corpus, output = tmp_path / "input", tmp_path / "output"
    for number in range(FILES):
        write_file(corpus, number, first_id=number * ROWS)
    first = run(RunConfig(**settings(corpus, str(output), tiny_models, "first")))
    assert first.units["total"] == FILES and first.units["reused"] == 0 and first.units["earlier"] is None

    write_file(corpus, FILES, first_id=FILES * ROWS)  # a late file
    write_file(corpus, 3, first_id=1000, rows=ROWS + 5, salt="rewritten ")  # a file written again
    caplog.set_level(logging.INFO, logger="albert_batch")
    second = run(RunConfig(**settings(corpus, str(output), tiny_models, "second")))
    assert second.units == {"total": FILES + 1, "reused": FILES - 1, "reused_from_runs": ["first"], "earlier": {
        "run_id": "first", "where": "published", "files": {"unchanged": FILES - 1, "new": 1, "changed": 1, "gone": 0}}}
    assert second.cost["rows"] == ROWS + ROWS + 5, "the rows of the two files were processed, no others"
    assert f"9 of {FILES + 1} units of work reused from run first (published work); 9 input file(s) unchanged; " \
           "1 new (part-10.parquet); 1 changed (part-03.parquet); 2 unit(s) to process" in caplog.text
    run(RunConfig(**settings(corpus, str(tmp_path / "fresh"), tiny_models, "fresh")))
    fresh = hive(tmp_path / "fresh")
    assert_same(hive(output), fresh)
    by_run = {r["id"]: r["run_id"] for r in read_published(output, "classifications")}
    assert not by_run.keys() & set(range(3 * ROWS, 4 * ROWS)), "the rewritten file's earlier rows are gone"
    assert {by_run[i] for i in range(1000, 1000 + ROWS + 5) if i in by_run} == {"second"}
    assert {by_run[i] for i in range(ROWS) if i in by_run} == {"first"}, "rows keep the run that computed them"

    (corpus / "part-05.parquet").unlink()  # a file that is gone
    third = run(RunConfig(**settings(corpus, str(output), tiny_models, "third")))
    assert third.units["reused"] == FILES and third.units["earlier"]["files"]["gone"] == 1
    assert third.input_rows == FILES * ROWS + 5
    assert not {r["id"] for r in read_published(output, "classifications")} & set(range(5 * ROWS, 6 * ROWS))
    gone = set(range(5 * ROWS, 6 * ROWS))  # what a fresh run of the input without the file publishes:
    assert_same(hive(output), {table: [r for r in rows if r["id"] not in gone] for table, rows in fresh.items()})


def test_an_iceberg_partition_with_a_new_file_reuses_its_published_units(tmp_path, tiny_models, ray_cluster):
    corpus = tmp_path / "input"
    for number in range(3):
        write_file(corpus, number, first_id=number * ROWS)
    output, target = "iceberg://local/incremental", iceberg.IcebergTarget("local", "incremental")
    run(RunConfig(**settings(corpus, output, tiny_models, "first")))
    write_file(corpus, 3, first_id=3 * ROWS)
    second = run(RunConfig(**settings(corpus, output, tiny_models, "second")))
    assert (second.units["total"], second.units["reused"]) == (4, 3)

    catalog = iceberg.load_catalog(target)
    tables = {table: catalog.load_table(f"incremental.{table}").scan(row_filter="dt == '2026-12-06'").to_arrow()
              for table in ("classifications", "entities", "rejects")}
    assert sorted(tables["classifications"].column("id").to_pylist() + tables["rejects"].column("id").to_pylist()) \
        == list(range(4 * ROWS)), "each input row once"
    assert {r: sum(1 for x in tables["rejects"].column("run_id").to_pylist() if x == r) for r in ("first", "second")} \
        == {"first": 3 * ROWS // 5, "second": ROWS // 5}
