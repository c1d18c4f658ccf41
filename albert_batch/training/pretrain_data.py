"""The corpus as pretraining examples, streamed through Ray Data: each row's text cut into sentences,
tokenized and turned into sentence-order examples (`albert_batch.training.sop`) in Ray Data tasks, on the
training or the held-out side of a stable hash of its id; and one counting pass that refuses a corpus
pretraining cannot use."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from albert_batch.contract import RejectReason
from albert_batch.errors import InputError
from albert_batch.pipeline.inputs import InputPlan, read_input
from albert_batch.pipeline.stages import earlier_reasons, reject_reasons
from albert_batch.training import sop
from albert_batch.training.config import PretrainConfig

if TYPE_CHECKING:
    import ray.data

HASH_BUCKETS = 1_000_000
HELD_OUT_DOCUMENTS = 1000  # about this many documents are held out, and at most a tenth of the corpus
HELD_OUT_MAX_SHARE = 0.1
# Fewer SOP pairs than these leave the sentence-order head untrained, or its held-out accuracy meaningless.
MIN_TRAINING_PAIRS = 100
MIN_HELD_OUT_PAIRS = 20
ROWS_PER_BLOCK = 1024
SIDES = ("training", "held_out")
COUNTS = ("documents", "examples", "sop_pairs", "tokens")

# Why a corpus row gives no document: as `run` rejects rows before any model sees them.
SKIPPED = (RejectReason.NULL_ID, RejectReason.NULL_TEXT, RejectReason.BLANK_TEXT, RejectReason.INVALID_UTF8)


def held_out_buckets(rows: int) -> int:
    """How many of `HASH_BUCKETS` id hashes are held out: about `HELD_OUT_DOCUMENTS` documents."""
    return max(1, min(int(HASH_BUCKETS * HELD_OUT_MAX_SHARE), math.ceil(HASH_BUCKETS * HELD_OUT_DOCUMENTS / rows)))


def is_held_out(key: str, buckets: int) -> bool:
    """Whether the document with id ``key`` is held out; a stable hash, the same on every node and run."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HASH_BUCKETS < buckets


@dataclass(frozen=True)
class ExampleSettings:
    """What turning corpus rows into examples needs in a Ray Data task. The tokenizer is the fast
    tokenizer's backend (`tokenizers.Tokenizer`): unpickling a transformers tokenizer would import torch
    and transformers in every task's worker."""

    backend: Any
    cls_id: int
    sep_id: int
    max_length: int
    seed: int
    held_out: int  # of HASH_BUCKETS

    @classmethod
    def of(cls, config: PretrainConfig, tokenizer: Any, held_out: int) -> ExampleSettings:
        backend = tokenizer.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        return cls(backend, tokenizer.cls_token_id, tokenizer.sep_token_id, config.max_length, config.seed, held_out)


def corpus_examples(config: PretrainConfig, plan: InputPlan, settings: ExampleSettings, *,
                    side: str) -> ray.data.Dataset:
    """The training or held-out examples of the corpus, streamed."""
    return read_input(config, plan, list(plan.units()), rows_per_block=ROWS_PER_BLOCK).map_batches(
        batch_examples, fn_kwargs={"settings": settings, "side": side}, batch_format="pyarrow", batch_size=None)


def count_corpus(config: PretrainConfig, plan: InputPlan, settings: ExampleSettings) -> dict[str, Any]:
    """Documents, examples, SOP pairs and tokens on each side, and the rows skipped by reason; refuses a
    corpus with no documents or too few SOP pairs."""
    counts = read_input(config, plan, list(plan.units()), rows_per_block=ROWS_PER_BLOCK).map_batches(
        batch_counts, fn_kwargs={"settings": settings}, batch_format="pyarrow", batch_size=None)
    total: Counter[str] = Counter()
    for row in counts.take_all():  # a row per block; Dataset.sum would start a shuffle's actors for these few
        total.update({name: int(value) for name, value in row.items()})
    data: dict[str, Any] = {
        "corpus": plan.location.uri, "files": len(plan.files), "rows": plan.num_rows,
        "skipped_rows": {r.value: total[r.value] for r in SKIPPED},
        "held_out_share": settings.held_out / HASH_BUCKETS,
        **{side: {what: total[f"{side}_{what}"] for what in COUNTS} for side in SIDES},
    }
    if not data["training"]["documents"] + data["held_out"]["documents"]:
        raise InputError(f"corpus {plan.location} has no documents to pretrain on: every one of its {plan.num_rows} "
                         f"rows is skipped ({', '.join(f'{k}: {v}' for k, v in data['skipped_rows'].items() if v)})")
    pairs = data["training"]["sop_pairs"], data["held_out"]["sop_pairs"]
    if pairs[0] < MIN_TRAINING_PAIRS or pairs[1] < MIN_HELD_OUT_PAIRS:
        raise InputError(
            f"corpus {plan.location} has too few texts of two or more sentences for sentence-order prediction: "
            f"{pairs[0]} pairs to train on and {pairs[1]} held out, of {MIN_TRAINING_PAIRS} and "
            f"{MIN_HELD_OUT_PAIRS} needed (a pair is two consecutive segments of one text; sentences end at . ! ? "
            "or a line break)")
    return data


def _documents(batch: pa.Table, settings: ExampleSettings) -> tuple[dict[str, list[list[sop.Example]]], Counter[str]]:
    """Each usable row's examples, by side, and the rows skipped by reason (as `run` rejects them)."""
    texts = batch.column("text").to_pylist()
    reasons = reject_reasons(batch.column("id"), texts, earlier_reasons(batch))
    keys = [str(key) for key in batch.column("id").to_pylist()]
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    documents: dict[str, list[list[sop.Example]]] = {side: [] for side in SIDES}
    skipped = Counter(reason for reason in reasons if reason)
    if not kept:
        return documents, skipped
    sentences = [sop.split_sentences(texts[i]) for i in kept]
    encoded = settings.backend.encode_batch([s for doc in sentences for s in doc], add_special_tokens=False)
    first = 0
    for i, doc in zip(kept, sentences, strict=True):
        tokenized = [(e.ids, e.word_ids) for e in encoded[first : first + len(doc)]]
        first += len(doc)
        examples = sop.document_examples(sop.segments(tokenized), max_length=settings.max_length,
                                         rng=random.Random(f"{settings.seed}/{keys[i]}"), cls_id=settings.cls_id,
                                         sep_id=settings.sep_id)
        documents["held_out" if is_held_out(keys[i], settings.held_out) else "training"].append(examples)
    return documents, skipped


def batch_examples(batch: pa.Table, *, settings: ExampleSettings, side: str) -> pa.Table:
    """The examples of a block of corpus rows (``id``, ``text``) on one side (``training`` or ``held_out``)."""
    documents, _ = _documents(batch, settings)
    examples = [e for doc in documents[side] for e in doc]
    return pa.table({
        "input_ids": pa.array([e.input_ids for e in examples], pa.list_(pa.int32())),
        "token_type_ids": pa.array([e.token_type_ids for e in examples], pa.list_(pa.int8())),
        "word_starts": pa.array([e.word_starts for e in examples], pa.list_(pa.bool_())),
        "sentence_order": pa.array([e.sentence_order for e in examples], pa.int64()),
    })


def batch_counts(batch: pa.Table, *, settings: ExampleSettings) -> pa.Table:
    """One row: a block's documents, examples, SOP pairs and tokens on each side, and its skipped rows."""
    documents, skipped = _documents(batch, settings)
    row: dict[str, list[int]] = {r.value: [skipped[r.value]] for r in SKIPPED}
    for side in SIDES:
        examples = [e for doc in documents[side] for e in doc]
        row[f"{side}_documents"] = [len(documents[side])]
        row[f"{side}_examples"] = [len(examples)]
        row[f"{side}_sop_pairs"] = [sum(e.sentence_order != sop.NO_PAIR for e in examples)]
        row[f"{side}_tokens"] = [sum(len(e.input_ids) for e in examples)]
    return pa.table({name: pa.array(values, pa.int64()) for name, values in row.items()})
