"""Precisions beyond fp32: int8 (opt-in, CPUs only) agrees with fp32 on trained-style models and is
refused on GPU actors; bf16 on a CPU without bf16 instructions warns with the measured slowdown."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from albert_batch import ConfigError, RunConfig, load_predictor
from albert_batch.config import Precision
from albert_batch.contract import Task
from albert_batch.dev import corpus
from albert_batch.inference import device, models
from albert_batch.inference.predictors import build_predictor
from albert_batch.training.data import bucketed_batches, encode
from albert_batch.training.model_init import init_model

EVAL_DOCS = 200
HEAD_SCALE = 60.0  # the NER head's weights, scaled: logits as decisive as a trained model's
NER_O_BIAS = 4.0  # and most tokens outside entities, as in real text


@pytest.fixture(scope="module")
def trained_style_models(tmp_path_factory):
    """A tiny classifier and NER model that stand in for trained ones (about ten seconds).

    What int8 disturbs is set by the encoder's activations and the logits' margins. The classifier is
    fine-tuned on the demo corpus for a few dozen steps (about 90% accurate), since only training gives
    its pooled output a strong dependence on the text. The NER model is built: a trained encoder keeps the
    activation scale of its standard initialisation (0.02; the suite's other tiny models use a wide 0.4
    for varied labels, which gives activations no trained model has), and its head is decisive, so a
    standard-initialised model's head is scaled until it is. The demo's trained models are measured in
    BENCHMARKS.md."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("trained-style")
    docs = corpus.generate(800, seed=11, split="train")
    classifier = init_model(root / "classifier", Task.CLASSIFY, corpus.SENTIMENTS, texts=[d.text for d in docs],
                            vocab_size=1000, seed=1)
    fine_tune(classifier, [d.text for d in docs], [d.sentiment for d in docs])
    ner = root / "ner"
    ner.mkdir()
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json"):
        (ner / name).write_bytes((classifier / name).read_bytes())
    init_model(ner, Task.NER, corpus.NER_LABELS, seed=2)
    weights = load_file(ner / "model.safetensors")
    weights["classifier.weight"] *= HEAD_SCALE
    weights["classifier.bias"][corpus.NER_LABELS.index("O")] += NER_O_BIAS
    save_file(weights, ner / "model.safetensors", metadata={"format": "pt"})
    return {"classifier": str(classifier), "ner": str(ner)}


def fine_tune(folder, texts: list[str], labels: list[str], *, epochs: int = 2, batch_size: int = 32) -> None:
    """Plain torch fine-tuning in this process, on one thread (two threads on two busy cores wait on
    each other at every operator); texts cut to 64 tokens."""
    import torch
    from transformers import AlbertForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    try:
        model = AlbertForSequenceClassification.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        rows = encode(texts, labels, tokenizer, Task.CLASSIFY, model.config.label2id, max_length=64).to_pylist()
        rows = [{k: np.asarray(v) for k, v in row.items()} for row in rows]
        steps = epochs * -(-len(rows) // batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        schedule = get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
        rng = np.random.default_rng(1)
        model.train()
        for _ in range(epochs):
            for batch in bucketed_batches(rows, batch_size, rng, tokenizer.pad_token_id):
                model(**batch).loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
        model.save_pretrained(folder)
    finally:
        torch.set_num_threads(threads)


def eval_texts() -> list[str]:
    return [d.text for d in corpus.generate(EVAL_DOCS, seed=11, split="eval")]


def both(folder: str, task: Task):
    info = models.inspect(folder, task)
    return build_predictor(info, precision=Precision.FP32), build_predictor(info, precision=Precision.INT8)


def spans(result) -> set[tuple[str, int, int]]:
    return {(e["label"], e["start"], e["end"]) for e in result["entities"]}


def test_int8_quantises_the_encoder_s_linear_layers_and_keeps_fp32_logits(trained_style_models):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    fp32, int8 = both(trained_style_models["classifier"], Task.CLASSIFY)
    quantised = [m for m in int8.model.modules() if isinstance(m, DynamicQuantizedLinear)]
    assert len(quantised) == 6, "query, key, value, attention output and the feed-forward pair of the shared layer"
    assert not any(isinstance(m, DynamicQuantizedLinear) for m in fp32.model.modules())
    assert int8.model.classifier.weight.dtype == fp32.model.classifier.weight.dtype, "the head stays fp32"
    [logits] = int8.forward(int8.sequences(int8.preprocess(["A fine phone."])))
    assert logits.dtype == np.float32


def test_int8_labels_agree_with_fp32_on_a_trained_style_classifier(trained_style_models):
    fp32, int8 = both(trained_style_models["classifier"], Task.CLASSIFY)
    texts = eval_texts()
    want, got = fp32(texts), int8(texts)
    agreement = np.mean([a["label"] == b["label"] for a, b in zip(want, got, strict=True)])
    assert agreement >= 0.995, f"{agreement:.2%} of labels agree"
    accuracy = np.mean([r["label"] == d.sentiment for r, d in
                        zip(want, corpus.generate(EVAL_DOCS, seed=11, split="eval"), strict=True)])
    assert accuracy > 0.8, "the classifier is trained: its agreement says something about trained models"
    assert max(abs(a["score"] - b["score"]) for a, b in zip(want, got, strict=True)) < 0.05


def test_int8_entity_spans_agree_with_fp32_on_a_trained_style_ner_model(trained_style_models):
    fp32, int8 = both(trained_style_models["ner"], Task.NER)
    texts = eval_texts()
    want, got = [spans(r) for r in fp32(texts)], [spans(r) for r in int8(texts)]
    common = sum(len(w & g) for w, g in zip(want, got, strict=True))
    f1 = 2 * common / sum(len(w) + len(g) for w, g in zip(want, got, strict=True))
    assert sum(map(len, want)) > EVAL_DOCS, "entities in most documents: agreement says something"
    assert f1 >= 0.99, f"entity-span F1 of int8 against fp32: {f1:.2%}"


def test_int8_is_refused_on_gpu_actors_and_gpu_predictors(tmp_path, trained_style_models):
    with pytest.raises(ConfigError, match="int8 runs on CPUs only"):
        RunConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), tasks="classify",
                  classifier_model=trained_style_models["classifier"], precision="int8",
                  resources={"num_gpus_per_actor": 0.25})
    with pytest.raises(ConfigError, match="int8 runs on CPUs only"):
        load_predictor("classify", trained_style_models["classifier"], precision="int8", use_gpu=True)
    config = RunConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), tasks="classify",
                       classifier_model=trained_style_models["classifier"], precision="INT8")
    assert config.precision is Precision.INT8


AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})


@pytest.mark.parametrize(("flags", "precision", "use_gpu", "warns"), [
    (AVX2_ONLY, Precision.BF16, False, True),
    (AVX2_ONLY | {"avx512f", "avx512_bf16"}, Precision.BF16, False, False),
    (AVX2_ONLY | {"amx_bf16", "amx_tile"}, Precision.BF16, False, False),
    (AVX2_ONLY, Precision.BF16, True, False),
    (AVX2_ONLY, Precision.AUTO, False, False),
    (AVX2_ONLY, Precision.INT8, False, False),
])
def test_bf16_warns_only_on_cpus_without_bf16_instructions(monkeypatch, flags, precision, use_gpu, warns):
    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    warning = device.slow_precision(precision, use_gpu=use_gpu)
    assert (warning is not None) == warns
    if warns:
        assert f"~{device.EMULATED_BF16_SLOWDOWN}x slower than fp32" in warning and "--precision auto or fp32" in warning


def test_a_bf16_predictor_on_such_a_cpu_warns_and_still_answers(monkeypatch, caplog, trained_style_models):
    monkeypatch.setattr(device, "cpu_flags", lambda: AVX2_ONLY)
    info = models.inspect(trained_style_models["classifier"], Task.CLASSIFY)
    with caplog.at_level(logging.WARNING, logger="albert_batch"):
        predictor = build_predictor(info, precision=Precision.BF16)
    assert any("runs emulated" in r.getMessage() and info.uri in r.getMessage() for r in caplog.records)
    assert predictor(["Works well."])[0]["label"] in corpus.SENTIMENTS
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="albert_batch"):
        build_predictor(info, precision=Precision.FP32)
    assert not caplog.records


def test_cpu_features_come_from_the_cpu_s_flags(monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: AVX2_ONLY | {"avx512f"})
    assert device.cpu_features() == {"amx_bf16": False, "avx512f": True, "avx512_bf16": False, "avx2": True}
    assert not device.cpu_has_amx() and not device.cpu_has_native_bf16()


@pytest.mark.parametrize(("flags", "dtype", "described"), [
    (AVX2_ONLY, "float32", "auto (fp32: this CPU lacks AMX and AVX-512-BF16)"),
    (AVX2_ONLY | {"avx512f", "avx512_bf16"}, "bfloat16", "auto (bf16: this CPU has AVX-512-BF16)"),
    (AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "bfloat16", "auto (bf16: this CPU has AMX)"),
])
def test_auto_multiplies_in_bf16_on_cpus_with_bf16_instructions_and_says_why(monkeypatch, flags, dtype, described):
    import torch

    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    assert device.resolve_dtype(Precision.AUTO, torch.device("cpu")) == getattr(torch, dtype)
    assert device.describe_precision(Precision.AUTO, use_gpu=False) == described
    for fixed, want in ((Precision.FP32, torch.float32), (Precision.BF16, torch.bfloat16), (Precision.INT8, torch.float32)):
        assert device.resolve_dtype(fixed, torch.device("cpu")) == want, "a named precision is not the CPU's choice"
