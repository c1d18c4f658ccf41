"""`load_predictor`: the batch job's predictors in this process, without Ray. A text gets what a run publishes
for it, and in fp32 what Hugging Face's pipelines give; texts a run would reject are refused by position."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from transformers import AlbertForSequenceClassification, AlbertForTokenClassification, AutoTokenizer, pipeline

from albert_batch import ConfigError, InputError, ModelLoadError, Task, load_predictor
from support import LONG_TEXT, SCORE_TOLERANCE, TRICKY_TEXTS, read_published


@pytest.fixture(scope="module")
def local(tiny_models) -> dict[Task, Any]:
    return {Task.CLASSIFY: load_predictor("classify", tiny_models["classifier"], precision="fp32"),
            Task.NER: load_predictor(Task.NER, tiny_models["ner"], precision="fp32")}


def entity_key(entity: dict) -> tuple:
    return entity["label"], entity["text"], entity["start"], entity["end"]


def test_importing_load_predictor_imports_neither_ray_nor_torch():
    code = ("import sys, albert_batch\n"
            "albert_batch.load_predictor\n"
            "from albert_batch import load_predictor\n"
            "print(sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_predicting_starts_no_ray_and_imports_no_transformers(tiny_models):
    """A predictor (as each model actor loads it) runs the models without transformers, whose import would
    cost a new process seconds."""
    code = ("import sys\n"
            "from albert_batch import load_predictor\n"
            f"label = load_predictor('classify', {tiny_models['classifier']!r})('Anna flew to Berlin.')['label']\n"
            "print(label in {'negative', 'neutral', 'positive'}, 'ray' in sys.modules, 'transformers' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "True False False"


def test_results_equal_what_the_batch_job_publishes(tricky_run, local):
    texts = [*TRICKY_TEXTS, LONG_TEXT]  # what the run read, ids by position
    published = {r["id"]: r for r in read_published(tricky_run, "classifications")}
    published_entities = {r["id"]: r["entities"] for r in read_published(tricky_run, "entities")}

    for i, got in enumerate(local[Task.CLASSIFY](texts)):
        want = published[i]
        assert (got["label"], got["truncated"]) == (want["label"], want["truncated"]), texts[i]
        assert got["score"] == pytest.approx(want["score"], abs=SCORE_TOLERANCE)
        assert got["scores"] == pytest.approx(dict(want["scores"]), abs=SCORE_TOLERANCE)
    assert published[len(texts) - 1]["truncated"], "the long text is truncated by both"

    entities = local[Task.NER](texts)
    for i, got in enumerate(entities):
        want = published_entities[i]
        assert [entity_key(e) for e in got] == [entity_key(e) for e in want], texts[i]
        assert [e["score"] for e in got] == pytest.approx([e["score"] for e in want], abs=SCORE_TOLERANCE)
    assert sum(map(len, entities)) > 100, "the random model should tag plenty of tokens"
    assert any(e["start"] > 3000 for e in entities[-1]), "entities beyond the long text's first window"


def test_fp32_results_match_the_reference_pipelines(tiny_models, local):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["classifier"])
    classify = pipeline("text-classification", tokenizer=tokenizer, device="cpu",
                        model=AlbertForSequenceClassification.from_pretrained(tiny_models["classifier"]))
    tag = pipeline("token-classification", tokenizer=tokenizer, device="cpu", aggregation_strategy="simple",
                   model=AlbertForTokenClassification.from_pretrained(tiny_models["ner"]))
    spans = 0
    for text, label, entities in zip(TRICKY_TEXTS, local[Task.CLASSIFY](TRICKY_TEXTS), local[Task.NER](TRICKY_TEXTS),
                                     strict=True):
        want = classify(text, truncation=True)[0]
        assert label["label"] == want["label"], text
        assert label["score"] == pytest.approx(want["score"], abs=SCORE_TOLERANCE)
        want_entities = tag(text)
        assert [(e["label"], e["start"], e["end"]) for e in entities] == [
            (e["entity_group"], e["start"], e["end"]) for e in want_entities], text
        assert [e["score"] for e in entities] == pytest.approx([float(e["score"]) for e in want_entities],
                                                               abs=SCORE_TOLERANCE)
        spans += len(entities)
    assert spans > 20, "the random model should tag plenty of tokens; otherwise this test proves little"


def test_one_text_gives_one_result_and_a_sequence_a_list(local):
    texts = ("Anna Schmidt flew to Berlin.", "x")
    many = local[Task.CLASSIFY](texts)
    assert isinstance(many, list) and len(many) == 2
    one = local[Task.CLASSIFY](texts[0])
    assert one["label"] == many[0]["label"] and one["score"] == pytest.approx(many[0]["score"], abs=SCORE_TOLERANCE)
    assert isinstance(local[Task.NER](texts[0]), list), "a text's entities"
    assert local[Task.NER]([]) == []
    assert local[Task.CLASSIFY].task is Task.CLASSIFY and len(local[Task.CLASSIFY].model.weights_sha256) == 64


def test_texts_a_run_would_reject_are_refused_by_position_and_reason(local):
    classify = local[Task.CLASSIFY]
    with pytest.raises(InputError, match=r"texts\[2\] is empty or only whitespace \(blank_text"):
        classify(["fine", "also fine", " \t\n"])
    with pytest.raises(InputError, match=r"texts\[1\] is None \(null_text"):
        local[Task.NER](["fine", None])
    with pytest.raises(InputError, match=r"the text is empty or only whitespace \(blank_text"):
        classify("")
    with pytest.raises(InputError, match=r"texts\[0\] is a bytes, not a str"):
        classify([b"raw bytes"])


def test_unusable_settings_and_models_are_refused_before_loading(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="task 'sentiment' is not one of classify, ner"):
        load_predictor("sentiment", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"model folder \S+/missing does not exist"):
        load_predictor("classify", str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_predictor("ner", str(tmp_path))
    with pytest.raises(ConfigError, match=r"precision fp16 needs a GPU \(use_gpu=True\)"):
        load_predictor("classify", str(tmp_path), precision="fp16")
    with pytest.raises(ConfigError, match="precision 'int4' is not one of"):
        load_predictor("classify", str(tmp_path), precision="int4")
    with pytest.raises(ConfigError, match="max_tokens_per_forward must be at least 512"):
        load_predictor("classify", str(tmp_path), max_tokens_per_forward=64)
    with pytest.raises(ConfigError, match="ner_window_overlap must be between 0 and 256"):
        load_predictor("ner", str(tmp_path), ner_window_overlap=300)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on machines with a GPU
    with pytest.raises(ConfigError, match="use_gpu is set, but torch sees no CUDA device"):
        load_predictor("classify", str(tmp_path), use_gpu=True)


@pytest.mark.gpu
def test_on_a_gpu_fp32_gives_the_cpu_results(tiny_models, local):
    import torch

    assert torch.cuda.is_available(), "needs a CUDA GPU"
    for task, folder in ((Task.CLASSIFY, tiny_models["classifier"]), (Task.NER, tiny_models["ner"])):
        gpu = load_predictor(task, folder, precision="fp32", use_gpu=True)
        assert gpu.predictor.device.type == "cuda"
        for got, want in zip(gpu([*TRICKY_TEXTS, LONG_TEXT]), local[task]([*TRICKY_TEXTS, LONG_TEXT]), strict=True):
            if task is Task.CLASSIFY:
                assert got["label"] == want["label"]
                assert got["score"] == pytest.approx(want["score"], abs=SCORE_TOLERANCE)
            else:
                assert [entity_key(e) for e in got] == [entity_key(e) for e in want]

