"""Cost that follows rows, not files: small input files are packed into units of work, a table's staged
files are merged into few files when published, and a partition's many files are moved, deleted and
checked a bounded number at a time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from albert_batch import storage
from albert_batch.contract import CLASSIFICATIONS, REJECTS, Manifest, RejectReason, schema
from albert_batch.dev.s3_proxy import FaultyProxy
from albert_batch.errors import PublishError, StorageError, ValidationError
from albert_batch.pipeline import compact, inputs
from albert_batch.pipeline.destination import HiveFolders
from albert_batch.pipeline.isolation import REASON
from albert_batch.storage import Location, S3Settings

PARTITION = "dt=2026-12-05"


def small_files(folder: Path, files: int, rows_per_file: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(files):
        ids = range(number * rows_per_file, (number + 1) * rows_per_file)
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": [f"text {i:06d}" for i in ids]}),
                       folder / f"part-{number:04d}.parquet")


def plan(folder: Path) -> inputs.InputPlan:
    return inputs.plan_input(Location.parse(str(folder)), id_column="id", text_column="text")


def test_small_files_are_packed_into_units_of_at_most_the_unit_size_and_file_count(tmp_path):
    small_files(tmp_path / "input", 250, 4)
    found = plan(tmp_path / "input")
    assert len(found.units()) == 1, "1,000 rows in 250 files are one unit at the defaults"

    by_files = found.units(max_files=100)
    assert [len(u.segments) for u in by_files] == [100, 100, 50]
    assert [u.rows for u in by_files] == [400, 400, 200]
    assert [s.path for u in by_files for s in u.segments] == [f.path for f in found.files], "every file once, in order"

    file_bytes = found.files[0].row_groups[0][1]
    by_bytes = found.units(max_bytes=10 * file_bytes)
    assert len(by_bytes) == 25 and all(len(u.segments) == 10 for u in by_bytes)
    assert [u.index for u in by_bytes] == list(range(25))


def test_a_large_file_among_small_ones_is_cut_at_row_groups_and_its_neighbours_packed(tmp_path):
    folder = tmp_path / "input"
    small_files(folder, 3, 100)
    big = pa.table({"id": pa.array(range(1000, 1600), pa.int64()), "text": [f"text {i}" for i in range(600)]})
    pq.write_table(big, folder / "part-0001b.parquet", row_group_size=100)  # between the 2nd and 3rd small file
    found = plan(folder)
    group_bytes = max(size for f in found.files for _, size in f.row_groups)
    units = found.units(max_bytes=2 * group_bytes)

    segments = [[(Path(s.path).name, s.start, s.stop) for s in u.segments] for u in units]
    assert segments == [
        [("part-0000.parquet", 0, 1), ("part-0001.parquet", 0, 1)],
        [("part-0001b.parquet", 0, 2)],
        [("part-0001b.parquet", 2, 4)],
        [("part-0001b.parquet", 4, 6)],
        [("part-0002.parquet", 0, 1)],
    ]
    assert sum(u.rows for u in units) == found.num_rows == 900


def test_a_unit_of_files_in_different_string_encodings_is_read_as_one_numbered_run_of_rows(tmp_path):
    """Each file keeps its own encoding (plain strings, a pandas categorical, binary with a row that is not
    UTF-8); the unit's rows are numbered across its files, and the bad row is rejected where it is."""
    folder = tmp_path / "input"
    folder.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "text": ["one", "two"]}), folder / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([3, 4], pa.int64()),
                             "text": pa.array(["three", "three"]).dictionary_encode()}), folder / "b.parquet")
    pq.write_table(pa.table({"id": pa.array([5, 6], pa.int64()), "text": pa.array([b"five", b"\xff six"], pa.binary())}),
                   folder / "c.parquet")
    found = plan(folder)
    (unit,) = found.units()
    batch = pa.Table.from_pylist([{"unit": unit.index, "segments": [
        {"path": s.path, "start": s.start, "stop": s.stop} for s in unit.segments]}])
    (rows,) = inputs._read_units(batch, scheme="file", id_column="id", text_column="text", id_type=found.id_type,
                                 retries_to=None)
    assert rows.column("id").to_pylist() == [1, 2, 3, 4, 5, 6]
    assert rows.column("row").to_pylist() == list(range(6))
    assert rows.column("text").to_pylist() == ["one", "two", "three", "three", "five", None]
    assert rows.column(REASON).to_pylist() == [None] * 5 + [RejectReason.INVALID_UTF8.value]


def test_the_input_fingerprint_covers_each_file_s_name_size_and_version_and_how_units_cut_them(tmp_path):
    small_files(tmp_path / "input", 20, 5)
    first = plan(tmp_path / "input")
    assert first.fingerprint(first.units()) == plan(tmp_path / "input").fingerprint(first.units())
    assert first.fingerprint(first.units()) != first.fingerprint(first.units(max_files=10))
    pq.write_table(pa.table({"id": pa.array([7], pa.int64()), "text": ["changed"]}),
                   tmp_path / "input/part-0007.parquet")
    changed = plan(tmp_path / "input")
    assert changed.fingerprint(changed.units()) != first.fingerprint(first.units())


def classifications(ids: range, run_id: str = "run") -> pa.Table:
    rows = len(ids)
    return pa.table({
        "id": pa.array(ids, pa.int64()), "label": ["positive"] * rows, "score": [0.5] * rows,
        "scores": [[("positive", 0.5), ("negative", 0.5)]] * rows, "truncated": [False] * rows,
        "model": ["models/classifier"] * rows, "run_id": [run_id] * rows,
        "processed_at": [dt.datetime(2026, 12, 5, tzinfo=dt.UTC)] * rows,
    }, schema=schema(CLASSIFICATIONS, pa.int64()))


def stage(folder: Location, pieces: int, rows: int) -> dict[str, int]:
    """``pieces`` staged files of ``rows`` rows each, as the writer names them; name -> rows, in order."""
    def write(piece: int) -> tuple[str, int]:
        name = f"part-run-u{piece:06d}-abc.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(classifications(range(piece * rows, (piece + 1) * rows)), sink)
        storage.write_bytes(folder.child(name), sink.getvalue().to_pybytes())
        return name, rows

    return dict(storage.concurrently(write, range(pieces)))


def test_storage_operations_run_a_bounded_number_at_a_time_in_order_and_the_first_failure_is_raised():
    import threading
    import time

    running, most, taken = 0, 0, []
    lock = threading.Lock()

    def op(item: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002 * (item % 3))
        with lock:
            running -= 1
        if item == 70:
            raise StorageError("item 70 failed")
        return item * 2

    def items():  # a generator: never listed whole
        for item in range(100):
            taken.append(item)
            yield item

    results = storage.each_concurrently(op, items(), limit=4)
    assert [next(results) for _ in range(10)] == [i * 2 for i in range(10)]
    assert len(taken) <= 10 + 4, "at most `limit` items ahead of the ones taken"
    with pytest.raises(StorageError, match="item 70 failed"):
        list(results)
    assert most <= 4 and len(taken) <= 71 + 4


def test_groups_close_once_they_reach_the_target():
    sizes = {"a": 40, "b": 70, "c": 10, "d": 100, "e": 5}
    assert compact.groups(sizes, 100) == [["a", "b"], ["c", "d"], ["e"]]
    assert compact.groups(sizes, 1000) == [["a", "b", "c", "d", "e"]]
    assert compact.groups(sizes, 1) == [["a"], ["b"], ["c"], ["d"], ["e"]]


def test_staged_files_are_merged_in_order_into_files_of_the_target_size_and_their_rows_checked(tmp_path):
    folder = Location.parse(str(tmp_path / "staged"))
    files = stage(folder, 30, 50)
    piece_bytes = min(f.size for f in storage.list_files(folder))
    merged = compact.compact(folder, files, target_bytes=10 * piece_bytes, run_id="run")

    assert len(merged.files) == 3 and merged.merged == list(files)
    ids = [pq.read_table(str(tmp_path / "staged" / name)).column("id").to_pylist() for name in merged.files]
    assert [len(part) for part in ids] == [500, 500, 500]
    assert [i for part in ids for i in part] == list(range(1500))
    assert compact.compact(folder, {merged.files[0]: 500}, target_bytes=1, run_id="run").files == [merged.files[0]]

    files["part-run-u000003-abc.parquet"] = 49  # the piece's record says one row fewer than its file holds
    with pytest.raises(PublishError, match=r"part-run-u000003-abc.parquet holds 50 rows, but its piece of work "
                                           r"recorded 49; nothing was published"):
        compact.compact(folder, files, target_bytes=10 * piece_bytes, run_id="run")


def test_a_partition_of_many_staged_files_is_merged_and_published_on_s3_a_bounded_number_of_requests_at_a_time(
        s3, s3_client):
    """200 staged files replace a published partition of 100 files on S3: they become three files, the old
    ones go, and no step sends more than `storage.CONCURRENCY` requests at once (the merge: that many reads
    ahead of its upload), while each step does send many at once."""
    s3_client.create_dir("results")
    output = Location.parse("s3://results/many")
    target = output.child(CLASSIFICATIONS, PARTITION)
    old = stage(target, 100, 1)
    storage.write_bytes(target.child("_SUCCESS"), b"")
    destination = HiveFolders(output, PARTITION).prepare([CLASSIFICATIONS])
    files = stage(destination.table_dirs[CLASSIFICATIONS], 200, 5)
    staged_bytes = sum(f.size for f in storage.list_files(destination.table_dirs[CLASSIFICATIONS]))

    with FaultyProxy(s3) as proxy, storage.s3_settings(S3Settings(endpoint_url=proxy.endpoint)):
        proxy.delay = lambda request: 0.01  # a store's latency, so that requests overlap
        destination.file_bytes = staged_bytes // 3 + 1
        compacted = destination.compact("new", {CLASSIFICATIONS: files})
        merging = proxy.most_in_flight
        proxy.reset_in_flight()
        manifest = Manifest(table=CLASSIFICATIONS, run_id="new", partition={"dt": "2026-12-05"}, tasks=["classify"],
                            rows=1000, files=compacted[CLASSIFICATIONS].files, input={}, counts={}, models={},
                            precision="fp32")
        destination.publish("new", {CLASSIFICATIONS: manifest}, {},
                            merged={table: c.merged for table, c in compacted.items()})
        publishing = proxy.most_in_flight

    assert len(compacted[CLASSIFICATIONS].files) == 3
    published = [f.base_name for f in storage.list_files(target)]
    assert sorted(published) == sorted([*compacted[CLASSIFICATIONS].files, "_SUCCESS", "_manifest.json"])
    assert not set(old) & set(published)
    table = pads.dataset(f"results/many/{CLASSIFICATIONS}/{PARTITION}", filesystem=s3_client, format="parquet",
                         exclude_invalid_files=True).to_table()
    assert sorted(table.column("id").to_pylist()) == list(range(1000)), "each staged row once"
    assert not storage.list_files(output.child("_staging")), "the staging folder and the merged files are gone"
    assert 1 < merging <= storage.CONCURRENCY + 1, merging
    assert 1 < publishing <= storage.CONCURRENCY, publishing


def test_validation_reads_every_footer_and_names_a_file_that_is_not_the_contract_s(tmp_path):
    from albert_batch.pipeline.validate import validate_partition

    folder = tmp_path / "output" / REJECTS / PARTITION
    folder.mkdir(parents=True)
    good = pa.table({"id": pa.array([1], pa.int64()), "reason": ["empty_text"], "run_id": ["r"], "detail": [None]},
                    schema=schema(REJECTS, pa.int64()))
    names = [f"part-{i:03d}.parquet" for i in range(40)]
    for name in names:
        pq.write_table(good if name != names[17] else good.drop_columns(["detail"]), folder / name)
    manifest = Manifest(table=REJECTS, run_id="r", partition={"dt": "2026-12-05"}, tasks=[], rows=40, files=names,
                        input={}, counts={"input_rows": 40, "rejected_rows": 40}, models={}, precision="fp32")
    (folder / "_manifest.json").write_bytes(manifest.to_json())
    (folder / "_SUCCESS").touch()
    with pytest.raises(ValidationError, match=rf"{names[17]} does not have the rejects schema of the output contract"):
        validate_partition(str(tmp_path / "output"), PARTITION, [])
    pq.write_table(good, folder / names[17])
    assert validate_partition(str(tmp_path / "output"), PARTITION, []).tables[REJECTS]["files"] == 40
