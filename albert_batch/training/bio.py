"""Turning labelled character spans into BIO token labels for fine-tuning NER."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from albert_batch.errors import InputError

IGNORE_INDEX = -100  # label id ignored by the loss (special tokens, padding)

SPAN_KEYS = ("start", "end", "label")


def bio_labels(entity_types: Sequence[str]) -> tuple[str, ...]:
    """("O", "B-T1", "I-T1", "B-T2", "I-T2", ...) in the given order of types."""
    seen: set[str] = set()
    labels = ["O"]
    for entity_type in entity_types:
        if not isinstance(entity_type, str) or not entity_type:
            raise ValueError(f"entity types must be non-empty strings, got {entity_type!r}")
        if entity_type in seen:
            raise ValueError(f"entity type {entity_type!r} is given twice")
        seen.add(entity_type)
        labels += [f"B-{entity_type}", f"I-{entity_type}"]
    return tuple(labels)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _show(span: object) -> str:
    return repr(dict(span)) if isinstance(span, Mapping) else repr(span)


def validate_spans(text: str, spans: Sequence[Mapping] | None, *, row: object) -> list[tuple[int, int, str]]:
    """Check one row's spans ({"start", "end", "label"} mappings, as read from Parquet list<struct>) and return
    them sorted as (start, end, label).

    Raises InputError naming the row, the span and the problem for: a span that is not a mapping, missing keys,
    non-integer offsets, a label that is not a non-empty string, offsets beyond the text (start < 0 or
    end > len(text)), an empty span (start >= end) and overlapping spans (two spans sharing any character).
    A span with leading or trailing whitespace is accepted as it is. ``None`` (a null list) means no spans."""
    if spans is None:
        return []
    checked: list[tuple[int, int, str]] = []
    for span in spans:
        where = f"row {row!r}: span {_show(span)}"
        if not isinstance(span, Mapping):
            raise InputError(f"{where}: a span must be a mapping with keys {', '.join(SPAN_KEYS)}")
        missing = [key for key in SPAN_KEYS if key not in span or span[key] is None]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)} (a span needs {', '.join(SPAN_KEYS)})")
        start, end, label = span["start"], span["end"], span["label"]
        if not _is_int(start) or not _is_int(end):
            raise InputError(f"{where}: start and end must be integer character offsets")
        if not isinstance(label, str) or not label:
            raise InputError(f"{where}: label must be a non-empty string")
        start, end = int(start), int(end)
        if start < 0 or end > len(text):
            raise InputError(f"{where}: offsets beyond the text (the text has {len(text)} characters)")
        if start >= end:
            raise InputError(f"{where}: empty span (start must be less than end)")
        checked.append((start, end, label))
    checked.sort()
    # Sorted by start, any two overlapping spans imply an overlapping neighbouring pair.
    for previous, current in itertools.pairwise(checked):
        if current[0] < previous[1]:
            raise InputError(f"row {row!r}: spans {previous} and {current} overlap (they share characters "
                             f"{max(previous[0], current[0])}..{min(previous[1], current[1]) - 1})")
    return checked


def align_tokens(
    spans: Sequence[tuple[int, int, str]],
    offsets: np.ndarray,
    special: np.ndarray,
    label2id: Mapping[str, int],
) -> np.ndarray:
    """Token label ids (int64, one per token) for a tokenized text.

    ``offsets`` is an (n, 2) int array of character offsets per token, in text order; ``special`` an (n,) bool
    array, True for special tokens such as [CLS]/[SEP]. Special tokens and tokens with an empty offset
    (start == end) get IGNORE_INDEX. A token that shares at least one character with a span gets that span's
    label: "B-<label>" on the first such token, "I-<label>" on the later ones, so every sub-word piece is trained
    (inference aggregates with Hugging Face's "simple" strategy, which groups each token's own prediction).
    SentencePiece's lone "▁" token, whose offset is the next character's, is a token like any other: inside an
    entity it takes the B- and the following piece the I-. A token overlapping two spans belongs to the first,
    and the second span then starts with B- on its first token of its own. Every other token gets "O".

    Spans are (start, end, label) as returned by validate_spans; they must not overlap.
    Raises InputError when a span's label has no B-/I- entry in ``label2id`` (or "O" is missing)."""
    offsets = np.asarray(offsets)
    special = np.asarray(special, dtype=bool)
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(f"offsets must have shape (n, 2), got {offsets.shape}")
    if special.shape != (offsets.shape[0],):
        raise ValueError(f"special must have shape ({offsets.shape[0]},), got {special.shape}")

    known = ", ".join(map(str, label2id))
    if "O" not in label2id:
        raise InputError(f"the label set has no 'O' label (known labels: {known})")
    for _, _, label in spans:
        if f"B-{label}" not in label2id or f"I-{label}" not in label2id:
            raise InputError(f"entity label {label!r} has no B-{label}/I-{label} entry in the model's labels "
                             f"(known labels: {known})")

    starts = offsets[:, 0].astype(np.int64)
    ends = offsets[:, 1].astype(np.int64)
    usable = ~special & (ends > starts)
    ids = np.full(offsets.shape[0], IGNORE_INDEX, dtype=np.int64)
    ids[usable] = label2id["O"]
    free = usable.copy()
    for start, end, label in sorted(spans):
        hit = np.flatnonzero(free & (starts < end) & (ends > start))
        if hit.size:
            ids[hit[0]] = label2id[f"B-{label}"]
            ids[hit[1:]] = label2id[f"I-{label}"]
            free[hit] = False
    return ids
