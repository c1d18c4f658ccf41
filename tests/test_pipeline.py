"""The batch run on a real local Ray, read back with DuckDB the way a warehouse reads it."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AlbertForSequenceClassification, AlbertForTokenClassification, AutoTokenizer, pipeline

from albert_batch import RunConfig, run
from albert_batch.pipeline import backpressure, cluster, runner, sizing
from albert_batch.pipeline.inputs import plan_input, read_input
from support import (
    LONG_TEXT,
    SCORE_TOLERANCE,
    TRICKY_TEXTS,
    manifest,
    published_partitions,
    read_published,
    write_corpus,
)


def corpus_rows(n: int, start: int = 0) -> tuple[list[int], list[str | None]]:
    texts: list[str | None] = []
    for i in range(n):
        texts.append(f"{TRICKY_TEXTS[i % len(TRICKY_TEXTS)]} (row {start + i})")
    return list(range(start, start + n)), texts


def config(tmp_path: Path, models: dict[str, str], **overrides) -> RunConfig:
    settings = {
        "input": str(tmp_path / "input"),
        "output": str(tmp_path / "output"),
        "classifier_model": models["classifier"],
        "ner_model": models["ner"],
        "partition": ["dt=2026-11-01"],
        "precision": "fp32",
        **overrides,
    }
    return RunConfig(**settings)


def test_every_input_row_lands_in_exactly_one_place(tmp_path, tiny_models, ray_cluster):
    # Two Hive-partitioned input files, with rows that must be rejected and why.
    (tmp_path / "input/lang=en").mkdir(parents=True)
    (tmp_path / "input/lang=de").mkdir(parents=True)
    ids, texts = corpus_rows(150)
    texts[3], texts[4], texts[5], texts[6] = None, "", "  \t\n ", LONG_TEXT
    write_corpus(tmp_path / "input/lang=en/part-0.parquet", ids, texts)
    more_ids, more_texts = corpus_rows(90, start=1000)
    write_corpus(tmp_path / "input/lang=de/part-1.parquet", [*more_ids, None], [*more_texts, "no id"])

    summary = run(config(tmp_path, tiny_models, run_id="run-a"))

    out = tmp_path / "output"
    accepted = {i for i, t in zip(ids + more_ids, texts + more_texts, strict=True) if t and t.strip()}
    classifications = read_published(out, "classifications")
    entities = read_published(out, "entities")
    rejects = read_published(out, "rejects")
    assert sorted(r["id"] for r in classifications) == sorted(accepted)
    assert sorted(r["id"] for r in entities) == sorted(accepted)
    assert sorted(((r["id"], r["reason"]) for r in rejects), key=str) == sorted(
        [(3, "null_text"), (4, "blank_text"), (5, "blank_text"), (None, "null_id")], key=str
    )
    assert summary.input_rows == 241 == len(classifications) + len(rejects)
    assert summary.rejects_by_reason == {"null_text": 1, "blank_text": 2, "null_id": 1}
    for row in classifications:
        assert str(row["dt"]) == "2026-11-01" and row["run_id"] == "run-a"
        assert row["model"] == tiny_models["classifier"]
        assert row["label"] in {"negative", "neutral", "positive"} and 0 < row["score"] <= 1
        assert row["truncated"] == (row["id"] == 6)
        assert row["processed_at"].tzinfo is not None

    # Entity offsets point into the original text, exactly.
    originals = dict(zip(ids + more_ids, texts + more_texts, strict=True))
    spans = [(r["id"], e) for r in entities for e in r["entities"]]
    assert len(spans) > 100
    for row_id, entity in spans:
        assert originals[row_id][entity["start"] : entity["end"]] == entity["text"]
    assert any(e["start"] > 3000 for i, e in spans if i == 6), "entities beyond the first window are kept"

    meta = manifest(out, "classifications", "dt=2026-11-01")
    assert meta["run_id"] == "run-a"
    assert meta["counts"] == {"input_rows": 241, "accepted_rows": 237, "rejected_rows": 4,
                              "classifications_rows": 237, "entities_rows": 237, "rejects_rows": 4}
    assert meta["input"] == {"location": str(tmp_path / "input"), "files": 2, "rows": 241,
                             "fingerprint": meta["input"]["fingerprint"]}
    assert len(meta["input"]["fingerprint"]) == 32, "a digest of the input files' names, sizes and versions"
    assert len(meta["models"]["classify"]["weights_sha256"]) == 64
    assert {"ray", "transformers", "torch", "pyarrow", "python"} <= set(meta["versions"])
    assert sum(meta["label_counts"].values()) == 237
    assert meta["stages"] == summary.stages and summary.stages["model_actors"] >= 1, "the layout that ran"


def test_fp32_results_match_the_reference_pipelines_end_to_end(tiny_models, tricky_run):
    """The run's rows for the tricky texts (ids 0-11; Hugging Face's pipelines tag only a long text's first
    window) against the reference pipelines on each text."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["classifier"])
    classify = pipeline("text-classification", tokenizer=tokenizer, device="cpu",
                        model=AlbertForSequenceClassification.from_pretrained(tiny_models["classifier"]))
    tag = pipeline("token-classification", tokenizer=tokenizer, device="cpu", aggregation_strategy="simple",
                   model=AlbertForTokenClassification.from_pretrained(tiny_models["ner"]))
    got_labels = {r["id"]: r for r in read_published(tricky_run, "classifications")}
    got_entities = {r["id"]: r["entities"] for r in read_published(tricky_run, "entities")}
    for i, text in enumerate(TRICKY_TEXTS):
        want = classify(text, truncation=True)[0]
        assert got_labels[i]["label"] == want["label"]
        assert got_labels[i]["score"] == pytest.approx(want["score"], abs=SCORE_TOLERANCE)
        assert [(e["label"], e["start"], e["end"]) for e in got_entities[i]] == [
            (e["entity_group"], e["start"], e["end"]) for e in tag(text)
        ]


def test_rerunning_a_partition_replaces_it_and_leaves_others_alone(tmp_path, tiny_models, ray_cluster):
    (tmp_path / "input").mkdir()
    ids, texts = corpus_rows(60)
    write_corpus(tmp_path / "input/part.parquet", ids, texts)
    out = tmp_path / "output"
    run(config(tmp_path, tiny_models, tasks="classify", partition=["dt=2026-11-01"], run_id="first"))
    run(config(tmp_path, tiny_models, tasks="classify", partition=["dt=2026-11-02"], run_id="other-day"))
    other_day = sorted(p.name for p in (out / "classifications/dt=2026-11-02").iterdir())

    ids, texts = corpus_rows(25, start=500)
    write_corpus(tmp_path / "input/part.parquet", ids, texts)
    run(config(tmp_path, tiny_models, tasks="classify", partition=["dt=2026-11-01"], run_id="second"))

    rows = read_published(out, "classifications")
    day1 = [r for r in rows if str(r["dt"]) == "2026-11-01"]
    assert sorted(r["id"] for r in day1) == ids, "the re-run's rows only, no duplicates"
    assert {r["run_id"] for r in day1} == {"second"}
    assert sorted(p.name for p in (out / "classifications/dt=2026-11-02").iterdir()) == other_day
    assert {r["run_id"] for r in rows if str(r["dt"]) == "2026-11-02"} == {"other-day"}
    assert not (out / "entities").exists(), "a classify-only run writes no entities"
    assert not list((out / "_staging").glob("*")), "nothing is left in staging"


def test_ids_keep_their_type_and_columns_can_be_renamed(tmp_path, tiny_models, ray_cluster):
    (tmp_path / "input").mkdir()
    table = pa.table({"doc_id": [f"doc-{i}" for i in range(30)], "body": [TRICKY_TEXTS[i % 12] for i in range(30)],
                      "unused": list(range(30))})
    pq.write_table(table, tmp_path / "input/docs.parquet")
    run(config(tmp_path, tiny_models, id_column="doc_id", text_column="body", partition=["dt=2026-11-03", "src=web"]))

    folder = tmp_path / "output/classifications/dt=2026-11-03/src=web"
    assert published_partitions(tmp_path / "output", "classifications") == [folder]
    written = pq.read_table(next(folder.glob("*.parquet")))
    assert written.schema.field("id").type == pa.string()
    assert written.column_names == ["id", "label", "score", "scores", "truncated", "model", "run_id", "processed_at"]
    entities = pq.read_table(next((tmp_path / "output/entities/dt=2026-11-03/src=web").glob("*.parquet")))
    assert entities.schema.field("entities").type == pa.list_(
        pa.struct([("label", pa.string()), ("text", pa.string()), ("start", pa.int32()), ("end", pa.int32()),
                   ("score", pa.float64())])
    )
    assert sorted(r["id"] for r in read_published(tmp_path / "output", "entities")) == sorted(table["doc_id"].to_pylist())


def test_a_corpus_of_only_rejects_still_publishes_typed_empty_partitions(tmp_path, tiny_models, ray_cluster):
    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/part.parquet", [1, 2, 3], [None, " ", ""], id_type=pa.int32())
    summary = run(config(tmp_path, tiny_models))
    assert (summary.accepted_rows, summary.rejected_rows) == (0, 3)
    out = tmp_path / "output"
    assert read_published(out, "classifications") == []
    assert len(read_published(out, "rejects")) == 3
    files = list((out / "classifications/dt=2026-11-01").glob("*.parquet"))
    assert len(files) == 1 and pq.read_schema(files[0]).field("id").type == pa.int32()


def test_one_input_file_reaches_the_stages_in_blocks_of_one_batch(tmp_path, tiny_models, ray_cluster):
    """Ray Data's map stages write blocks of up to 128 MiB, so a whole file would reach the model stage as
    one task, on one actor; batch-sized blocks spread it over every actor."""
    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/part.parquet", list(range(1000)), [f"text number {i}" for i in range(1000)])
    settings = config(tmp_path, tiny_models)
    plan = plan_input(settings.input_location, id_column="id", text_column="text")
    ds = read_input(settings, plan, list(plan.units()), rows_per_block=128)
    sizes = [len(block) for block in ds.iter_batches(batch_size=None, batch_format="pyarrow")]
    assert sum(sizes) == 1000 and max(sizes) <= 128 and len(sizes) >= 8, sizes


def test_the_read_takes_one_unit_of_row_groups_per_task_so_it_cannot_run_far_ahead(tmp_path, tiny_models,
                                                                                   ray_cluster):
    """A read task runs to its end once started; the run reads one unit of work per task, at most UNIT_BYTES
    of row groups (16 MiB; 100 kB here, about one file), and every row once, numbered within its unit."""
    (tmp_path / "input").mkdir()
    for number in range(4):
        ids = list(range(number * 1000, (number + 1) * 1000))
        write_corpus(tmp_path / f"input/part-{number}.parquet", ids, [f"text number {i} " + "x" * 80 for i in ids])
    settings = config(tmp_path, tiny_models)
    plan = plan_input(settings.input_location, id_column="id", text_column="text")
    units = plan.units(100_000)
    assert len(units) == 4 and [u.rows for u in units] == [1000] * 4
    ds = read_input(settings, plan, list(units), rows_per_block=128).materialize()
    assert "MapBatches(_read_units): 4 tasks executed" in ds.stats()
    rows = pa.concat_tables(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert sorted(rows.column("id").to_pylist()) == list(range(4000))
    assert sorted(zip(rows.column("unit").to_pylist(), rows.column("row").to_pylist(), strict=True)) == [
        (unit, row) for unit in range(4) for row in range(1000)]


def test_no_stage_runs_more_than_a_few_batches_ahead_of_the_next(tmp_path, tiny_models, ray_cluster, monkeypatch,
                                                                 caplog):
    """The tokenizer is many times faster than the model. Left to Ray Data, its features for most of the
    corpus would wait in the object store, so memory would grow with the corpus; each stage is held to a
    spare batch per model actor (at least two) ahead of the next (here the tokenizer stage of a run laid out
    as on GPUs, with tokenizer actors of its own). The driver takes the model stage's output
    as it comes, and a write task stages a file's rows (1,000 here) at a time; publishing merges the staged
    files into one."""
    (tmp_path / "input").mkdir()
    ids, texts = corpus_rows(6000)
    write_corpus(tmp_path / "input/part.parquet", ids, texts)
    most_waiting: dict[str, int] = {}
    measure = backpressure.waiting

    def recording(op, after):
        rows, size = measure(op, after)
        most_waiting[op.name] = max(rows, most_waiting.get(op.name, 0))
        return rows, size

    monkeypatch.setattr(backpressure, "waiting", recording)
    monkeypatch.setattr(sizing, "ROWS_PER_FILE", 1000)
    monkeypatch.setattr(runner, "QUEUE_BYTES", 1)  # rows alone: this corpus's features are ~1 MB in all
    with caplog.at_level(logging.INFO, logger="albert_batch.pipeline.compact"):
        summary = run(config(tmp_path, tiny_models, resources={"batch_size": 200, "tokenizer_actors": 1}))

    assert summary.accepted_rows == 6000 and len(read_published(tmp_path / "output", "classifications")) == 6000
    assert summary.stages["max_rows_ahead"] == 400  # two batches: one model actor on this cluster
    tokenizer = next(v for k, v in most_waiting.items() if "Tokenize" in k)
    # Checked before each new task; an actor may have two tasks in flight past that.
    assert tokenizer <= 400 + 2 * 200, most_waiting
    assert not any("ModelStage" in k for k in most_waiting), "the last stage is never held back"
    assert len(published_partitions(tmp_path / "output", "classifications")) == 1
    assert "merged 6 staged files (6000 rows)" in caplog.text
    assert len(list((tmp_path / "output/classifications/dt=2026-11-01").glob("*.parquet"))) == 1


def test_the_tokenizer_stage_loads_neither_torch_nor_transformers(tiny_models):
    """Tokenizer actors start in a fraction of a second and stay small: they call the Rust tokenizer only."""
    code = (
        "import sys, pyarrow as pa\n"
        "from albert_batch.contract import Task\n"
        "from albert_batch.pipeline.stages import TokenizeStage\n"
        f"stage = TokenizeStage(model_uris={{Task.CLASSIFY: {tiny_models['classifier']!r}, Task.NER: {tiny_models['ner']!r}}})\n"
        "out = stage(pa.table({'id': [1, 2], 'text': ['Anna flew to Berlin.', ' ']}))\n"
        "assert out.column('reject_reason').to_pylist() == [None, 'blank_text']\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_the_model_stage_and_the_writer_hand_freed_heap_pages_back(tiny_models, tmp_path):
    """Passes of new shapes leave freed activations in glibc's arenas, and a write leaves a file's buffers:
    the model stage trims once per batch, the writer once per file. (In a child process: the stage sets
    torch's threads and Arrow's allocator for its whole process.)"""
    code = (
        "import pyarrow as pa\n"

        "from albert_batch.config import Precision\n"
        "from albert_batch.contract import Task\n"
        "from albert_batch.inference import models\n"
        "from albert_batch.pipeline import heap, stages, writer\n"
        "from albert_batch.storage import Location\n"
        "trim, calls = heap.MALLOC_TRIM, []\n"
        "assert trim is not None, 'glibc here: the trim must be found, not silently skipped'\n"
        "heap.MALLOC_TRIM = lambda pad: calls.append(pad) or trim(pad)\n"
        f"uris = {{Task.CLASSIFY: {tiny_models['classifier']!r}, Task.NER: {tiny_models['ner']!r}}}\n"
        "weights = {task: models.inspect(uri, task).weights_sha256 for task, uri in uris.items()}\n"
        "model = stages.ModelStage(model_uris=uris, weights_sha256=weights, precision=Precision.FP32, use_gpu=False,\n"
        "                          torch_threads=1, max_tokens_per_forward=512, window_overlap=0)\n"
        "tokenize = stages.TokenizeStage(model_uris=uris)\n"
        "outs = [model(tokenize(pa.table({'id': list(range(len(texts))), 'text': texts, 'unit': [0] * len(texts),\n"
        "                                  'row': list(range(n, n + len(texts)))})))\n"
        "        for n, texts in ((0, ['Anna flew to Berlin.']), (1, ['Krakow and Lisbon.', 'Nairobi, twice: Nairobi.']))]\n"
        "print(calls)\n"
        f"folder = Location.parse({str(tmp_path)!r})\n"
        "staging = writer.StagingWriter(folder=folder, table_dirs={t: folder.child(t) for t in ('classifications', "
        "'entities', 'rejects')},\n"
        "                               run_id='r', models=uris, id_type=pa.int64())\n"
        "assert staging.write(outs) == 3\n"
        "print(calls)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-2:] == ["[0, 0]", "[0, 0, 0]"]


@pytest.mark.gpu
def test_gpu_actors_match_the_reference_pipelines_in_fp32(tmp_path, tiny_models, ray_cluster):
    """Fractional-GPU model actors, pinned-memory copies and queued forward passes give the CPU results."""
    import torch

    assert torch.cuda.is_available() and ray_cluster.cluster_resources().get("GPU"), "needs a CUDA GPU visible to Ray"
    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/part.parquet", list(range(len(TRICKY_TEXTS))), TRICKY_TEXTS)
    run(config(tmp_path, tiny_models, resources={"num_gpus_per_actor": 0.5}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["classifier"])
    classify = pipeline("text-classification", tokenizer=tokenizer, device="cpu",
                        model=AlbertForSequenceClassification.from_pretrained(tiny_models["classifier"]))
    got = {r["id"]: r for r in read_published(tmp_path / "output", "classifications")}
    for i, text in enumerate(TRICKY_TEXTS):
        want = classify(text, truncation=True)[0]
        assert got[i]["label"] == want["label"]
        assert got[i]["score"] == pytest.approx(want["score"], abs=SCORE_TOLERANCE)


def test_an_error_in_a_ray_worker_reaches_the_caller_as_one_line_of_its_own_type(ray_cluster):
    import ray.data

    from albert_batch import AlbertBatchError, ModelLoadError

    class FailsToStart:  # local classes travel to the workers by value
        def __init__(self):
            raise ModelLoadError("model m changed during the run")

        def __call__(self, batch):
            return batch

    def fails(batch):
        raise ValueError("a bug")

    def error_of(ds) -> AlbertBatchError:
        with pytest.raises(Exception) as raised:  # what Ray hands back: the worker's traceback as the message
            ds.materialize()
        assert "Traceback" in str(raised.value) or 'File "' in str(raised.value)
        return cluster.worker_error(raised.value, "run r failed")

    started = error_of(ray.data.range(4).map_batches(FailsToStart, compute=ray.data.ActorPoolStrategy(size=1)))
    assert type(started) is ModelLoadError and str(started) == "run r failed: model m changed during the run"
    called = error_of(ray.data.range(4).map_batches(fails))
    assert type(called) is AlbertBatchError and str(called) == "run r failed: ValueError: a bug"


def test_an_embedded_ray_listens_only_on_free_ports(ray_cluster):
    """Ray's fixed default port for its dashboard agent (52365) would keep a ``ray start`` head started later
    on the same machine from taking job submissions; an embedded Ray (this session's, as a run starts it)
    takes a free one."""
    (node,) = ray_cluster.nodes()
    assert node["DashboardAgentListenPort"] not in (0, 52365)


def test_an_embedded_ray_starts_only_the_processes_a_run_needs(ray_cluster):
    """No autoscaler monitor (one node, nothing to scale), no log monitor (this session's Ray sends no worker
    output to the driver), and no API server (with the dashboard off it would serve only usage statistics,
    and Ray's start would wait for it); the GCS, the raylet and its agents — the dashboard agent serves the
    metrics — run."""
    import psutil
    from ray._private import ray_constants

    node = ray_cluster._private.worker._global_node
    assert set(node.all_processes) == {ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET}
    session = node.get_session_dir_path()  # this Ray's processes name it; another Ray of this process's would not

    def commands(processes: list[psutil.Process]) -> list[str]:
        found = []
        for process in processes:
            try:
                found.append(" ".join(process.cmdline()))
            except psutil.Error:  # exited meanwhile, or exited and not yet reaped (an earlier test's child)
                continue
        return found

    children = commands(psutil.Process().children(recursive=True))
    assert not [command for command in children if "dashboard.py" in command and session in command]
    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    agents = commands(raylet.children())
    assert any(command.startswith("ray::DashboardAgent") for command in agents)
    assert any(command.startswith("ray::RuntimeEnvAgent") for command in agents)
