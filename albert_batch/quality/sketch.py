"""Mergeable counts of what a partition holds, kept per piece of staged work.

The writer computes a `Sketch` of every piece it stages, from the same rows it writes, and records it with
the piece (`albert_batch.pipeline.staging.Piece.quality`); the run merges the sketches of the pieces it
publishes. So a partition's figures cost no second read of its files, and a resumed run's figures include
the reused work exactly as it was written. Histograms have fixed bins, so sketches add up.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCORE_BINS = 20  # equal bins over [0, 1]; scores outside it (regression models) fall in the end bins
LOW_CONFIDENCE = 0.5  # a classification below this score is counted as low-confidence
# Text lengths in tokens: bins twice as fine as powers of two, up to ALBERT's longest windows and beyond.
TOKEN_EDGES = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
ENTITIES_PER_DOC_CAP = 20  # the last bin of entities per document is "20 or more"
TOP_TEXTS_KEPT = 100  # per entity type and piece; the partition's top ten come from these


@dataclass
class Sketch:
    """Counts of one piece (or, merged, of a whole partition). Empty sections stay empty: a run without
    NER has no entity counts."""

    rows: int = 0  # accepted rows
    tokens: list[int] = field(default_factory=lambda: [0] * len(TOKEN_EDGES))  # last bin: >= last edge
    tokens_sum: int = 0
    processed: dict[str, int] = field(default_factory=dict)  # epoch second (as text, for JSON) -> rows
    labels: dict[str, int] = field(default_factory=dict)
    scores: dict[str, list[int]] = field(default_factory=dict)  # label -> SCORE_BINS counts
    score_sum: float = 0.0
    low_confidence: int = 0
    truncated: int = 0
    entity_docs: int = 0
    entity_types: dict[str, int] = field(default_factory=dict)
    entities_per_doc: list[int] = field(default_factory=lambda: [0] * (ENTITIES_PER_DOC_CAP + 1))
    entity_texts: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> text -> count (top kept)

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def of(cls, *, tokens: pa.ChunkedArray | pa.Array, processed_at: pa.ChunkedArray | pa.Array,
           classifications: pa.Table | None = None, entities: pa.ChunkedArray | pa.Array | None = None) -> Sketch:
        """The sketch of accepted rows: their token counts and processing times, and the task columns
        present (``classifications`` with label, score, truncated; ``entities`` lists)."""
        sketch = cls(rows=len(tokens))
        counts = np.asarray(pc.fill_null(tokens, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        bins = np.searchsorted(TOKEN_EDGES, counts, side="right") - 1
        sketch.tokens = np.bincount(bins, minlength=len(TOKEN_EDGES)).tolist()
        sketch.tokens_sum = int(counts.sum())
        seconds = pc.divide(pc.cast(pc.cast(processed_at, pa.timestamp("us", tz="UTC")), pa.int64()), 1_000_000)
        sketch.processed = {str(k): v for k, v in _value_counts(seconds).items()}
        if classifications is not None:
            sketch._add_classifications(classifications)
        if entities is not None:
            sketch._add_entities(entities)
        return sketch

    def _add_classifications(self, table: pa.Table) -> None:
        labels = table.column("label").to_numpy(zero_copy_only=False)
        scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        bins = np.clip((scores * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)
        for label in np.unique(labels):
            mine = labels == label
            self.labels[str(label)] = int(mine.sum())
            self.scores[str(label)] = np.bincount(bins[mine], minlength=SCORE_BINS).tolist()
        self.score_sum = float(scores.sum())
        self.low_confidence = int((scores < LOW_CONFIDENCE).sum())
        self.truncated = int(pc.sum(table.column("truncated").cast(pa.int64())).as_py() or 0)

    def _add_entities(self, entities: pa.ChunkedArray | pa.Array) -> None:
        if isinstance(entities, pa.ChunkedArray):
            entities = entities.combine_chunks()
        self.entity_docs = len(entities)
        per_doc = np.minimum(pc.list_value_length(entities).to_numpy(zero_copy_only=False), ENTITIES_PER_DOC_CAP)
        self.entities_per_doc = np.bincount(per_doc.astype(np.int64), minlength=ENTITIES_PER_DOC_CAP + 1).tolist()
        flat = pc.list_flatten(entities)
        if not len(flat):
            return
        pairs = pa.table({"label": pc.struct_field(flat, "label"), "text": pc.struct_field(flat, "text")})
        counted = pairs.group_by(["label", "text"]).aggregate([([], "count_all")]).to_pydict()
        by_type: dict[str, Counter[str]] = {}
        for label, text, count in zip(counted["label"], counted["text"], counted["count_all"], strict=True):
            by_type.setdefault(label, Counter())[text] = count
        self.entity_types = {label: sum(texts.values()) for label, texts in by_type.items()}
        self.entity_texts = {label: dict(texts.most_common(TOP_TEXTS_KEPT)) for label, texts in by_type.items()}

    # -- merging -------------------------------------------------------------------------------------
    @classmethod
    def merged(cls, sketches: Iterable[Sketch | Mapping[str, Any]]) -> Sketch:
        total = cls()
        for one in sketches:
            total.add(one if isinstance(one, Sketch) else cls.from_dict(one))
        return total

    def add(self, other: Sketch) -> None:
        self.rows += other.rows
        self.tokens = _add_lists(self.tokens, other.tokens)
        self.tokens_sum += other.tokens_sum
        self.processed = _add_counts(self.processed, other.processed)
        self.labels = _add_counts(self.labels, other.labels)
        for label, counts in other.scores.items():
            self.scores[label] = _add_lists(self.scores.get(label, [0] * SCORE_BINS), counts)
        self.score_sum += other.score_sum
        self.low_confidence += other.low_confidence
        self.truncated += other.truncated
        self.entity_docs += other.entity_docs
        self.entity_types = _add_counts(self.entity_types, other.entity_types)
        self.entities_per_doc = _add_lists(self.entities_per_doc, other.entities_per_doc)
        for label, texts in other.entity_texts.items():
            self.entity_texts[label] = _add_counts(self.entity_texts.get(label, {}), texts)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Sketch:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def _value_counts(values: pa.ChunkedArray | pa.Array) -> dict[Any, int]:
    return {row["values"]: row["counts"] for row in pc.value_counts(values).to_pylist()}


def _add_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    total = Counter(a)
    total.update(b)
    return dict(total)


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]
