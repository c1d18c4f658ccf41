"""In fp32, our predictors give what Hugging Face's reference pipelines give, on tricky text; long
texts are truncated (classification) or covered by overlapping windows (NER)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from transformers import AlbertForSequenceClassification, AlbertForTokenClassification, AutoTokenizer, pipeline

from albert_batch.config import Precision
from albert_batch.contract import Task
from albert_batch.inference import models
from albert_batch.inference import predictor as predictor_module
from albert_batch.inference.ner import NerPredictor
from albert_batch.inference.predictor import Encoder, token_budget_batches
from albert_batch.inference.predictors import build_predictor
from support import SCORE_TOLERANCE, TRICKY_TEXTS

LONG_TEXT = " ".join(f"Anna Schmidt met Zhang Wei in Berlin, trip {i}, for Acme Corp." for i in range(150))


def reference(folder: str, task: Task):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if task is Task.CLASSIFY:
        model = AlbertForSequenceClassification.from_pretrained(folder)
        return pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    model = AlbertForTokenClassification.from_pretrained(folder)
    return pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu", aggregation_strategy="simple")


def ours(folder: str, task: Task, **kwargs):
    return build_predictor(models.inspect(folder, task), precision=Precision.FP32, **kwargs)


def test_classification_matches_the_reference_pipeline(tiny_models):
    folder = tiny_models["classifier"]
    hf = reference(folder, Task.CLASSIFY)
    results = ours(folder, Task.CLASSIFY)([*TRICKY_TEXTS, LONG_TEXT])
    for text, got in zip([*TRICKY_TEXTS, LONG_TEXT], results, strict=True):
        want = hf(text, truncation=True)[0]
        assert got["label"] == want["label"], text
        assert got["score"] == pytest.approx(want["score"], abs=SCORE_TOLERANCE), text
        assert set(got["scores"]) == {"negative", "neutral", "positive"}
        assert got["scores"][got["label"]] == pytest.approx(got["score"])
        assert sum(got["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert [r["truncated"] for r in results] == [False] * len(TRICKY_TEXTS) + [True]


def test_labels_do_not_depend_on_batch_composition(tiny_models):
    """Length-sorted, padded batches give each text the result it gets alone."""
    predictor = ours(tiny_models["classifier"], Task.CLASSIFY, max_tokens_per_forward=512)
    together = predictor(TRICKY_TEXTS)
    alone = [predictor([t])[0] for t in TRICKY_TEXTS]
    for a, b in zip(together, alone, strict=True):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=SCORE_TOLERANCE)


def entity_tuples(entities, *, hf: bool):
    key = "entity_group" if hf else "label"
    return [(e[key], int(e["start"]), int(e["end"])) for e in entities]


def test_entities_match_the_reference_pipeline(tiny_models):
    folder = tiny_models["ner"]
    hf = reference(folder, Task.NER)
    results = ours(folder, Task.NER)(TRICKY_TEXTS)
    total = 0
    for text, got in zip(TRICKY_TEXTS, results, strict=True):
        want = hf(text)
        assert entity_tuples(got["entities"], hf=False) == entity_tuples(want, hf=True), text
        for g, w in zip(got["entities"], want, strict=True):
            assert g["score"] == pytest.approx(float(w["score"]), abs=SCORE_TOLERANCE)
        total += len(want)
    assert total > 20, "the random model should tag plenty of tokens; otherwise this test proves little"


def test_entity_text_is_the_exact_unpadded_slice_of_the_original(tiny_models):
    for text, result in zip(TRICKY_TEXTS, ours(tiny_models["ner"], Task.NER)(TRICKY_TEXTS), strict=True):
        for entity in result["entities"]:
            assert entity["text"] == text[entity["start"] : entity["end"]]
            assert entity["text"] == entity["text"].strip() and entity["text"]


def test_long_documents_are_covered_by_overlapping_windows(tiny_models):
    folder = tiny_models["ner"]
    predictor = ours(folder, Task.NER, window_overlap=128)
    tokens = predictor.preprocess([LONG_TEXT])
    offsets = tokens["offsets"][0]
    assert len(offsets) > 1200, "the text must span several windows"
    assert predictor.windows(len(offsets))[-1] == len(offsets) - 510

    entities = predictor([LONG_TEXT])[0]["entities"]
    # Nothing after token 512 is lost: entities are found to the very end of the text.
    after_512 = [e for e in entities if e["start"] >= offsets[512][0]]
    assert after_512 and max(e["end"] for e in entities) > offsets[-60][0]
    # Spans come in text order across window seams.
    assert all(a["start"] <= b["start"] for a, b in pairwise(entities))

    # Up to where the second window takes over, tokens keep the first window's scores: there the result
    # equals the reference pipeline's, which sees the text truncated to that same first window.
    seam = offsets[400][0]
    hf = reference(folder, Task.NER)(LONG_TEXT)
    want = [e for e in entity_tuples(hf, hf=True) if e[2] <= seam]
    got = [e for e in entity_tuples(entities, hf=False) if e[2] <= seam]
    assert got == want and len(want) > 10


def test_window_starts_cover_every_token(tiny_models):
    predictor = ours(tiny_models["ner"], Task.NER, window_overlap=128)
    assert isinstance(predictor, NerPredictor)
    for length in (1, 509, 510, 511, 892, 893, 5000):
        starts = predictor.windows(length)
        covered = set()
        for s in starts:
            covered.update(range(s, min(length, s + 510)))
        assert covered == set(range(length))
        assert all(b - a <= 510 - 128 for a, b in pairwise(starts))


def test_short_window_models_overlap_by_half_a_window(tiny_models):
    predictor = ours(tiny_models["ner"], Task.NER, window_overlap=128)
    predictor.max_length = 130  # a model fine-tuned with --max-length 130: 128 content tokens per window
    starts = predictor.windows(1000)
    assert all(b - a == 64 for a, b in pairwise(starts[:-1])), "steps of half a window, never of one token"
    assert starts[-1] == 1000 - 128 and len(starts) == 15


def test_bf16_gives_the_same_labels_on_clear_cases(tiny_models):
    fp32 = ours(tiny_models["classifier"], Task.CLASSIFY)(TRICKY_TEXTS)
    bf16 = build_predictor(models.inspect(tiny_models["classifier"], Task.CLASSIFY), precision=Precision.BF16)
    assert str(bf16.dtype) == "torch.bfloat16"
    agree = [a["label"] == b["label"] for a, b in zip(fp32, bf16(TRICKY_TEXTS), strict=True) if a["score"] > 0.6]
    assert agree and all(agree)


@pytest.mark.parametrize("piece_chars", [predictor_module.PIECE_CHARS, 40])
def test_the_rust_encoder_tokenizes_exactly_as_the_fast_tokenizer(tiny_models, monkeypatch, piece_chars):
    """The tokenizer stage calls the Rust tokenizer directly (no transformers import); it must give the
    ids, offsets and special-token marks that the transformers tokenizer gives, also where it cuts a long
    text into pieces (here every text longer than 40 characters, at whitespace of every kind)."""
    monkeypatch.setattr(predictor_module, "PIECE_CHARS", piece_chars)
    info = models.inspect(tiny_models["ner"], Task.NER)
    texts = [*TRICKY_TEXTS, LONG_TEXT, " \t".join(TRICKY_TEXTS)]
    want = AutoTokenizer.from_pretrained(tiny_models["ner"])(
        texts, add_special_tokens=False, return_offsets_mapping=True, return_special_tokens_mask=True)
    got = Encoder.load(info).encode(texts)
    assert [e.ids.tolist() for e in got] == want["input_ids"]
    assert [e.offsets.tolist() for e in got] == [[list(o) for o in row] for row in want["offset_mapping"]]
    assert [e.special.astype(int).tolist() for e in got] == want["special_tokens_mask"]
    assert Encoder.load(info).ids(texts) == want["input_ids"]


def test_token_budget_batches_cover_every_row_once_within_the_budget():
    lengths = np.array([5, 300, 40, 512, 41, 7, 120, 510, 2, 64])
    groups = token_budget_batches(lengths, 1024)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    for group in groups:
        assert len(group) == 1 or len(group) * lengths[group].max() <= 1024
    widths = [lengths[g].max() for g in groups]
    assert widths == sorted(widths), "length-sorted: padding stays small"


def test_bf16_models_run_the_fused_gelu_and_fp32_models_keep_hugging_faces(tiny_models):
    import torch
    from transformers.activations import NewGELUActivation

    from albert_batch.inference.albert import NewGELU

    info = models.inspect(tiny_models["classifier"], Task.CLASSIFY)
    fp32 = build_predictor(info, precision=Precision.FP32)
    bf16 = build_predictor(info, precision=Precision.BF16)
    assert any(isinstance(m, NewGELU) for m in fp32.model.modules())
    assert not any(isinstance(m, NewGELU) for m in bf16.model.modules())
    x = torch.linspace(-8, 8, 10_001)
    assert torch.equal(NewGELU()(x), NewGELUActivation()(x)), "Hugging Face's formula, op for op"
    assert torch.allclose(torch.nn.GELU(approximate="tanh")(x), NewGELU()(x), atol=1e-6), "the same formula"


def test_cpu_passes_side_by_side_give_the_results_of_one_pass_at_a_time(tiny_models):
    """A CPU model actor runs its forward passes side by side, torch on one thread in each; the results
    must not change, and the passes must really spread over the threads."""
    import threading

    import torch

    texts = [*TRICKY_TEXTS, LONG_TEXT] * 3
    threads_before = torch.get_num_threads()
    try:
        for task, folder in ((Task.CLASSIFY, tiny_models["classifier"]), (Task.NER, tiny_models["ner"])):
            want = ours(folder, task, max_tokens_per_forward=256)(texts)
            predictor = ours(folder, task, max_tokens_per_forward=256, parallel_passes=2)
            seen: set[tuple[str, int]] = set()
            predictor.model.register_forward_hook(
                lambda *_, seen=seen: seen.add((threading.current_thread().name, torch.get_num_threads())))
            got = predictor(texts)
            for a, b in zip(want, got, strict=True):
                if task is Task.CLASSIFY:
                    assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
                else:
                    assert entity_tuples(a["entities"], hf=False) == entity_tuples(b["entities"], hf=False)
            assert seen == {("forward_0", 1), ("forward_1", 1)}
    finally:
        torch.set_num_threads(threads_before)


def test_parallel_passes_must_be_positive(tiny_models):
    with pytest.raises(ValueError, match="parallel_passes must be at least 1"):
        ours(tiny_models["classifier"], Task.CLASSIFY, parallel_passes=0)
