"""What scoring identical texts once (`albert_batch.pipeline.dedupe`) costs a corpus without repeats and
saves one with them: ``albert-batch run`` with de-duplication (the default) and with ``--no-dedupe``, in
turns (`benchmarks.turns`), on

- the benchmark corpus (log-normal lengths, every text distinct), and
- the same rows where ``--repeated`` of them (30% by default) carry a copy of another row's text, as
  templates, spam and retweets give; the repeats are spread over the whole corpus.

    python -m benchmarks.dedupe                        # 20,000 documents, tiny models, 3 runs each way
    python -m benchmarks.dedupe --docs 5000 --repeats 2

Prints JSON: each way's processing seconds (median), the change against de-duplication on, and the share
of rows the run found repeated.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import workload
from benchmarks.metrics import _cpu
from benchmarks.turns import in_turns

ROOT = Path(__file__).resolve().parent.parent
WAYS = {"dedupe": ((), {}), "no_dedupe": (("--no-dedupe",), {})}


def with_repeats(corpus: workload.Corpus, share: float, folder: Path) -> str:
    """The corpus's rows with ``share`` of them given another row's text (chosen at random, seeded)."""
    if not (folder / "part.parquet").exists():
        table = pq.read_table(corpus.folder, columns=["id", "text"])
        rng = np.random.default_rng(workload.SEED)
        texts = table.column("text").to_pylist()
        chosen = rng.choice(len(texts), size=int(len(texts) * share), replace=False)
        for row in chosen:
            texts[row] = texts[int(rng.integers(len(texts)))]
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": table.column("id"), "text": pa.array(texts, pa.string())}),
                       folder / "part.parquet")
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeated", type=float, default=0.3)
    parser.add_argument("--cache", default=str(ROOT / ".cache/bench"))
    args = parser.parse_args()
    cache = Path(args.cache)
    models = workload.build_models(cache, "tiny")
    corpus = workload.build_corpus(cache, args.docs, models)
    repeated = with_repeats(corpus, args.repeated, cache / f"repeats-{args.docs}-{args.repeated}")
    with tempfile.TemporaryDirectory(prefix="dedupe-bench-") as work:
        report = {"cpu": _cpu(), "docs": args.docs,
                  "distinct": in_turns(models, corpus.folder, WAYS, args.repeats, Path(work) / "distinct"),
                  "repeated": in_turns(models, repeated, WAYS, args.repeats, Path(work) / "repeated")}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
