"""Iceberg tables as the output: ``--output iceberg://CATALOG/NAMESPACE`` with pyiceberg's SQL catalog on
SQLite (catalogs "local" and "lake", configured in conftest as users configure pyiceberg). Consumers read
through pyiceberg's scan and DuckDB over the Arrow it returns — neither is albert-batch's code."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from albert_batch import RunConfig, iceberg, run
from albert_batch.cli import run_argv
from albert_batch.contract import Manifest
from albert_batch.errors import ConfigError, ValidationError
from albert_batch.iceberg import IcebergTarget, redact
from albert_batch.pipeline.validate import validate_partition
from albert_batch.quality import REPORT
from albert_batch.quality.store import read_figures
from support import FAKE_SECRET, TRICKY_TEXTS, read_published, write_corpus

DAY = "dt=2026-11-21"


def scan(namespace: str, table: str, row_filter: str = "True", catalog: str = "local") -> list[dict[str, Any]]:
    """A consumer's read: pyiceberg's scan with a row filter, then SQL in DuckDB over the Arrow it returns."""
    arrow = load_catalog(catalog).load_table(f"{namespace}.{table}").scan(row_filter=row_filter).to_arrow()
    con = duckdb.connect()
    con.register("results", arrow)
    result = con.execute("SELECT * FROM results ORDER BY id NULLS FIRST")
    names = [c[0] for c in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def load_catalog(name: str) -> Any:
    """A catalog as its configuration reads now (the moto endpoint is set once the session's server is up)."""
    from pyiceberg.catalog import load_catalog
    from pyiceberg.utils.config import Config

    return load_catalog(name, **Config().get_catalog_config(name))


def iceberg_table(namespace: str, table: str, catalog: str = "local") -> Any:
    return load_catalog(catalog).load_table(f"{namespace}.{table}")


def corpus(folder: Path, n: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    texts: list[str | None] = [f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} (row {i})" for i in range(start, start + n)]
    texts[1] = None
    write_corpus(folder / "part-0.parquet", list(range(start, start + n)), texts)
    return folder


def settings(input_: Path, output: str, models: dict[str, str], **overrides: Any) -> RunConfig:
    return RunConfig(**{"input": str(input_), "output": output, "classifier_model": models["classifier"],
                        "ner_model": models["ner"], "partition": [DAY], "precision": "fp32", **overrides})


def comparable(rows: list[dict[str, Any]], drop: tuple[str, ...] = ("run_id", "processed_at")) -> list[dict]:
    """Rows without what differs between two runs of the same corpus; scores to 1e-9, maps as dicts."""
    def value(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 9)
        if isinstance(v, list) and v and isinstance(v[0], tuple):  # a map, as DuckDB returns one from Arrow
            return {k: round(x, 9) for k, x in v}
        if isinstance(v, dict) and set(v) == {"key", "value"}:
            return dict(zip(v["key"], [round(x, 9) for x in v["value"]], strict=True))
        if isinstance(v, list):
            return [value(x) for x in v]
        if isinstance(v, dict):
            return {k: value(x) for k, x in v.items()}
        return v

    return sorted(({k: str(v) if k == "dt" else value(v) for k, v in r.items() if k not in drop} for r in rows),
                  key=lambda r: str(r["id"]))  # DuckDB's Hive partitioning reads dt=2026-11-21 as a date


@pytest.mark.slow
def test_an_iceberg_run_holds_the_same_rows_as_a_hive_run_and_records_its_lineage(tmp_path, tiny_models,
                                                                                  ray_cluster):
    source = corpus(tmp_path / "input", 40)
    hive = run(settings(source, str(tmp_path / "hive"), tiny_models, run_id="hive-run"))
    summary = run(settings(source, "iceberg://local/reviews", tiny_models, run_id="ice-run"))

    assert summary.partitions == {t: f"iceberg://local/reviews/{t}" for t in ("classifications", "entities", "rejects")}
    assert summary.input_rows == hive.input_rows == 40 and summary.rejected_rows == 1
    for table in ("classifications", "entities", "rejects"):
        got = scan("reviews", table, "dt == '2026-11-21'")
        assert comparable(got) == comparable(read_published(tmp_path / "hive", table)), table
        assert {r["run_id"] for r in got} == {"ice-run"}
    # The contract's types, Iceberg-side: timestamps with time zone, a map, a list of structs, identity partitions.
    classifications = iceberg_table("reviews", "classifications")
    assert str(classifications.schema().find_field("processed_at").field_type) == "timestamptz"
    assert str(classifications.schema().find_field("scores").field_type) == "map<string, double>"
    assert [f.name for f in classifications.spec().fields] == ["dt"]
    assert str(iceberg_table("reviews", "entities").schema().find_field("entities").field_type).startswith("list<struct<")

    properties = classifications.current_snapshot().summary.additional_properties
    assert properties["albert-batch.run-id"] == "ice-run" and properties["albert-batch.rows"] == "39"
    assert properties["albert-batch.partition"] == DAY
    recorded = Manifest.from_json(properties["albert-batch.manifest"])
    assert recorded.models["classify"]["weights_sha256"] == hive.models["classify"]["weights_sha256"]
    assert recorded.input["fingerprint"] and recorded.counts["input_rows"] == 40

    checked = validate_partition("iceberg://local/reviews", DAY, ["classify", "ner"], run_id="ice-run")
    assert checked.input_rows == 40 and checked.rejected_rows == 1
    assert checked.tables["classifications"] == {"uri": "iceberg://local/reviews/classifications", "rows": 39,
                                                 "files": 1}
    with pytest.raises(ValidationError, match="published by run 'ice-run', not by run 'other'"):
        validate_partition("iceberg://local/reviews", DAY, ["classify", "ner"], run_id="other")

    # Each table's partition report, beside the table's data: the same figures as the Hive run's.
    reports = Path(classifications.location().removeprefix("file://")) / "_reports" / DAY
    assert summary.report.removeprefix("file://") == str(reports / REPORT) and (reports / REPORT).is_file()
    figures = read_figures("iceberg://local/reviews", DAY)
    assert figures.run["run_id"] == "ice-run" and figures.rows == read_figures(tmp_path / "hive", DAY).rows


@pytest.mark.slow
def test_a_rerun_replaces_its_partition_neighbours_stay_and_a_new_partition_key_evolves_the_tables(
        tmp_path, tiny_models, ray_cluster):
    output = "iceberg://local/daily"
    first = corpus(tmp_path / "first", 12)
    run(settings(first, output, tiny_models, tasks="classify", partition=["dt=2026-11-01"], run_id="day-1"))
    run(settings(first, output, tiny_models, tasks="classify", partition=["dt=2026-11-02"], run_id="day-2"))
    neighbour = {f.file_path for f in iceberg.partition_files(iceberg_table("daily", "classifications"),
                                                              {"dt": "2026-11-02"})}

    again = corpus(tmp_path / "again", 9, start=100)
    run(settings(again, output, tiny_models, tasks="classify", partition=["dt=2026-11-01"], run_id="day-1-again"))
    day1 = scan("daily", "classifications", "dt == '2026-11-01'")
    assert [r["id"] for r in day1] == [i for i in range(100, 109) if i != 101], "the re-run's rows only, once"
    assert {r["run_id"] for r in day1} == {"day-1-again"}
    assert {f.file_path for f in iceberg.partition_files(iceberg_table("daily", "classifications"),
                                                         {"dt": "2026-11-02"})} == neighbour, "untouched"

    # A table's own write.target-file-size-bytes sizes its files. At 1 byte, the staged files (a write per two
    # rows here) are published as they are; without it, they are merged into one, and the staged files merged
    # into it leave the table's folder. (Fresh runs: a run of the same input would reuse the published rows.)
    small_writes = {"batch_size": 2, "rows_per_file": 2}
    with iceberg_table("daily", "classifications").transaction() as change:
        change.set_properties({iceberg.TARGET_FILE_SIZE: "1"})
    run(settings(again, output, tiny_models, tasks="classify", partition=["dt=2026-11-01"], run_id="small-files",
                 resources=small_writes, fresh=True))
    files = iceberg.partition_files(iceberg_table("daily", "classifications"), {"dt": "2026-11-01"})
    assert len(files) >= 3 and sum(f.record_count for f in files) == 8, files
    folder = Path(iceberg_table("daily", "classifications").location().removeprefix("file://")) / "data" / "dt=2026-11-01"
    before = set(folder.glob("*.parquet"))
    with iceberg_table("daily", "classifications").transaction() as change:
        change.remove_properties(iceberg.TARGET_FILE_SIZE)
    run(settings(again, output, tiny_models, tasks="classify", partition=["dt=2026-11-01"], run_id="merged",
                 resources=small_writes, fresh=True))
    (merged,) = iceberg.partition_files(iceberg_table("daily", "classifications"), {"dt": "2026-11-01"})
    assert merged.record_count == 8
    assert set(folder.glob("*.parquet")) - before == {Path(merged.file_path.removeprefix("file://"))}
    assert [r["id"] for r in scan("daily", "classifications", "dt == '2026-11-01'")] == [
        i for i in range(100, 109) if i != 101]

    # A run with one more partition key: the tables gain the column and the identity partition; older rows
    # read as null there, and their partitions keep validating.
    run(settings(first, output, tiny_models, tasks="classify", partition=["dt=2026-11-03", "hour=07"],
                 run_id="hourly"))
    for table in ("classifications", "rejects"):
        found = iceberg_table("daily", table)
        assert [f.name for f in found.spec().fields] == ["dt", "hour"]
    rows = scan("daily", "classifications")
    assert {(r["dt"], r["hour"]) for r in rows} == {("2026-11-01", None), ("2026-11-02", None), ("2026-11-03", "07")}
    assert validate_partition(output, "dt=2026-11-03/hour=07", ["classify"], run_id="hourly").input_rows == 12
    assert validate_partition(output, "dt=2026-11-02", ["classify"], run_id="day-2").input_rows == 12
    # A partition of the older shape, re-run after the evolution, is still exactly its own rows.
    run(settings(again, output, tiny_models, tasks="classify", partition=["dt=2026-11-02"], run_id="day-2-again"))
    assert validate_partition(output, "dt=2026-11-02", ["classify"], run_id="day-2-again").input_rows == 9
    assert len(scan("daily", "classifications", "dt == '2026-11-03'")) == 11


def _commit_partitions(namespace: str, days: list[str], staged: str) -> None:
    """One writer: replace each of ``days`` with its file, as the last step of a run does."""
    from albert_batch.contract import Manifest
    from albert_batch.iceberg import IcebergTarget, load_catalog, replace_partition
    from albert_batch.storage import Location

    target = IcebergTarget("local", namespace)
    catalog = load_catalog(target)
    for day in days:
        manifest = Manifest(table="rejects", run_id=f"run-{day}", partition={"dt": day}, tasks=["classify"], rows=3,
                            files=[], input={}, counts={}, models={}, precision="fp32")
        replace_partition(catalog, target, "rejects", {"dt": day}, [Location.parse(f"{staged}/{day}.parquet")],
                          manifest)


def test_writers_of_different_partitions_committing_at_once_all_land_once(tmp_path):
    """Commit conflicts on the catalog are redone on the refreshed table: no partition lost, none twice."""
    import pyarrow.parquet as pq

    from albert_batch.iceberg import IcebergTarget, load_catalog, prepare_table

    target = IcebergTarget("local", "concurrent")
    table = prepare_table(load_catalog(target), target, "rejects", pa.int64(), ["dt"])
    days = [f"2026-10-{d:02d}" for d in range(1, 13)]
    for day in days:
        pq.write_table(pa.table({"id": pa.array([1, 2, 3], pa.int64()), "reason": ["null_text"] * 3,
                                 "run_id": [f"run-{day}"] * 3, "detail": pa.nulls(3, pa.string()), "dt": [day] * 3},
                                schema=iceberg.table_schema("rejects", pa.int64(), ["dt"])),
                       tmp_path / f"{day}.parquet")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_commit_partitions, args=("concurrent", days[i::3], str(tmp_path)))
               for i in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=300)
        assert writer.exitcode == 0
    rows = scan("concurrent", "rejects")
    assert sorted((r["dt"], r["id"]) for r in rows) == sorted((day, i) for day in days for i in (1, 2, 3))
    table = table.refresh()
    assert {table.snapshot_by_id(s.snapshot_id).summary.additional_properties.get("albert-batch.run-id")
            for s in table.snapshots()} >= {f"run-{day}" for day in days}


def test_the_output_uri_names_a_catalog_and_a_namespace_and_never_a_credential():
    assert IcebergTarget.parse("iceberg://warehouse/analytics.reviews") == IcebergTarget("warehouse", "analytics.reviews")
    assert IcebergTarget.parse("iceberg://prod/nlp/reviews/").namespace == "nlp.reviews"
    for bad, message in (("iceberg://", "catalog name"), ("iceberg://prod", "namespace name"),
                         ("iceberg://user:secret@prod/ns", "no credentials"), ("iceberg://prod/ns?token=x", "query")):
        with pytest.raises(ConfigError, match=message) as raised:
            IcebergTarget.parse(bad)
        assert "secret" not in str(raised.value) and "token=x" not in str(raised.value)
    config = RunConfig(input="/data/in", output="iceberg://prod/nlp", classifier_model="/m", tasks="classify")
    assert config.output == "iceberg://prod/nlp"
    assert redact("postgresql://albert:hunter2@db:5432/catalog failed") == "postgresql://***@db:5432/catalog failed"
    assert redact("s3.secret-access-key=abc123 rejected; token: xyz") == "s3.secret-access-key=*** rejected; token=***"


@pytest.mark.slow
def test_a_warehouse_on_s3_and_a_catalog_that_cannot_be_used(tmp_path, tiny_models, s3_client):
    """The "lake" catalog keeps its warehouse in a (moto) S3 bucket. A catalog that is not configured, or
    whose database cannot be opened, stops the run before any work with exit code 2 and one line."""
    s3_client.create_dir("lake")
    source = corpus(tmp_path / "input", 10)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "ALBERT_BATCH_CACHE": str(tmp_path),
           "PYICEBERG_CATALOG__BROKEN__URI": "sqlite:////no/such/folder/catalog.db"}

    def cli(output: str) -> subprocess.CompletedProcess:
        argv = run_argv(settings(source, output, tiny_models, tasks="classify", run_id="lake-run"))[2:]
        return subprocess.run([sys.executable, "-m", "albert_batch.cli", "run", "-q", *argv], env=env,
                              capture_output=True, text=True, timeout=600)

    done = cli("iceberg://lake/nlp")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = scan("nlp", "classifications", catalog="lake")
    assert [r["id"] for r in rows] == [i for i in range(10) if i != 1]
    assert iceberg_table("nlp", "classifications", catalog="lake").location().startswith("s3://lake/warehouse/")
    summary = validate_partition("iceberg://lake/nlp", DAY, ["classify"], run_id="lake-run")
    assert summary.input_rows == 10 and json.dumps(summary.as_dict()).count(FAKE_SECRET) == 0

    for output, reason in (("iceberg://nowhere/nlp", "URI missing"), ("iceberg://broken/nlp", "unable to open")):
        failed = cli(output)
        assert failed.returncode == 2, failed.stderr[-3000:]
        last = failed.stderr.strip().splitlines()[-1]
        catalog = output.split("/")[2]
        assert last.startswith(f"albert-batch: error: output {output}: catalog {catalog!r} cannot be used ("), last
        assert reason in last and "Traceback" not in failed.stderr


def start_cli_killed_at(options: RunConfig, commits_before_kill: int) -> subprocess.CompletedProcess:
    """``albert-batch run`` in its own process, killed (SIGKILL) when it is about to make its commit number
    ``commits_before_kill`` + 1: 0 kills it with every unit staged and nothing committed, 1 between the first
    table's commit and the second's. It joins the test session's Ray (``RAY_ADDRESS``, set by `ray_cluster`):
    what is killed is the run's driver, which makes the commits; a Ray of its own would only add its start-up."""
    code = ("import os, signal, sys\n"
            "from albert_batch import iceberg\n"
            "from albert_batch.cli import main\n"
            "commit, made = iceberg.replace_partition, []\n"
            "def replace_partition(*args, **kwargs):\n"
            f"    if len(made) == {commits_before_kill}:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    made.append(commit(*args, **kwargs))\n"
            "iceberg.replace_partition = replace_partition\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, "run", "-q", *run_argv(options)[2:]], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_a_run_killed_before_or_between_its_commits_leaves_readers_a_whole_partition(tmp_path, tiny_models,
                                                                                     ray_cluster):
    output = "iceberg://local/killed"
    source = corpus(tmp_path / "input", 20)
    run(settings(source, output, tiny_models, run_id="before"))
    tables = ("classifications", "entities", "rejects")
    snapshots = {t: iceberg_table("killed", t).current_snapshot().snapshot_id for t in tables}
    changed = corpus(tmp_path / "changed", 15, start=50)

    killed = start_cli_killed_at(settings(changed, output, tiny_models, run_id="killed-early"), 0)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert {t: iceberg_table("killed", t).current_snapshot().snapshot_id for t in tables} == snapshots
    assert validate_partition(output, DAY, ["classify", "ner"], run_id="before").input_rows == 20

    killed = start_cli_killed_at(settings(changed, output, tiny_models, run_id="killed-between"), 1)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert iceberg_table("killed", "entities").current_snapshot().snapshot_id == snapshots["entities"]
    with pytest.raises(ValidationError, match="come from different runs"):
        validate_partition(output, DAY, ["classify", "ner"])

    summary = run(settings(changed, output, tiny_models, run_id="after"))
    assert summary.units["reused"] == summary.units["total"] == 1, "the killed runs' staged work is reused"
    assert validate_partition(output, DAY, ["classify", "ner"], run_id="after").input_rows == 15
    for table in ("classifications", "entities"):
        assert sorted(r["id"] for r in scan("killed", table)) == [i for i in range(50, 65) if i != 51], "each row once"


def test_a_table_whose_columns_cannot_take_the_run_s_rows_is_refused_naming_the_column():
    from albert_batch.errors import OutputError
    from albert_batch.iceberg import load_catalog, prepare_table

    target = IcebergTarget("local", "typed")
    catalog = load_catalog(target)
    prepare_table(catalog, target, "rejects", pa.int64(), ["dt"])
    with pytest.raises(OutputError, match=r"iceberg://local/typed/rejects has column id of type int64, but this run "
                                          r"writes string"):
        prepare_table(catalog, target, "rejects", pa.string(), ["dt"])
