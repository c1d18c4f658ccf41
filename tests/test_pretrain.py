"""Pretraining (masked LM + sentence-order prediction) on Ray Train: sentence-order pairs come from one
document, in order or swapped; masking takes whole words and never special tokens; a short run whose
driver is killed resumes from its checkpoint when run again, learns, reports on its held-out slice, shows
only its own progress on the console, and writes a folder that `finetune --base-model` takes; unusable
corpora and base models are refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_batch import ConfigError, Task
from albert_batch.cli import main
from albert_batch.dev import corpus
from albert_batch.inference import models
from albert_batch.training.bio import IGNORE_INDEX
from albert_batch.training.config import FinetuneConfig, PretrainConfig
from albert_batch.training.finetune import learning_rate, prepare_base
from albert_batch.training.masking import Masker
from albert_batch.training.pretrain import REPORT, WORK_DIR
from albert_batch.training.pretrain_data import (
    HASH_BUCKETS,
    ExampleSettings,
    batch_counts,
    batch_examples,
    is_held_out,
)
from albert_batch.training.sop import IN_ORDER, NO_PAIR, SWAPPED, Segment, document_examples, split_sentences

CLS, SEP, MASK, PAD = 2, 3, 4, 0
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train writes it when it has recorded a checkpoint


def sentences_of(doc: int, lengths: list[int]) -> list[Segment]:
    """Sentences whose token ids say which document (thousands) and position (units) they hold."""
    found, position = [], 0
    for n in lengths:
        ids = np.arange(position, position + n, dtype=np.int32) + 1000 * doc
        found.append(Segment(ids, np.ones(n, dtype=bool)))
        position += n
    return found


def halves(example) -> tuple[list[int], list[int]]:
    ids = example.input_ids.tolist()
    assert ids[0] == CLS and ids[-1] == SEP
    cut = ids.index(SEP)
    return ids[1:cut], ids[cut + 1 : -1]


def test_sentence_order_pairs_are_consecutive_segments_of_one_document_in_order_or_swapped():
    rng = random.Random(1)
    for doc in range(1, 60):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 12))]
        examples = document_examples(sentences_of(doc, lengths), max_length=64, rng=rng, cls_id=CLS, sep_id=SEP)
        covered = []
        for e in examples:
            assert len(e.input_ids) <= 64
            first, second = halves(e)
            if e.sentence_order == NO_PAIR:
                assert second == [] and (e.token_type_ids == 0).all()
                covered += first
                continue
            assert first and second
            in_order = (first, second) if e.sentence_order == IN_ORDER else (second, first)
            assert e.sentence_order in (IN_ORDER, SWAPPED)
            assert in_order[0][-1] + 1 == in_order[1][0], "the two segments meet where the text continues"
            assert e.token_type_ids.tolist() == [0] * (len(first) + 2) + [1] * (len(second) + 1)
            covered += in_order[0] + in_order[1]
        assert {t // 1000 for t in covered} == {doc}, "never a segment of another document"
        assert covered == list(range(1000 * doc, 1000 * doc + sum(lengths))), "every token once, in document order"


def test_half_of_the_pairs_are_swapped_the_same_way_for_the_same_seed():
    def orders(seed: int) -> list[int]:
        rng = random.Random(seed)
        return [e.sentence_order for doc in range(1, 400)
                for e in document_examples(sentences_of(doc, [8, 9, 10]), max_length=64, rng=rng, cls_id=CLS,
                                           sep_id=SEP)]

    first = orders(7)
    pairs = [order for order in first if order != NO_PAIR]
    assert len(pairs) >= 399, "every document gives a pair (a short-sequence target may add a single segment)"
    assert 0.44 < pairs.count(SWAPPED) / len(pairs) < 0.56
    assert orders(7) == first
    assert orders(8) != first


def test_single_sentence_texts_train_the_masked_lm_only_and_long_sentences_are_cut_into_pairs():
    [short] = document_examples(sentences_of(1, [20]), max_length=64, rng=random.Random(0), cls_id=CLS, sep_id=SEP)
    assert short.sentence_order == NO_PAIR
    long = document_examples(sentences_of(2, [300]), max_length=64, rng=random.Random(0), cls_id=CLS, sep_id=SEP)
    assert sum(e.sentence_order != NO_PAIR for e in long) >= len(long) - 1
    assert split_sentences("Dr. Who arrived.  Then?\nYes! 東京タワーは高い。北京 too") == [
        "Dr.", "Who arrived.", "Then?", "Yes!", "東京タワーは高い。", "北京 too"]


def test_a_corpus_batch_keeps_documents_apart_holds_out_by_id_and_counts_every_row():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    # Word j of document i is token 100 * i + j, so every token says which document it came from.
    vocab = {"[PAD]": PAD, "[UNK]": 1, "[CLS]": CLS, "[SEP]": SEP, "[MASK]": MASK}
    vocab |= {f"w{i}_{j}": 100 * i + j for i in range(1, 41) for j in range(12)}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    texts = ["\n".join(" ".join(f"w{i}_{j}" for j in range(k, k + 3)) for k in (0, 3, 6, 9)) for i in range(1, 41)]
    batch = pa.table({"id": pa.array([*range(1, 41), None, 99], pa.int64()),
                      "text": pa.array([*texts, "w1_0", "  "], pa.string())})
    settings = ExampleSettings(backend=backend, cls_id=CLS, sep_id=SEP, max_length=12, seed=0,
                               held_out=HASH_BUCKETS // 4)

    counts = batch_counts(batch, settings=settings).to_pylist()[0]
    assert counts["null_id"] == 1 and counts["blank_text"] == 1
    held_out = [i for i in range(1, 41) if is_held_out(str(i), settings.held_out)]
    assert 0 < len(held_out) < 40 and counts["held_out_documents"] == len(held_out)
    assert counts["training_documents"] + counts["held_out_documents"] == 40
    for side, ids in (("held_out", set(held_out)), ("training", set(range(1, 41)) - set(held_out))):
        examples = batch_examples(batch, settings=settings, side=side).to_pylist()
        assert len(examples) == counts[f"{side}_examples"]
        documents = set()
        for e in examples:
            words = [t for t in e["input_ids"] if t not in (CLS, SEP)]
            assert len({t // 100 for t in words}) == 1, "an example never mixes documents"
            documents.add(words[0] // 100)
        assert documents == ids


def test_masking_takes_whole_words_at_about_the_probability_and_never_special_tokens():
    masker = Masker(mask_id=MASK, vocab_size=1000, special_ids=frozenset({PAD, 1, CLS, SEP, MASK}), probability=0.15)
    rng = np.random.default_rng(3)
    chosen = ordinary = 0
    kinds = {"mask": 0, "random": 0, "kept": 0}
    for _ in range(400):
        body = rng.integers(5, 1000, size=120)
        ids = np.concatenate([[CLS], body[:60], [SEP], body[60:], [SEP]])
        word_starts = rng.random(len(ids)) < 0.6
        masked, labels = masker(ids, word_starts, rng)
        special = np.isin(ids, [CLS, SEP])
        assert (labels[special] == IGNORE_INDEX).all() and (masked[special] == ids[special]).all()
        picked = labels != IGNORE_INDEX
        assert (labels[picked] == ids[picked]).all(), "a label is the original token"
        assert (masked[~picked] == ids[~picked]).all(), "only chosen tokens change"
        chosen, ordinary = chosen + picked.sum(), ordinary + (~special).sum()
        kinds["mask"] += (masked[picked] == MASK).sum()
        kinds["kept"] += (masked[picked] == ids[picked]).sum()
        kinds["random"] += ((masked[picked] != MASK) & (masked[picked] != ids[picked])).sum()
        assert not np.isin(masked[picked], [PAD, 1, CLS, SEP]).any(), "random replacements are ordinary tokens"
        # Whole words: a word (a start and the tokens up to the next start or special token) is chosen whole.
        word = np.cumsum(word_starts | special | np.r_[True, special[:-1]])
        for w in np.unique(word[~special]):
            members = picked[(word == w) & ~special]
            assert members.all() or not members.any()
    assert 0.13 < chosen / ordinary < 0.16
    assert 0.77 < kinds["mask"] / chosen < 0.83 and 0.08 < kinds["random"] / chosen < 0.12
    assert 0.08 < kinds["kept"] / chosen < 0.12


def test_unusable_pretraining_settings_are_refused():
    with pytest.raises(ConfigError, match="exactly one of base_model"):
        PretrainConfig(corpus="/c", output="/o")
    with pytest.raises(ConfigError, match="mlm_probability must be between 0 and 1"):
        PretrainConfig(corpus="/c", output="/o", init="tiny", mlm_probability=1.5)
    with pytest.raises(ConfigError, match="inside it"):
        PretrainConfig(corpus="/c", output="/c/model", init="tiny")


def write_texts(path, texts: list[str | None]) -> str:
    pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())}),
                   path)
    return str(path)


def test_a_pretraining_whose_driver_dies_resumes_from_its_last_checkpoint_learns_and_shows_only_its_progress(
        tmp_path, ray_cluster):
    docs = corpus.generate(500, seed=11)
    (tmp_path / "corpus").mkdir()
    corpus.write_corpus(tmp_path / "corpus", docs[:300])
    write_texts(tmp_path / "corpus" / "more.parquet", [d.text for d in docs[300:]] + ["  ", None])
    out = tmp_path / "pretrained"
    argv = ["pretrain", "--corpus", str(tmp_path / "corpus"), "--output", str(out), "--init", "tiny",
            "--vocab-size", "800", "--max-length", "64", "--batch-size", "16", "--max-steps", "40",
            "--report-every", "10", "--seed", "3"]
    # The first run, in a process of its own with its own Ray, is killed (driver, Ray and all) once Ray Train
    # has recorded a checkpoint; the same command again resumes from it.
    killed = subprocess.Popen([sys.executable, "-m", "albert_batch.cli", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, "ALBERT_BATCH_PROGRESS_S": "0.5"})
    snapshot = out / WORK_DIR / "ray_train" / "pretrain" / SNAPSHOT
    deadline = time.monotonic() + 600  # a bound on a hang only: a busy machine takes minutes
    while not snapshot.exists():
        assert killed.poll() is None, f"pretraining ended before its first checkpoint: {killed.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    shown, errors = killed.communicate(timeout=60)
    console = shown + errors
    assert "progress: step " in errors and " of 40 (" in errors, console
    for internal in ("RayTrainWorker", "TrainController", "core_worker", "Writing model shards", "Loading weights"):
        assert internal not in console, f"{internal!r} reached the console: {console}"
    time.sleep(3)  # its Ray's workers go with it (Ray's reaper)

    assert main([*argv, "-q"]) == 0
    report = json.loads((out / REPORT).read_text())
    evaluations = report["evaluations"]
    assert [e["step"] for e in evaluations] == [0, 10, 20, 30, 40]
    resumed = {e["step"]: e["resumed_from"] for e in evaluations}
    [checkpoint] = {r for r in resumed.values() if r}
    assert checkpoint in (10, 20, 30), resumed
    assert all(r == (checkpoint if step > checkpoint else 0) for step, r in resumed.items()), \
        "the evaluations up to the checkpoint come from the first run, the rest from the resumed one"
    data = report["data"]
    assert data["rows"] == 502
    assert data["skipped_rows"] == {"null_id": 0, "null_text": 1, "blank_text": 1, "invalid_utf8": 0}
    assert data["training"]["documents"] + data["held_out"]["documents"] == 500, "every row is counted once"
    assert data["held_out"]["sop_pairs"] >= 20
    losses = [e["mlm_loss"] for e in evaluations]
    assert losses[-1] < losses[0], "the masked LM learns"
    assert all(0 <= e["sop_accuracy"] <= 1 and 0 <= e["mlm_accuracy"] <= 1 for e in evaluations)
    assert report["hyperparameters"]["learning_rate"] == 1e-3 and report["base"] == "init:tiny"
    assert not (out / WORK_DIR).exists(), "the working folder is removed once the model is written"
    assert json.loads((out / "config.json").read_text())["architectures"] == ["AlbertForPreTraining"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", REPORT, "spiece.model",
                                                     "tokenizer.json", "tokenizer_config.json"]

    # What `finetune --base-model` does with its base before training: the pretrained encoder under a new head.
    from transformers import AlbertForPreTraining, AlbertForSequenceClassification, AutoTokenizer

    texts = [d.text for d in docs[:20]]
    base = prepare_base(FinetuneConfig(task=Task.CLASSIFY, train="/t", eval="/e", output="/o", base_model=str(out)),
                        ("negative", "positive"), texts, tmp_path / "base")
    assert models.inspect(str(base), Task.CLASSIFY).labels == ("negative", "positive")
    assert AutoTokenizer.from_pretrained(out).model_max_length == 64, "pretraining learnt 64 positions"
    assert AutoTokenizer.from_pretrained(base).model_max_length == 512, "fine-tuning at 512 tokens learns the rest"
    # A small model pretrained from scratch for a few thousand steps is fine-tuned at the from-scratch rate.
    on = {"task": Task.NER, "train": "/t", "eval": "/e", "output": "/o"}
    assert learning_rate(FinetuneConfig(**on, base_model=str(out))) == 2e-3
    assert learning_rate(FinetuneConfig(**on, base_model=str(out), learning_rate=1e-4)) == 1e-4
    assert learning_rate(FinetuneConfig(**on, base_model=str(base))) == 5e-5, "no pretraining report: not ours"
    assert learning_rate(FinetuneConfig(**on, base_model="albert/albert-base-v2")) == 5e-5
    pretrained = AlbertForPreTraining.from_pretrained(out)
    classifier = AlbertForSequenceClassification.from_pretrained(base)
    assert classifier.albert.embeddings.word_embeddings.weight.equal(pretrained.albert.embeddings.word_embeddings.weight)
    assert classifier.albert.encoder.state_dict().keys() == pretrained.albert.encoder.state_dict().keys()
    assert all(v.equal(pretrained.albert.encoder.state_dict()[k]) for k, v in classifier.albert.encoder.state_dict().items())


def test_unusable_corpora_and_base_models_are_refused(tmp_path, ray_cluster, capsys):
    from transformers import BertConfig, BertForMaskedLM

    base = ["pretrain", "--output", str(tmp_path / "out"), "--init", "tiny", "--vocab-size", "200", "-q"]
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    assert main([*base, "--corpus", str(tmp_path / "empty.parquet")]) == 2
    assert "is empty: its Parquet files hold no rows" in capsys.readouterr().err

    blank = write_texts(tmp_path / "blank.parquet", ["", "   ", None])
    assert main([*base, "--corpus", blank]) == 2
    assert "has no text to learn a tokenizer from" in capsys.readouterr().err

    single = write_texts(tmp_path / "single.parquet", [f"Review number {i} says the phone works well" for i in range(300)])
    assert main([*base, "--corpus", single]) == 2
    assert "too few texts of two or more sentences for sentence-order prediction: 0 pairs" in capsys.readouterr().err

    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=16)).save_pretrained(tmp_path / "bert")
    assert main(["pretrain", "--corpus", single, "--output", str(tmp_path / "out"), "--base-model",
                 str(tmp_path / "bert"), "-q"]) == 2
    assert "is not ALBERT (model_type 'bert')" in capsys.readouterr().err
