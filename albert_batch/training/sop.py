"""Sentence-order prediction (SOP) examples, ALBERT's pretraining input: each document is cut into
sentences, consecutive sentences are grouped into chunks that fit one sequence, and each chunk is split in
two at a random sentence boundary and kept in order or swapped (half of the time). Both segments of a
pair always come from one document; a chunk of a single segment becomes a masked-LM-only example, where
ALBERT would have borrowed the second segment from another document."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from albert_batch.training.bio import IGNORE_INDEX

# Sentences end at . ! ? or … before whitespace, after 。！？ (no space follows them in CJK text), and at
# line breaks. Abbreviations ("Dr. Smith") are cut too: a segment only has to be consecutive text.
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])\s*|\s*\n\s*")
SHORT_SEQ_PROB = 0.1  # as in BERT and ALBERT: some chunks aim shorter, as fine-tuning inputs often are
IN_ORDER, SWAPPED = 0, 1  # AlbertForPreTraining's sentence_order_label
NO_PAIR = IGNORE_INDEX  # the sentence-order label of a single-segment example: the SOP loss skips it


@dataclass(frozen=True)
class Segment:
    """The tokens of one sentence (or a piece of a long one) and which of them begin a word."""

    ids: np.ndarray  # int32, no special tokens
    word_starts: np.ndarray  # bool, same length


@dataclass(frozen=True)
class Example:
    input_ids: np.ndarray  # [CLS] first [SEP] second [SEP], or [CLS] only [SEP]
    token_type_ids: np.ndarray  # 0 up to the first [SEP], 1 after it
    word_starts: np.ndarray  # False at special tokens
    sentence_order: int  # IN_ORDER, SWAPPED or NO_PAIR


def split_sentences(text: str) -> list[str]:
    return [s for s in (part.strip() for part in SENTENCE_END.split(text)) if s]


def segments(encodings: Sequence[tuple[Sequence[int], Sequence[int | None]]]) -> list[Segment]:
    """Segments from tokenized sentences, given as (token ids, word index of each token) — a fast
    tokenizer's ``input_ids`` and ``word_ids()``; a token begins a word where its word index changes."""
    found = []
    for ids, words in encodings:
        if not len(ids):
            continue
        word = np.asarray([-1 if w is None else w for w in words], dtype=np.int64)
        starts = np.ones(len(word), dtype=bool)
        starts[1:] = word[1:] != word[:-1]
        found.append(Segment(np.asarray(ids, dtype=np.int32), starts))
    return found


def document_examples(sentences: list[Segment], *, max_length: int, rng: random.Random, cls_id: int,
                      sep_id: int) -> list[Example]:
    """A document's examples, in document order, covering every one of its tokens exactly once.

    Sentences longer than half of a sequence's room are cut into pieces, so that any two pieces fit one
    sequence together: every chunk but a document's last then holds two pieces or more, and nothing is
    truncated."""
    room = max_length - 3  # [CLS] and two [SEP]
    half = room // 2
    pieces = [Segment(s.ids[i : i + half], s.word_starts[i : i + half])
              for s in sentences for i in range(0, len(s.ids), half)]
    chunks: list[list[Segment]] = []
    current: list[Segment] = []
    length, target = 0, _target_length(room, rng)
    for piece in pieces:
        # A chunk takes a second piece whenever both fit, so that it can become a pair.
        if current and length + len(piece.ids) > (target if len(current) >= 2 else room):
            chunks.append(current)
            current, length, target = [], 0, _target_length(room, rng)
        current.append(piece)
        length += len(piece.ids)
    if current:
        chunks.append(current)
    return [_example(chunk, rng, cls_id, sep_id) for chunk in chunks]


def _target_length(room: int, rng: random.Random) -> int:
    return rng.randint(2, room) if rng.random() < SHORT_SEQ_PROB else room


def _example(chunk: list[Segment], rng: random.Random, cls_id: int, sep_id: int) -> Example:
    if len(chunk) == 1:
        return _assemble([_join(chunk)], NO_PAIR, cls_id, sep_id)
    cut = rng.randint(1, len(chunk) - 1)
    first, second = _join(chunk[:cut]), _join(chunk[cut:])
    if rng.random() < 0.5:
        return _assemble([second, first], SWAPPED, cls_id, sep_id)
    return _assemble([first, second], IN_ORDER, cls_id, sep_id)


def _join(pieces: list[Segment]) -> Segment:
    return Segment(np.concatenate([p.ids for p in pieces]), np.concatenate([p.word_starts for p in pieces]))


def _assemble(parts: list[Segment], order: int, cls_id: int, sep_id: int) -> Example:
    ids, types, starts = [np.asarray([cls_id], np.int32)], [np.zeros(1, np.int8)], [np.zeros(1, bool)]
    for kind, part in enumerate(parts):
        ids += [part.ids, np.asarray([sep_id], np.int32)]
        types.append(np.full(len(part.ids) + 1, kind, np.int8))
        starts += [part.word_starts, np.zeros(1, bool)]
    return Example(np.concatenate(ids), np.concatenate(types), np.concatenate(starts), order)
