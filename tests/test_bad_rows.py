"""One bad row costs one row: a row whose data makes a stage raise is rejected with reason processing_error
and the error's type and first line as its detail, the rest of its batch goes on, and every other row is
what a clean run gives; bytes that are not UTF-8 are rejected as invalid_utf8, without an error; a run with
more processing errors than its budget publishes nothing. Every string encoding Parquet writers use is read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_batch import RunConfig, run
from albert_batch.contract import REJECTS
from albert_batch.errors import ErrorBudgetExceeded, StorageError
from albert_batch.pipeline import inputs, isolation
from albert_batch.pipeline.isolation import DETAIL, FAULTS_ENV, REASON, isolated
from albert_batch.storage import Location
from support import SCORE_TOLERANCE, TRICKY_TEXTS, published_partitions, read_published

NOT_UTF8 = b"caf\xe9 cr\xe8me, encoded as Latin-1"


# ------------------------------------------------------------------------------- finding the bad rows


def batch_of(ids: list[int], rejected: dict[int, str] | None = None) -> pa.Table:
    rejected = rejected or {}
    return pa.table({"id": ids, REASON: pa.array([rejected.get(i) for i in ids], pa.string()),
                     DETAIL: pa.nulls(len(ids), pa.string())})


class Stage:
    """A stand-in stage: doubles each accepted row's id, raising for the ``bad`` ones; counts its rows."""

    def __init__(self, bad: set[int], error: type[BaseException] = ValueError) -> None:
        self.bad, self.error, self.rows, self.passed = bad, error, 0, 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        accepted = [i for i, r in zip(batch.column("id").to_pylist(), batch.column(REASON).to_pylist()) if r is None]
        self.rows += len(accepted)
        if hit := self.bad & set(accepted):
            raise self.error(f"cannot handle row {min(hit)}\nsecond line of the message")
        self.passed += len(accepted)
        reasons = batch.column(REASON).to_pylist()
        doubled = [None if r else 2 * i for i, r in zip(batch.column("id").to_pylist(), reasons)]
        return batch.append_column("doubled", pa.array(doubled, pa.int64()))


def test_the_rows_a_stage_fails_are_rejected_with_a_detail_and_the_rest_keep_their_results():
    stage = Stage(bad={7, 300})
    batch = batch_of(list(range(1000)), rejected={5: "blank_text"})
    out = isolated(stage, batch, stage="model").to_pylist()
    assert [r["id"] for r in out] == list(range(1000)), "every row, in its place"
    assert out[7][REASON] == "processing_error" and out[7][DETAIL] == "ValueError: cannot handle row 7"
    assert out[300][REASON] == "processing_error" and out[300]["doubled"] is None
    assert out[5][REASON] == "blank_text" and out[5][DETAIL] is None, "earlier rejects keep their reason"
    assert all(r["doubled"] == 2 * r["id"] and r[REASON] is None for r in out if r["id"] not in (5, 7, 300))
    assert stage.passed == 997, "each good row's work is done once: the parts that passed are kept"


@pytest.mark.parametrize("error", [StorageError, MemoryError, ConnectionResetError, KeyboardInterrupt])
def test_infrastructure_errors_are_raised_as_they_are_and_never_split(error):
    stage = Stage(bad={3}, error=error)
    with pytest.raises(error):
        isolated(stage, batch_of(list(range(64))), stage="model")
    assert stage.rows == 64, "called once"


def test_a_batch_that_fails_only_as_a_whole_raises_its_error():
    def fails_when_large(batch: pa.Table) -> pa.Table:
        if batch.num_rows > 10:
            raise RuntimeError("too many rows at once")
        return batch

    with pytest.raises(RuntimeError, match="too many rows at once"):
        isolated(fails_when_large, batch_of(list(range(40))), stage="tokenize")


def test_a_rust_panic_in_the_tokenizer_is_a_data_error_and_signals_are_not():
    panic = type("PanicException", (BaseException,), {})
    assert isolation.is_data_error(panic("index out of bounds"))
    assert isolation.is_data_error(UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid"))
    assert not isolation.is_data_error(SystemExit(1)) and not isolation.is_data_error(KeyboardInterrupt())
    assert len(isolation.detail_of(ValueError("x" * 10_000))) == isolation.DETAIL_CHARS


# ----------------------------------------------------------------------------- encodings of strings


def parquet(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def read_back(path: Path, id_type: pa.DataType | None = None) -> list[dict[str, Any]]:
    """The rows the read stage makes of one file, with the plan's id type."""
    plan = inputs.plan_input(Location.parse(str(path)), id_column="id", text_column="text")
    (unit,) = plan.units()
    units = pa.Table.from_pylist([{"unit": 0, "segments": [
        {"path": s.path, "start": s.start, "stop": s.stop} for s in unit.segments]}])
    tables = list(inputs._read_units(units, scheme="file", id_column="id", text_column="text",
                                     id_type=id_type or plan.id_type, retries_to=None))
    return pa.concat_tables(tables).select(["id", "text", REASON]).to_pylist()


TEXTS = ["Anna flew to Berlin.", None, "Café crème"]


@pytest.mark.parametrize("text_type", ["string", "large_string", "string_view", "dictionary", "binary",
                                       "large_binary"])
def test_every_string_encoding_of_the_text_column_is_read(tmp_path, text_type):
    if text_type == "dictionary":
        texts = pa.array(TEXTS).dictionary_encode()
    elif "binary" in text_type:
        texts = pa.array([t.encode() if t else None for t in TEXTS], getattr(pa, text_type)())
    else:
        texts = pa.array(TEXTS, getattr(pa, text_type)())
    path = parquet(pa.table({"id": [1, 2, 3], "text": texts}), tmp_path / "part.parquet")
    assert read_back(path) == [{"id": i + 1, "text": t, REASON: None} for i, t in enumerate(TEXTS)]


@pytest.mark.parametrize("id_type", ["string", "large_string", "string_view", "dictionary", "binary"])
def test_every_string_encoding_of_the_id_column_is_read(tmp_path, id_type):
    names = ["doc-a", "doc-b", "doc-c"]
    if id_type == "dictionary":
        ids = pa.array(names).dictionary_encode()
    elif id_type == "binary":
        ids = pa.array([n.encode() for n in names], pa.binary())
    else:
        ids = pa.array(names, getattr(pa, id_type)())
    path = parquet(pa.table({"id": ids, "text": ["a", "b", "c"]}), tmp_path / "part.parquet")
    rows = read_back(path)
    assert [r["id"] for r in rows] == names
    assert inputs.plan_input(Location.parse(str(path)), id_column="id", text_column="text").id_type in (
        pa.string(), pa.large_string())


def test_a_pandas_categorical_text_column_is_read(tmp_path):
    frame = pd.DataFrame({"id": [1, 2, 3], "text": pd.Categorical(["good", "bad", "good"])})
    frame.to_parquet(tmp_path / "part.parquet")
    assert [r["text"] for r in read_back(tmp_path / "part.parquet")] == ["good", "bad", "good"]


@pytest.mark.parametrize("column_type", [pa.binary(), pa.string()])
def test_bytes_that_are_not_utf8_reject_their_row_as_invalid_utf8_without_an_error(tmp_path, column_type):
    raw = pa.array([b"fine", NOT_UTF8, None], pa.binary())
    texts = raw if column_type == pa.binary() else raw.view(pa.string())  # what a mis-encoded export holds
    path = parquet(pa.table({"id": [1, 2, 3], "text": texts}), tmp_path / "part.parquet")
    assert read_back(path) == [{"id": 1, "text": "fine", REASON: None},
                               {"id": 2, "text": None, REASON: "invalid_utf8"},
                               {"id": 3, "text": None, REASON: None}]


# ------------------------------------------------------------------------------------- whole runs


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """60 rows in two files (one unit of work); row 13's text is Latin-1 bytes in a string column."""
    folder = tmp_path / "input"
    folder.mkdir()
    texts = [f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} (row {i})".encode() for i in range(60)]
    texts[13] = NOT_UTF8
    column = pa.array(texts, pa.binary()).view(pa.string())
    table = pa.table({"id": pa.array(range(60), pa.int64()), "text": column})
    pq.write_table(table.slice(0, 30), folder / "part-0.parquet")
    pq.write_table(table.slice(30), folder / "part-1.parquet")
    return folder


# Rows that fail in each stage (the test-only fault hook; see albert_batch.pipeline.isolation).
POISON = {"tokenize": [4], "model": [21, 40], "write": [33]}


def settings(corpus: Path, output: Path | str, models: dict[str, str], **overrides: Any) -> RunConfig:
    return RunConfig(**{"input": str(corpus), "output": str(output), "classifier_model": models["classifier"],
                        "ner_model": models["ner"], "partition": ["dt=2026-12-01"], "precision": "fp32",
                        "resources": {"batch_size": 16}, **overrides})


def results(output: Path) -> dict[str, dict[int, Any]]:
    return {"classifications": {r["id"]: (r["label"], r["score"]) for r in read_published(output, "classifications")},
            "entities": {r["id"]: [(e["label"], e["start"], e["end"]) for e in r["entities"]]
                         for r in read_published(output, "entities")}}


def assert_same_results(got: dict[str, dict[int, Any]], want: dict[str, dict[int, Any]], ids: set[int]) -> None:
    assert set(got["classifications"]) == set(got["entities"]) == ids
    for row_id in ids:
        assert got["entities"][row_id] == want["entities"][row_id]
        label, score = want["classifications"][row_id]
        assert got["classifications"][row_id][0] == label
        assert got["classifications"][row_id][1] == pytest.approx(score, abs=SCORE_TOLERANCE)


def test_rows_that_fail_in_any_stage_are_rejected_and_a_resumed_run_keeps_the_same_rejects(
        tmp_path, corpus, tiny_models, ray_cluster, monkeypatch):
    clean = tmp_path / "clean"
    run(settings(corpus, clean, tiny_models))
    monkeypatch.setenv(FAULTS_ENV, json.dumps(POISON))
    output = tmp_path / "output"

    # A budget of no errors at all: the run fails before publishing, naming the error, and keeps its work.
    with pytest.raises(ErrorBudgetExceeded) as failed:
        run(settings(corpus, output, tiny_models, max_error_rate=0, run_id="strict"))
    message = str(failed.value)
    assert "4 of 60 input rows (6.67%) failed in processing, more than max_error_rate 0 allows" in message
    assert "the most frequent error, on 1 row(s): InjectedFault: injected fault in the " in message
    assert "Nothing was published" in message
    assert not published_partitions(output, "classifications")

    # The default budget (1%: of 60 rows, four are more) would fail it too; with 10%, the next run reuses every
    # unit the failed run staged, rejects and all.
    summary = run(settings(corpus, output, tiny_models, max_error_rate=0.1, run_id="resumed"))
    assert summary.units == {"total": 1, "reused": 1, "reused_from_runs": ["strict"], "earlier": {
        "run_id": "strict", "where": "staged", "files": {"unchanged": 2, "new": 0, "changed": 0, "gone": 0}}}
    assert summary.rejects_by_reason == {"processing_error": 4, "invalid_utf8": 1}
    rejects = {r["id"]: (r["reason"], r["detail"], r["run_id"]) for r in read_published(output, REJECTS)}
    assert rejects == {
        13: ("invalid_utf8", None, "strict"),
        4: ("processing_error", "InjectedFault: injected fault in the tokenize stage for row 4", "strict"),
        21: ("processing_error", "InjectedFault: injected fault in the model stage for row 21", "strict"),
        40: ("processing_error", "InjectedFault: injected fault in the model stage for row 40", "strict"),
        33: ("processing_error", "InjectedFault: injected fault in the write stage for row 33", "strict"),
    }
    assert_same_results(results(output), results(clean), set(range(60)) - set(rejects))
    assert json.loads((output / "rejects/dt=2026-12-01/_manifest.json").read_text())["rejects_by_reason"] == {
        "invalid_utf8": 1, "processing_error": 4}


def test_a_run_whose_every_row_fails_publishes_nothing_and_an_iceberg_rejects_table_gains_the_detail_column(
        tmp_path, corpus, tiny_models, ray_cluster, monkeypatch):
    from albert_batch.iceberg import IcebergTarget, load_catalog, prepare_table

    output = "iceberg://local/badrows"
    target = IcebergTarget.parse(output)
    old = pa.schema([pa.field("id", pa.int64()), pa.field("reason", pa.string(), nullable=False),
                     pa.field("run_id", pa.string(), nullable=False), pa.field("dt", pa.string())])
    catalog = load_catalog(target)
    catalog.create_namespace_if_not_exists(target.namespace)
    catalog.create_table(f"{target.namespace}.{REJECTS}", schema=old)  # a table from before the detail column

    monkeypatch.setenv(FAULTS_ENV, json.dumps({"model": list(range(60))}))
    with pytest.raises(ErrorBudgetExceeded, match=r"59 of 60 input rows .* failed in processing"):
        run(settings(corpus, output, tiny_models))
    table = prepare_table(catalog, target, REJECTS, pa.int64(), ["dt"])
    assert table.current_snapshot() is None, "nothing was published"

    monkeypatch.setenv(FAULTS_ENV, json.dumps({"model": [21]}))
    run(settings(corpus, output, tiny_models, fresh=True))
    rows = catalog.load_table(f"{target.namespace}.{REJECTS}").scan().to_arrow().to_pylist()
    assert sorted((r["id"], r["reason"], r["detail"]) for r in rows) == [
        (13, "invalid_utf8", None),
        (21, "processing_error", "InjectedFault: injected fault in the model stage for row 21")]


def test_every_text_encoding_in_one_run_with_a_binary_column_s_undecodable_row(
        tmp_path, tiny_models, ray_cluster):
    folder = tmp_path / "input"
    folder.mkdir()
    texts = ["Anna flew to Berlin.", "Kraków in May", "   ", "Nairobi"]
    encodings = {"string": pa.array(texts), "large_string": pa.array(texts, pa.large_string()),
                 "string_view": pa.array(texts, pa.string_view()), "dictionary": pa.array(texts).dictionary_encode(),
                 "binary": pa.array([t.encode() for t in texts[:3]] + [NOT_UTF8], pa.binary())}
    for number, (name, column) in enumerate(encodings.items()):
        ids = pa.array(range(number * 4, number * 4 + 4), pa.int64())
        pq.write_table(pa.table({"id": ids, "text": column}), folder / f"part-{name}.parquet")
    summary = run(settings(folder, tmp_path / "output", tiny_models))
    assert summary.input_rows == 20 and summary.accepted_rows == 14
    assert summary.rejects_by_reason == {"blank_text": 5, "invalid_utf8": 1}
    labels = {r["id"]: r["label"] for r in read_published(tmp_path / "output", "classifications")}
    assert len({labels[i] for i in (0, 4, 8, 12, 16)}) == 1, "the same text, however stored, the same label"


GIANT_SENTENCE = "Anna Schmidt flew from Berlin to Paris with Acme Corp. "


def test_a_text_of_tens_of_megabytes_is_tokenized_in_bounded_memory(tiny_models):
    """The tokenizer stage cuts a giant text into pieces at whitespace: tokenizing 22 MB for NER (ids,
    offsets, special marks) peaks at well under a gigabyte, where tokenizing it whole took about 7 GB."""
    code = (
        "import resource, pyarrow as pa\n"
        "from albert_batch.contract import Task\n"
        "from albert_batch.pipeline.stages import TokenizeStage\n"
        f"stage = TokenizeStage(model_uris={{Task.CLASSIFY: {tiny_models['classifier']!r}, "
        f"Task.NER: {tiny_models['ner']!r}}})\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"out = stage(pa.table({{'id': [1], 'text': [{GIANT_SENTENCE!r} * 400_000]}}))\n"
        "print(out.column('tokens')[0].as_py(), len(out.column('ner.offsets')[0]) // 2,\n"
        "      (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    tokens, ner_tokens, grown_mb = map(int, result.stdout.split())
    assert tokens == ner_tokens > 4_000_000
    assert grown_mb < 1000, f"{grown_mb} MB more at the peak"


def test_a_long_text_is_processed_in_windows_or_rejected_as_too_long_when_asked(tmp_path, tiny_models, ray_cluster):
    folder = tmp_path / "input"
    folder.mkdir()
    long_text = GIANT_SENTENCE * 20_000  # 1.1 MB, about 220,000 tokens
    pq.write_table(pa.table({"id": [1, 2], "text": [long_text, "Nairobi"]}), folder / "part.parquet")
    summary = run(settings(folder, tmp_path / "output", tiny_models, tasks="ner"))
    assert summary.accepted_rows == 2
    (giant,) = [r for r in read_published(tmp_path / "output", "entities") if r["id"] == 1]
    assert max(e["end"] for e in giant["entities"]) > len(long_text) - 1000, "the windows reach its end"
    assert all(long_text[e["start"]:e["end"]] == e["text"] for e in giant["entities"][-50:])

    limited = run(settings(folder, tmp_path / "limited", tiny_models, tasks="ner", max_text_chars=1_000_000))
    assert limited.rejects_by_reason == {"too_long": 1}
    assert [r["id"] for r in read_published(tmp_path / "limited", REJECTS)] == [1]
