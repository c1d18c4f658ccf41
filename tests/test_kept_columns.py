"""Input columns carried into the results (``--keep-columns``), as SageMaker Batch Transform's JoinSource and
Vertex AI's included fields carry them: every table, rejects included, holds them with the input's values and
Arrow types; names that clash with the output's own columns, or that the input lacks, are refused before any
work; Iceberg tables evolve to hold them. Consumers read them with pyarrow's datasets, DuckDB and pyiceberg."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from albert_batch import RunConfig, iceberg, run
from albert_batch.cli import main
from albert_batch.pipeline import reuse, staging
from albert_batch.pipeline.inputs import plan_input
from albert_batch.pipeline.validate import validate_partition
from albert_batch.storage import Location
from support import TRICKY_TEXTS

DAY = "dt=2026-11-30"
ROWS = 10
CARRIED = ("lang", "source", "stars", "tags", "seen_at")
# What each carried column is in the output tables: the input's type, its dictionary decoded.
TYPES = {"lang": pa.string(), "source": pa.string(), "stars": pa.int32(),
         "tags": pa.list_(pa.field("element", pa.string())), "seen_at": pa.timestamp("us", tz="UTC")}
REJECTED = {1: "null_text", 2: "null_id", 3: "invalid_utf8"}  # row -> why


def write_input(folder: Path) -> None:
    """A corpus whose rows 1-3 are rejected (a null text, a null id, text bytes that are not UTF-8), with
    columns to carry: a string with a null, a dictionary-encoded string (pandas' categoricals), an int32, a
    list and a timestamp. ``tags[0]`` names each row."""
    folder.mkdir(parents=True)
    texts: list[bytes | None] = [f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} (row {i})".encode() for i in range(ROWS)]
    texts[1], texts[3] = None, b"caf\xe9 cr\xe8me, encoded as Latin-1"
    start = dt.datetime(2026, 11, 30, 6, tzinfo=dt.UTC)
    pq.write_table(pa.table({
        "id": pa.array([None if i == 2 else i for i in range(ROWS)], pa.int64()),
        "text": pa.array(texts, pa.binary()).view(pa.string()),  # what a mis-encoded export holds
        "lang": pa.array([None if i == 5 else ("en", "de", "fr")[i % 3] for i in range(ROWS)], pa.string()),
        "source": pa.array([f"feed-{i % 2}" for i in range(ROWS)]).dictionary_encode(),
        "stars": pa.array([i % 5 + 1 for i in range(ROWS)], pa.int32()),
        "tags": pa.array([[f"row-{i}", "review"] for i in range(ROWS)], pa.list_(pa.string())),
        "seen_at": pa.array([start + dt.timedelta(minutes=i) for i in range(ROWS)], pa.timestamp("us", tz="UTC")),
        "body_html": pa.array(["<p>not carried</p>"] * ROWS),
    }), folder / "part-0.parquet")


def carried(row: int) -> dict[str, Any]:
    """Row ``row``'s carried values, as Python reads them back."""
    return {"lang": None if row == 5 else ("en", "de", "fr")[row % 3], "source": f"feed-{row % 2}",
            "stars": row % 5 + 1, "tags": [f"row-{row}", "review"],
            "seen_at": dt.datetime(2026, 11, 30, 6, row, tzinfo=dt.UTC)}


def by_row(table: pa.Table) -> dict[int, dict[str, Any]]:
    """The carried values of each output row, by the input row that ``tags[0]`` names."""
    return {int(r["tags"][0].removeprefix("row-")): r for r in table.select(list(CARRIED)).to_pylist()}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["run", "-q", *args])
    return code, capsys.readouterr().err


def test_carried_columns_reach_every_table_with_the_input_s_values_and_types_rejects_included(
        tmp_path, tiny_models, ray_cluster, capsys):
    write_input(tmp_path / "input")
    output = tmp_path / "output"
    code, err = run_cli(capsys, "--input", str(tmp_path / "input"), "--output", str(output), "--partition", DAY,
                        "--classifier-model", tiny_models["classifier"], "--ner-model", tiny_models["ner"],
                        "--precision", "fp32", "--keep-columns", ",".join(CARRIED), "--run-id", "kept")
    assert code == 0, err

    accepted = set(range(ROWS)) - set(REJECTED)
    for table, rows in (("classifications", accepted), ("entities", accepted), ("rejects", set(REJECTED))):
        found = ds.dataset(output / table, format="parquet", partitioning="hive").to_table()
        assert {name: found.schema.field(name).type for name in CARRIED} == TYPES, table
        assert found.column_names[-len(CARRIED) - 1:] == [*CARRIED, "dt"], "after the contract's columns"
        assert by_row(found) == {row: carried(row) for row in rows}, table
        assert "body_html" not in found.column_names, "only the columns asked for"
        manifest = (output / table / DAY / "_manifest.json").read_text()
        assert '"kept_columns": {\n    "lang": "string",\n    "source": "string",\n    "stars": "int32",\n' \
               '    "tags": "list<element: string>",\n    "seen_at": "timestamp[us, tz=UTC]"\n  }' in manifest

    # A warehouse's view: the rejected rows keep what they carried, the null id's and the undecodable text's too.
    rejects = duckdb.connect().execute(
        "SELECT reason, id, lang, source, stars, tags[1] FROM read_parquet(?, hive_partitioning = true) ORDER BY 1",
        [str(output / "rejects" / DAY / "*.parquet")]).fetchall()
    assert rejects == [("invalid_utf8", 3, "en", "feed-1", 4, "row-3"), ("null_id", None, "fr", "feed-0", 3, "row-2"),
                       ("null_text", 1, "de", "feed-1", 2, "row-1")]
    assert validate_partition(output, DAY, ["classify", "ner"], run_id="kept").input_rows == ROWS


@pytest.mark.parametrize(("keep", "extra", "message"), [
    ("lang,label", [], "'label' is a column of the output tables"),
    ("id", [], "'id' is the id column"),
    ("lang,text", [], "'text' is the text column"),
    ("source,lang", ["--partition", "lang=en"], "'lang' is a partition key"),
    ("lang,stars,lang", [], "'lang' is given twice"),
    ("lang,country", [], "input file {input}/part-0.parquet has no kept column 'country'; available columns: id, "
                         "text, lang, source, stars, tags, seen_at, body_html"),
])
def test_a_kept_column_that_clashes_or_that_the_input_lacks_is_refused_before_any_work(
        tmp_path, capsys, keep, extra, message):
    write_input(tmp_path / "input")
    code, err = run_cli(capsys, "--input", str(tmp_path / "input"), "--output", str(tmp_path / "output"),
                        "--tasks", "classify", "--classifier-model", str(tmp_path / "no-model"),
                        "--keep-columns", keep, *extra)
    assert code == 2
    assert message.format(input=tmp_path / "input") in err
    assert not (tmp_path / "output").exists()


def test_work_staged_with_other_kept_columns_is_not_resumed(tmp_path, caplog):
    """The staged files hold the carried columns, in order: a run that carries others starts afresh."""
    write_input(tmp_path / "input")
    folder = Location.parse(str(tmp_path / "output" / "_staging" / DAY))

    def stage(keep: str) -> None:
        config = RunConfig(input=str(tmp_path / "input"), output=str(tmp_path / "output"), tasks="classify",
                           classifier_model="m", keep_columns=keep, run_id="r")
        plan = plan_input(config.input_location, id_column="id", text_column="text", keep_columns=config.keep_columns)
        key = reuse.work_key(config, plan, {})
        record = staging.read_record(folder)
        kept = reuse.reusable(record and reuse.Earlier.of(record, "staged"), key, fresh=False)
        staging.prepare(folder, {}, key, config.run_id, plan.units(), keep=kept, files=reuse.input_files(plan.files))
        return kept

    assert not stage("lang,stars"), "nothing staged yet"
    assert stage("lang,stars")
    assert "starting afresh" not in caplog.text
    assert not stage("stars,lang")
    assert "because keep_columns changed from ['lang', 'stars'] to ['stars', 'lang']" in caplog.text


def test_iceberg_tables_evolve_to_hold_carried_columns_and_a_run_without_them_reads_null_there(
        tmp_path, tiny_models, ray_cluster):
    write_input(tmp_path / "input")
    output, target = "iceberg://local/carried", iceberg.IcebergTarget("local", "carried")
    catalog = iceberg.load_catalog(target)
    for table in ("classifications", "rejects"):  # as an earlier run, which carried nothing, left them
        iceberg.prepare_table(catalog, target, table, pa.int64(), ["dt"])
    common = {"input": str(tmp_path / "input"), "output": output, "classifier_model": tiny_models["classifier"],
              "tasks": "classify", "precision": "fp32"}
    run(RunConfig(**common, partition=["dt=2026-11-30"], keep_columns=CARRIED, run_id="with"))
    run(RunConfig(**common, partition=["dt=2026-12-01"], run_id="without"))

    for table, rows in (("classifications", set(range(ROWS)) - set(REJECTED)), ("rejects", set(REJECTED))):
        found = catalog.load_table(f"carried.{table}")
        assert [f.name for f in found.schema().fields][-len(CARRIED) - 1:] == ["dt", *CARRIED], "added, after dt"
        assert {name: str(found.schema().find_field(name).field_type) for name in CARRIED} == {
            "lang": "string", "source": "string", "stars": "int", "tags": "list<string>", "seen_at": "timestamptz"}
        with_them = found.scan(row_filter="dt == '2026-11-30'").to_arrow()
        assert by_row(with_them) == {row: carried(row) for row in rows}, table
        without = found.scan(row_filter="dt == '2026-12-01'", selected_fields=CARRIED).to_arrow()
        assert without.num_rows == len(rows) and all(without.column(n).null_count == len(rows) for n in CARRIED)
    for day, run_id in (("dt=2026-11-30", "with"), ("dt=2026-12-01", "without")):
        assert validate_partition(output, day, ["classify"], run_id=run_id).input_rows == ROWS
