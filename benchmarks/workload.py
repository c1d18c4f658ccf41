"""The benchmark's inputs, built offline and deterministically: ALBERT models with random weights over a
SentencePiece tokenizer trained on the demo corpus, and corpora of real-looking text whose token lengths
follow a log-normal distribution (mean about 44 tokens, a long tail to a few hundred), like short reviews
and news items."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from albert_batch.contract import Task
from albert_batch.dev import corpus
from albert_batch.training.model_init import MAX_LENGTH, init_model, train_tokenizer

# Log-normal token lengths (special tokens included): mean 44; sigma 0.85 puts the longest of 384
# documents near 390 tokens.
MEAN_TOKENS = 44
SIGMA = 0.85
MIN_TOKENS = 4
# Below the model's 512 with room for cuts that end on a word start: no text is truncated or windowed, so
# every contender does the same work on the same tokens.
MAX_TOKENS = MAX_LENGTH - 16
TOKENIZER_TRAINING_DOCS = 3000
SEED = 7


@dataclass(frozen=True)
class Models:
    """Folders of the two benchmark models (one shared tokenizer)."""

    classifier: str
    ner: str
    size: str


def build_models(root: Path, size: str) -> Models:
    """A classifier and an NER model of ``size`` ("tiny" or "base") with random weights, cached in ``root``.

    Random weights run at the same speed as trained ones; only the bf16 agreement figures depend on how decisive
    the logits are (see BENCHMARKS.md)."""
    folder = root / f"models-{size}"
    classifier, ner = folder / "classifier", folder / "ner"
    if not (ner / "model.safetensors").exists():
        shutil.rmtree(folder, ignore_errors=True)
        texts = [d.text for d in corpus.generate(TOKENIZER_TRAINING_DOCS, seed=SEED, split="train")]
        train_tokenizer(texts, classifier)
        shutil.copytree(classifier, ner)
        init_model(classifier, Task.CLASSIFY, corpus.SENTIMENTS, size=size, seed=1)
        init_model(ner, Task.NER, corpus.NER_LABELS, size=size, seed=2)
    return Models(classifier=str(classifier), ner=str(ner), size=size)


def token_lengths(n: int, seed: int) -> np.ndarray:
    """``n`` document lengths in tokens (special tokens included) at evenly spaced quantiles of a log-normal
    with mean MEAN_TOKENS, in seeded random order. Quantiles rather than random draws, so that every corpus
    size has the intended mean and tail instead of a sampling accident."""
    mu = math.log(MEAN_TOKENS) - SIGMA**2 / 2
    normal = statistics.NormalDist(mu, SIGMA)
    lengths = np.array([math.exp(normal.inv_cdf((i + 0.5) / n)) for i in range(n)])
    lengths = np.clip(np.round(lengths), MIN_TOKENS, MAX_TOKENS).astype(np.int64)
    return np.random.default_rng(seed).permutation(lengths)


def texts_of_lengths(lengths: np.ndarray, tokenizer, seed: int) -> list[str]:
    """Texts cut from a stream of demo documents so that each holds about ``length - 2`` content tokens.

    Cuts fall on word starts (SentencePiece's "▁"), so a text re-tokenizes to nearly the same length."""
    stream, needed, offset = "", int(lengths.sum()) * 2, 0
    docs_per_chunk = 500
    while True:
        chunk = corpus.generate(offset + docs_per_chunk, seed=seed, split="inference")[offset:]
        stream += " " + " ".join(" ".join(d.text.split()) for d in chunk)
        offset += docs_per_chunk
        encoded = tokenizer(stream, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        if len(encoded["input_ids"]) >= needed:
            break
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    spans = encoded["offset_mapping"]
    texts, position = [], 0
    for length in lengths:
        stop = position + max(1, int(length) - 2)
        while stop < len(pieces) - 1 and not pieces[stop].startswith("▁"):
            stop += 1
        texts.append(stream[spans[position][0] : spans[stop - 1][1]].strip())
        position = stop
    return texts


CORPUS_META = "_corpus.json"  # written last: a folder without it is an unfinished build


@dataclass(frozen=True)
class Corpus:
    """A benchmark corpus on disk and what its size means for the model."""

    folder: str
    docs: int
    real_tokens: int  # tokens the model sees, padding excluded (CLS and SEP included; NER windows counted)
    mean_tokens: float
    max_tokens: int
    texts_file: str  # the same texts as JSON, for contenders that do not read Parquet ("" when none)
    tokens_file: str  # real tokens per document (.npy), indexed by id


def build_corpus(root: Path, docs: int, models: Models, *, seed: int = SEED, fixed_tokens: int | None = None,
                 rows_per_file: int = 10_000) -> Corpus:
    """A Parquet corpus (id, text) of ``docs`` documents, cached in ``root`` by size and seed: log-normal
    lengths, or all about ``fixed_tokens`` long (cuts end on a word start, so a few tokens more)."""
    from transformers import AutoTokenizer

    shape = f"t{fixed_tokens}" if fixed_tokens else f"s{seed}"
    folder = root / f"corpus-{docs}-{shape}-{models.size}"
    if (cached := _cached(folder)) is not None:
        return cached
    tokenizer = AutoTokenizer.from_pretrained(models.classifier)
    lengths = np.full(docs, fixed_tokens) if fixed_tokens else token_lengths(docs, seed)
    texts = texts_of_lengths(lengths, tokenizer, seed)
    lengths = real_token_counts(texts, tokenizer)
    table = pa.table({"id": pa.array(range(docs), pa.int64()), "text": pa.array(texts, pa.string())})
    for number, start in enumerate(range(0, docs, rows_per_file)):
        pq.write_table(table.slice(start, rows_per_file), folder / f"part-{number:05d}.parquet")
    # Side files live outside the corpus folder: the input is Parquet only.
    texts_file, tokens_file = root / f"{folder.name}.texts.json", root / f"{folder.name}.tokens.npy"
    texts_file.write_text(json.dumps(texts))
    np.save(tokens_file, lengths)
    return _save(folder, lengths, texts_file=str(texts_file), tokens_file=str(tokens_file))


def split_into_files(corpus_: Corpus, files: int, folder: Path) -> list[pa.Table]:
    """The corpus's rows as ``files`` files of about equal rows, ``part-NNN.parquet`` in ``folder`` (made
    here), one row group each; returns each file's rows."""
    table = pq.ParquetDataset(corpus_.folder).read()
    per_file = -(-table.num_rows // files)
    parts = [table.slice(start, per_file) for start in range(0, table.num_rows, per_file)]
    folder.mkdir(parents=True)
    for number, part in enumerate(parts):
        pq.write_table(part, folder / f"part-{number:03d}.parquet")
    return parts


def real_token_counts(texts: list[str], tokenizer) -> np.ndarray:
    """Tokens per text as a classifier sees them: content tokens (at most 510) plus CLS and SEP."""
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return np.array([min(len(row), MAX_LENGTH - 2) + 2 for row in ids], dtype=np.int64)


def load_texts(corpus_: Corpus) -> list[str]:
    return json.loads(Path(corpus_.texts_file).read_text())


def build_streaming_corpus(root: Path, rows: int, base: Corpus, *, rows_per_file: int = 100_000) -> Corpus:
    """``rows`` documents that cycle through ``base``'s texts, with unique ids, written file by file so
    that building it never holds more than one file in memory. For the bounded-memory check.

    The text column is written without a dictionary, as a corpus of distinct texts would be: encoded as
    2,000 distinct values, a file's metadata understated its text ~10x, and Ray Data, which sizes its
    read tasks by that metadata, read the whole million rows in one task."""
    folder = root / f"stream-{rows}-plain-{Path(base.folder).name}"
    if (cached := _cached(folder)) is not None:
        return cached
    texts = pa.array(load_texts(base), pa.string())
    lengths = np.resize(np.load(base.tokens_file), rows)
    for number, start in enumerate(range(0, rows, rows_per_file)):
        ids = np.arange(start, min(rows, start + rows_per_file), dtype=np.int64)
        table = pa.table({"id": ids, "text": texts.take(pa.array(ids % len(texts)))})
        pq.write_table(table, folder / f"part-{number:05d}.parquet", use_dictionary=False)
    tokens_file = root / f"{folder.name}.tokens.npy"
    np.save(tokens_file, lengths)
    # No texts file: only the pipeline reads this corpus.
    return _save(folder, lengths, texts_file="", tokens_file=str(tokens_file))


def _cached(folder: Path) -> Corpus | None:
    """The corpus built earlier in ``folder``; None, with the folder emptied, when there is none."""
    meta = folder / CORPUS_META
    if meta.exists():
        return Corpus(**json.loads(meta.read_text()))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return None


def _save(folder: Path, lengths: np.ndarray, *, texts_file: str, tokens_file: str) -> Corpus:
    """Describe the corpus just written to ``folder`` (real tokens per document in ``lengths``) and record
    it, last, so that an interrupted build is never taken for a finished one."""
    corpus_ = Corpus(folder=str(folder), docs=len(lengths), real_tokens=int(lengths.sum()),
                     mean_tokens=float(lengths.mean()), max_tokens=int(lengths.max()), texts_file=texts_file,
                     tokens_file=tokens_file)
    (folder / CORPUS_META).write_text(json.dumps(corpus_.__dict__))
    return corpus_


def arrow_bytes(folder: str | Path) -> int:
    """What the Parquet files under ``folder`` take in memory as Arrow, read one file at a time."""
    return sum(pq.read_table(path).nbytes for path in sorted(Path(folder).rglob("*.parquet")))


# Bytes per token of the tokenizer stage's features: int32 ids; for NER also two int32 offsets and a
# one-byte special-token mark.
FEATURE_BYTES_PER_TOKEN = {"classify": 4, "ner": 4 + 8 + 1}
