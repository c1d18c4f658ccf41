"""`make demo`: the main job end to end on the embedded default — an in-process local Ray, the local
filesystem, a generated corpus, and demo models fine-tuned here on Ray Train (nothing is downloaded).

The models are trained once from the demo corpus's train split (four to twelve minutes on two
cores) and cached under .demo/models; their held-out scores are printed with the run's summary.

`make demo-iceberg` (``--iceberg``) then runs the same corpus into Iceberg tables, in a SQL catalog on
SQLite under .demo/iceberg (the catalog "demo", unless PYICEBERG_CATALOG__DEMO__* configures another),
reads them back as a consumer would (pyiceberg's scan, then DuckDB over its Arrow) and compares the two
publications' times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from albert_batch import RunConfig, Task, run
from albert_batch.cli import format_summary
from albert_batch.console import RunConsole
from albert_batch.dev import corpus
from albert_batch.pipeline.summary import RunSummary
from albert_batch.training.config import FinetuneConfig
from albert_batch.training.data import write_labelled
from albert_batch.training.finetune import REPORT, finetune

ROOT = Path(__file__).resolve().parent.parent / ".demo"
EVAL_DOCS = 500
# Measured on 2 cores (see the models issue's notes): sentiment is easy; NER from scratch needs many distinct
# name/context combinations more than many epochs.
TRAIN_DOCS = {Task.CLASSIFY: 2500, Task.NER: 20000}
EPOCHS = {Task.CLASSIFY: 2, Task.NER: 4}
MAX_LENGTH = 256


def build_models(folder: Path, say: Callable[[str], None] = print) -> dict[Task, dict]:
    """Fine-tune the demo classifier and NER model (cached: a folder with its report is complete)."""
    reports = {}
    for task in (Task.CLASSIFY, Task.NER):
        model = folder / task.value
        if not (model / REPORT).exists():
            shutil.rmtree(model, ignore_errors=True)
            data = folder / "data"
            for split, n in (("train", TRAIN_DOCS[task]), ("eval", EVAL_DOCS)):
                docs = corpus.generate(n, seed=7, split=split)
                targets = [d.sentiment for d in docs] if task is Task.CLASSIFY else [list(d.entities) for d in docs]
                write_labelled(data / f"{split}-{task.value}.parquet", [d.text for d in docs], targets, task)
            say(f"demo: fine-tuning the {task.value} model ({EPOCHS[task]} epochs, once; cached afterwards)")
            started = time.monotonic()
            finetune(FinetuneConfig(task=task, train=str(data / f"train-{task.value}.parquet"),
                                    eval=str(data / f"eval-{task.value}.parquet"), output=str(model), init="tiny",
                                    epochs=EPOCHS[task], max_length=MAX_LENGTH, seed=7))
            say(f"demo: {task.value} model trained in {time.monotonic() - started:.0f}s")
        reports[task] = json.loads((model / REPORT).read_text())
    return reports


def build_corpus(folder: Path, rows: int) -> None:
    """The inference split, plus a few rows that must be rejected (no text, blank text)."""
    shutil.rmtree(folder, ignore_errors=True)
    corpus.write_corpus(folder, corpus.generate(rows, seed=7, split="inference"))
    bad = pa.table({"id": pa.array([9_000_001, 9_000_002, 9_000_003], pa.int64()),
                    "text": pa.array([None, "", " \t "], pa.string())})
    pq.write_table(bad, folder / "part-bad-rows.parquet")


def main(argv: list[str] | None = None, **settings: Any) -> int:
    """The demo; ``settings`` are the run's further RunConfig settings (`make monitor` sizes its batches)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="documents in the demo corpus (default 2000)")
    parser.add_argument("--iceberg", action="store_true", help="also write the results to Iceberg tables")
    args = parser.parse_args(argv)
    config = RunConfig(input=str(ROOT / "corpus"), output=str(ROOT / "output"),
                       classifier_model=str(ROOT / "models" / Task.CLASSIFY.value),
                       ner_model=str(ROOT / "models" / Task.NER.value), **settings)
    # The console of `albert-batch run`: the demo's and the run's own lines with a progress line; Ray's output,
    # the training's included, goes to the run's details log.
    with RunConsole(config.run_id) as console:
        return demo(args, config, console.say)


def demo(args: argparse.Namespace, config: RunConfig, say: Callable[[str], None]) -> int:
    import ray
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # saving a small model is not long work
    # One Ray for training and the run.
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    reports = build_models(ROOT / "models", say)
    say(f"demo: building the corpus ({args.rows} documents) under {ROOT}")
    build_corpus(ROOT / "corpus", args.rows)
    output = ROOT / "output"
    summary = run(config)
    say("")
    say(format_summary(summary))
    classify, ner = reports[Task.CLASSIFY]["best_metrics"], reports[Task.NER]["best_metrics"]
    say(f"demo models, scored on the held-out eval split ({EVAL_DOCS} documents): "
        f"classification accuracy {classify['accuracy']:.3f} (macro-F1 {classify['macro_f1']:.3f}); "
        f"entity F1 {ner['f1']:.3f} (precision {ner['precision']:.3f}, recall {ner['recall']:.3f}); "
        f"fine-tuned in {reports[Task.CLASSIFY]['seconds'] + reports[Task.NER]['seconds']:.0f}s together")
    say(f"results: {output}  (read them with DuckDB, e.g. SELECT label, count(*) FROM "
        f"read_parquet('{output}/classifications/*/*.parquet', hive_partitioning=true) GROUP BY 1)")
    if args.iceberg:
        iceberg_demo(summary, say)
    say(f"quality report of the partition (label mix, scores, entities, lengths, throughput, drift against the "
        f"previous partition): {summary.report}")
    return 0


def iceberg_demo(hive: RunSummary, say: Callable[[str], None]) -> None:
    """The same corpus into Iceberg tables; read back through pyiceberg and DuckDB."""
    if not any(name.startswith("PYICEBERG_CATALOG__DEMO__") for name in os.environ):
        (ROOT / "iceberg/warehouse").mkdir(parents=True, exist_ok=True)
        os.environ.update({"PYICEBERG_CATALOG__DEMO__TYPE": "sql",
                           "PYICEBERG_CATALOG__DEMO__URI": f"sqlite:///{ROOT}/iceberg/catalog.db",
                           "PYICEBERG_CATALOG__DEMO__WAREHOUSE": f"file://{ROOT}/iceberg/warehouse"})
    import duckdb
    from pyiceberg.catalog import load_catalog  # reads its configuration once, at import: after the lines above
    say("\ndemo: the same corpus into Iceberg tables, iceberg://demo/reviews")
    config = RunConfig(input=str(ROOT / "corpus"), output="iceberg://demo/reviews",
                       classifier_model=str(ROOT / "models" / Task.CLASSIFY.value),
                       ner_model=str(ROOT / "models" / Task.NER.value))
    summary = run(config)
    say(format_summary(summary))
    say(f"publishing took {hive.timings['publish_s']:.2f}s to Hive folders (moves, manifests, _SUCCESS) and "
        f"{summary.timings['publish_s']:.2f}s to Iceberg (three catalog commits)")
    table = load_catalog("demo").load_table("reviews.classifications")
    day = dict(config.partition)["dt"]
    labels = duckdb.arrow(table.scan(row_filter=f"dt == '{day}'").to_arrow()).aggregate(
        "label, count(*) AS n", "label").order("label").fetchall()
    say(f"read back through pyiceberg and DuckDB, dt={day}: " + ", ".join(f"{label} {n}" for label, n in labels))
    say("tables: " + ", ".join(summary.partitions.values()) + f"  (catalog database {ROOT}/iceberg/catalog.db)")


if __name__ == "__main__":
    sys.exit(main())
