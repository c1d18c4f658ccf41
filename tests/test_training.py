"""Fine-tuning on Ray Train: loss goes down, the model folder it writes runs in the batch pipeline (also
through S3), and unusable labelled data is refused with a message naming the row."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from albert_batch import ConfigError, InputError, RunConfig, Task, run
from albert_batch.cli import main
from albert_batch.dev import corpus
from albert_batch.inference import models
from albert_batch.training.config import FinetuneConfig
from albert_batch.training.data import write_labelled
from albert_batch.training.finetune import REPORT, finetune
from support import read_published, write_corpus


def labelled(tmp_path, task: Task, n: int, split: str) -> str:
    docs = corpus.generate(n, seed=3, split=split)
    targets = [d.sentiment for d in docs] if task is Task.CLASSIFY else [list(d.entities) for d in docs]
    path = tmp_path / f"{split}-{task}.parquet"
    write_labelled(path, [d.text for d in docs], targets, task)
    return str(path)


def test_a_short_classifier_run_learns_and_its_model_runs_in_the_pipeline(tmp_path, ray_cluster):
    config = FinetuneConfig(task=Task.CLASSIFY, train=labelled(tmp_path, Task.CLASSIFY, 800, "train"),
                            eval=labelled(tmp_path, Task.CLASSIFY, 100, "eval"), output=str(tmp_path / "model"),
                            init="tiny", epochs=3, seed=5)
    result = finetune(config)

    losses = [e["loss"] for e in result.epochs]
    assert [e["epoch"] for e in result.epochs] == [1, 2, 3]
    assert losses[-1] < losses[0]
    assert result.best_metrics["accuracy"] > 0.7, "the demo corpus is learnable in a few epochs"
    report = json.loads((tmp_path / "model" / REPORT).read_text())
    assert report["labels"] == ["negative", "positive"]
    assert report["data"]["train"]["rows"] == 800 and report["data"]["eval"]["rows"] == 100
    assert report["hyperparameters"]["seed"] == 5 and report["hyperparameters"]["learning_rate"] == 2e-3
    assert report["best_epoch"] == max(report["epochs"], key=lambda e: e["score"])["epoch"]
    assert {"ray", "torch", "transformers"} <= set(report["versions"])

    info = models.inspect(str(tmp_path / "model"), Task.CLASSIFY)
    assert info.labels == ("negative", "positive")
    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/in.parquet", [1, 2], ["Absolutely love it, works perfectly!", "Broke after a day."])
    summary = run(RunConfig(input=str(tmp_path / "input"), output=str(tmp_path / "out"), tasks="classify",
                            classifier_model=str(tmp_path / "model"), partition=["dt=2026-11-20"]))
    assert summary.accepted_rows == 2
    assert len(read_published(tmp_path / "out", "classifications")) == 2


def test_an_ner_model_round_trips_through_s3(tmp_path, ray_cluster, s3_client):
    fs = s3_client
    fs.create_dir("models")
    result = finetune(FinetuneConfig(task=Task.NER, train=labelled(tmp_path, Task.NER, 300, "train"),
                                     eval=labelled(tmp_path, Task.NER, 60, "eval"), output="s3://models/ner/v1",
                                     init="tiny", epochs=2))
    assert {"precision", "recall", "f1"} <= set(result.best_metrics)
    names = {info.base_name for info in fs.get_file_info(pafs.FileSelector("models/ner/v1"))}
    assert {"config.json", "model.safetensors", "spiece.model", "tokenizer_config.json", REPORT} <= names

    (tmp_path / "input").mkdir()
    write_corpus(tmp_path / "input/in.parquet", [1], ["Anna Schmidt met Zhang Wei in São Paulo."])
    run(RunConfig(input=str(tmp_path / "input"), output=str(tmp_path / "out"), tasks="ner",
                  ner_model="s3://models/ner/v1", partition=["dt=2026-11-21"]))
    [row] = read_published(tmp_path / "out", "entities")
    assert row["model"] == "s3://models/ner/v1"


def test_overlapping_spans_in_training_data_are_refused_naming_the_row(tmp_path):
    struct = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("label", pa.string())])
    table = pa.table({"text": ["Anna Schmidt in Paris", "fine"],
                      "entities": pa.array([[{"start": 0, "end": 12, "label": "PER"},
                                             {"start": 5, "end": 12, "label": "PER"}], []], pa.list_(struct))})
    pq.write_table(table, tmp_path / "train.parquet")
    with pytest.raises(InputError, match=r"row 0.*overlap"):
        finetune(FinetuneConfig(task=Task.NER, train=str(tmp_path / "train.parquet"),
                                eval=str(tmp_path / "train.parquet"), output=str(tmp_path / "m"), init="tiny"))


def test_unusable_settings_and_data_are_refused_before_training(tmp_path, capsys):
    with pytest.raises(ConfigError, match="exactly one of base_model"):
        FinetuneConfig(task=Task.CLASSIFY, train="/a", eval="/b", output="/c")
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "x"]}), tmp_path / "one.parquet")
    pq.write_table(pa.table({"body": ["a"], "label": ["x"]}), tmp_path / "nocol.parquet")
    base = ["finetune", "--task", "classify", "--output", str(tmp_path / "m"), "--init", "tiny", "-q"]
    assert main([*base, "--train", str(tmp_path / "one.parquet"), "--eval", str(tmp_path / "one.parquet")]) == 2
    assert "single label (x)" in capsys.readouterr().err
    assert main([*base, "--train", str(tmp_path / "nocol.parquet"), "--eval", str(tmp_path / "one.parquet")]) == 2
    assert "has no column 'text'; available columns: body, label" in capsys.readouterr().err


def test_long_ner_texts_become_full_length_windows_optionally_only_the_first_few(tiny_models):
    from transformers import AutoTokenizer

    from albert_batch.training.bio import bio_labels
    from albert_batch.training.data import encode

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["ner"])
    text = " ".join(f"Anna Schmidt visited Lisbon on day {i}." for i in range(60))
    label2id = {name: i for i, name in enumerate(bio_labels(["PER", "LOC"]))}
    spans = [(0, 12, "PER")]
    every = encode([text], [spans], tokenizer, Task.NER, label2id, max_length=64)
    first_two = encode([text], [spans], tokenizer, Task.NER, label2id, max_length=64, max_windows=2)
    pieces = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert every.num_rows == -(-pieces // 62) > 2
    assert first_two.to_pylist() == every.slice(0, 2).to_pylist()
    assert all(len(row["input_ids"]) == 64 for row in first_two.to_pylist())
    with pytest.raises(ConfigError, match="max_windows must be at least 1"):
        FinetuneConfig(task=Task.NER, train="/a", eval="/b", output="/c", init="tiny", max_windows=0)
