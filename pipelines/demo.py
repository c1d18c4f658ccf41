"""`make demo`: the main job end to end on the embedded default — an in-process local Ray, the local
filesystem, a generated corpus and models built here (nothing is downloaded).

Until trained demo models exist, tiny *untrained* ALBERT models stand in: the pipeline, the output
contract and the figures are real, the labels and entities are random, and the summary says so.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from albert_batch import RunConfig, Task, corpus, run
from albert_batch.cli import format_summary
from albert_batch.model_init import init_model

ROOT = Path(__file__).resolve().parent.parent / ".demo"


def build_models(folder: Path) -> dict[str, str]:
    """Untrained tiny models over a tokenizer trained on the demo's training split (cached)."""
    classifier, ner = folder / "classifier", folder / "ner"
    if not (classifier / "model.safetensors").exists() or not (ner / "model.safetensors").exists():
        shutil.rmtree(folder, ignore_errors=True)
        texts = [d.text for d in corpus.generate(3000, seed=7, split="train")]
        init_model(classifier, Task.CLASSIFY, corpus.SENTIMENTS, texts=texts, vocab_size=4000, seed=1)
        ner.mkdir(parents=True)
        for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(classifier / name, ner / name)
        init_model(ner, Task.NER, corpus.NER_LABELS, seed=2)
    return {"classifier": str(classifier), "ner": str(ner)}


def build_corpus(folder: Path, rows: int) -> None:
    """The inference split, plus a few rows that must be rejected (no text, blank text)."""
    shutil.rmtree(folder, ignore_errors=True)
    corpus.write_corpus(folder, corpus.generate(rows, seed=7, split="inference"))
    bad = pa.table({"id": pa.array([9_000_001, 9_000_002, 9_000_003], pa.int64()),
                    "text": pa.array([None, "", " \t "], pa.string())})
    pq.write_table(bad, folder / "part-bad-rows.parquet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="documents in the demo corpus (default 2000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    print(f"demo: building the corpus ({args.rows} documents) and models under {ROOT}", flush=True)
    models = build_models(ROOT / "models")
    build_corpus(ROOT / "corpus", args.rows)
    output = ROOT / "output"
    summary = run(RunConfig(input=str(ROOT / "corpus"), output=str(output),
                            classifier_model=models["classifier"], ner_model=models["ner"]))
    print()
    print(format_summary(summary))
    print()
    print("NOTE: the demo models are UNTRAINED stand-ins (random weights): labels and entities above are")
    print("      random. The pipeline, the output contract and the throughput figures are real.")
    print(f"results: {output}  (read them with DuckDB, e.g. SELECT label, count(*) FROM "
          f"read_parquet('{output}/classifications/*/*.parquet', hive_partitioning=true) GROUP BY 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
