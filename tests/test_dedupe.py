"""Identical texts are tokenized and run through the model once per run (within a batch, and across the
batches a model actor runs); every row still gets its own results, the same as without de-duplication."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from albert_batch import RunConfig, run
from support import SCORE_TOLERANCE, TRICKY_TEXTS, read_published, write_corpus

PARTITION = "dt=2026-12-03"


def stages(tiny_models: dict[str, str], *, dedupe: bool, ledger: Any = None) -> tuple[Any, Any]:
    from albert_batch.config import Precision
    from albert_batch.contract import Task
    from albert_batch.inference import models
    from albert_batch.pipeline.stages import ModelStage, TokenizeStage

    uris = {Task.CLASSIFY: tiny_models["classifier"], Task.NER: tiny_models["ner"]}
    sha = {task: models.inspect(uri, task).weights_sha256 for task, uri in uris.items()}
    model = ModelStage(model_uris=uris, weights_sha256=sha, precision=Precision.FP32, use_gpu=False, torch_threads=1,
                       max_tokens_per_forward=512, window_overlap=0, dedupe=dedupe, ledger=ledger)
    return TokenizeStage(model_uris=uris, dedupe=dedupe), model


def close(got: Any, want: Any) -> bool:
    """Equal, floats within SCORE_TOLERANCE (fp32 scores of differently composed batches differ in the last bits)."""
    if isinstance(want, float):
        return isinstance(got, float) and abs(got - want) <= SCORE_TOLERANCE
    if isinstance(want, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(got) == len(want) and all(map(close, got, want))
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(close(got[k], want[k]) for k in want)
    return got == want


def test_a_model_actor_runs_each_distinct_text_once_and_gives_every_row_the_results_of_a_full_run(
        tiny_models, ray_cluster, monkeypatch):
    import torch

    from albert_batch.pipeline.ledger import start_ledger

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    first = ["Anna flew to Berlin.", "Lisbon is sunny.", "Anna flew to Berlin.", "  ", "Anna flew to Berlin."]
    second = ["Lisbon is sunny.", "Kraków at night.", "Kraków at night."]
    try:
        ledger = start_ledger()
        tokenize, model = stages(tiny_models, dedupe=True, ledger=ledger)
        plain_tokenize, plain_model = stages(tiny_models, dedupe=False)
        for texts in (first, second):
            batch = pa.table({"id": list(range(len(texts))), "text": texts})
            tokenized = tokenize(batch)
            assert tokenized.equals(plain_tokenize(batch)), "repeats get their first copy's features"
            got, want = model(tokenized).drop_columns(["processed_at"]), plain_model(tokenized).drop_columns(["processed_at"])
            assert got.column_names == want.column_names
            for name in got.column_names:
                assert close(got.column(name).to_pylist(), want.column(name).to_pylist()), name
    finally:
        torch.set_num_threads(threads)
    rows = ledger.snapshot()["rows"]
    # 7 accepted rows (the blank one is rejected), 3 distinct texts: the second batch's Lisbon comes from the cache.
    assert (rows["accepted_rows"], rows["rows_run"]) == (7, 3)


def test_a_run_over_a_corpus_of_repeats_publishes_what_a_run_without_de_duplication_does_and_says_what_it_saved(
        tiny_models, ray_cluster, tmp_path):
    texts = [f"{TRICKY_TEXTS[i % 150 % 7]} Review {i % 150}." for i in range(600)]  # 150 distinct texts, 4 times each
    texts[3] = None
    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/part.parquet", list(range(len(texts))), texts)
    summaries, published = {}, {}
    for name, no_dedupe in (("deduped", False), ("every-row", True)):
        output = tmp_path / name
        summaries[name] = run(RunConfig(input=str(tmp_path / "input"), output=str(output), partition=[PARTITION],
                                        classifier_model=tiny_models["classifier"], ner_model=tiny_models["ner"],
                                        precision="fp32", run_id=name, no_dedupe=no_dedupe,
                                        resources={"batch_size": 100}))
        published[name] = {
            "classifications": {r["id"]: (r["label"], r["score"]) for r in read_published(output, "classifications")},
            "entities": {r["id"]: [(e["label"], e["start"], e["end"]) for e in r["entities"]]
                         for r in read_published(output, "entities")},
            "rejects": {r["id"]: r["reason"] for r in read_published(output, "rejects")}}
    got, want = published["deduped"], published["every-row"]
    assert got["entities"] == want["entities"] and got["rejects"] == want["rejects"] == {3: "null_text"}
    assert got["classifications"].keys() == want["classifications"].keys()
    for row, (label, score) in want["classifications"].items():
        assert got["classifications"][row] == (label, pytest.approx(score, abs=SCORE_TOLERANCE))
    accepted = sum(1 for t in texts if t is not None)
    distinct = len({t for t in texts if t is not None})
    assert distinct == 150
    assert summaries["deduped"].dedupe == {"enabled": True, "accepted_rows": accepted, "rows_run": distinct,
                                           "duplicate_rows": accepted - distinct,
                                           "duplicate_share": round((accepted - distinct) / accepted, 4)}
    assert summaries["every-row"].dedupe["enabled"] is False
    assert summaries["every-row"].dedupe["rows_run"] == accepted
    saved = {task: summaries["every-row"].forward[task]["real_tokens"] - summaries["deduped"].forward[task]["real_tokens"]
             for task in ("classify", "ner")}
    assert all(tokens > 0 for tokens in saved.values()), "the repeats' tokens were not computed again"
