"""Named-entity recognition: entities per text, as Hugging Face's ``token-classification`` pipeline gives
them with ``aggregation_strategy="simple"``, over windows for texts longer than the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from albert_batch.contract import Task
from albert_batch.inference.models import ModelInfo
from albert_batch.inference.predictor import Features, Predictor, softmax


class NerPredictor(Predictor):
    """Entities per text: ``label``, ``text`` (= ``original[start:end]``), ``start``, ``end``, ``score``.

    Texts longer than the model's window are covered by overlapping windows; each token takes its scores
    from the window in which it sits farthest from an edge, so no entity after token 512 is lost."""

    task = Task.NER
    features: ClassVar[dict[str, pa.DataType]] = {"input_ids": pa.list_(pa.int32()), "offsets": pa.list_(pa.int32()), "special": pa.list_(pa.bool_())}

    def __init__(self, info: ModelInfo, *, window_overlap: int = 128, **kwargs: Any) -> None:
        super().__init__(info, **kwargs)
        self.window_overlap = window_overlap
        # Per label index, to group whole arrays of tokens at once: the tag that runs of tokens share,
        # whether the label opens a new run (B-), and the entity label it reports (None for "O").
        tags = [_split_tag(name) for name in self.labels]
        names = sorted({tag for _, tag in tags})
        self._tag_ids = np.array([names.index(tag) for _, tag in tags])
        self._begins = np.array([bi == "B" for bi, _ in tags])
        reported = [name.split("-", 1)[-1] for name in self.labels]
        self._entity_labels = [None if label == "O" else label for label in reported]

    def preprocess(self, texts: Sequence[str]) -> Features:
        encodings = self.encoder.encode(texts)
        return {
            "input_ids": [e.ids for e in encodings],
            "offsets": [e.offsets for e in encodings],
            "special": [e.special for e in encodings],
        }

    def windows(self, length: int) -> list[int]:
        """Start positions of the windows that cover ``length`` content tokens. Windows overlap by
        ``window_overlap`` tokens, or by half a window for models trained on short windows."""
        size = self.max_length - 2
        if length <= size:
            return [0]
        step = size - min(self.window_overlap, size // 2)
        starts = list(range(0, length - size, step))
        return [*starts, length - size]

    def sequences(self, features: Features) -> list[np.ndarray]:
        """Every row's windows, in order."""
        size = self.max_length - 2
        return [self._with_specials(ids[s : s + size]) for ids in features["input_ids"] for s in self.windows(len(ids))]

    def postprocess(self, texts: Sequence[str], features: Features, logits: list[np.ndarray]) -> list[dict[str, Any]]:
        results, first = [], 0
        for text, ids, offsets, special in zip(texts, features["input_ids"], features["offsets"], features["special"],
                                               strict=True):
            starts = self.windows(len(ids))
            windows = [window[1:-1] for window in logits[first : first + len(starts)]]
            first += len(starts)
            token_scores = softmax(self._merge_windows(windows, starts, len(ids)))
            # Offsets arrive flat from an Arrow list column, or as (n, 2) from `preprocess`.
            results.append({"entities": self._entities(text, token_scores, np.asarray(offsets).reshape(-1, 2), special)})
        return results

    @staticmethod
    def _merge_windows(window_logits: list[np.ndarray], starts: list[int], length: int) -> np.ndarray:
        if len(starts) == 1:
            return window_logits[0]
        merged = np.empty((length, window_logits[0].shape[-1]), dtype=np.float32)
        best = np.full(length, -1, dtype=np.int64)
        for start, row_logits in zip(starts, window_logits, strict=True):
            positions = np.arange(start, start + len(row_logits))
            centrality = np.minimum(positions - start, start + len(row_logits) - 1 - positions)
            better = centrality > best[positions]
            merged[positions[better]] = row_logits[better]
            best[positions[better]] = centrality[better]
        return merged

    def _entities(self, text: str, scores: np.ndarray, offsets: np.ndarray, special: np.ndarray) -> list[dict[str, Any]]:
        # Hugging Face's "simple" aggregation: argmax per token, then runs of the same tag (a B- starts a
        # new run), special tokens skipped; the group's score is the mean of its tokens' scores; "O" groups
        # are dropped. Runs are found with whole-array operations: documents have many tokens, few entities.
        tokens = np.flatnonzero(~special)
        if not len(tokens):
            return []
        best = scores.argmax(axis=-1)[tokens]
        tags = self._tag_ids[best]
        opens = np.ones(len(tokens), dtype=bool)
        opens[1:] = (tags[1:] != tags[:-1]) | self._begins[best[1:]]
        firsts = np.flatnonzero(opens)
        lasts = np.append(firsts[1:], len(tokens)) - 1
        token_scores = scores[tokens, best].astype(np.float64)
        means = np.add.reduceat(token_scores, firsts) / (lasts - firsts + 1)
        entities = []
        for first, last, score in zip(firsts, lasts, means, strict=True):
            label = self._entity_labels[best[first]]
            if label is None:
                continue
            start, end = int(offsets[tokens[first], 0]), int(offsets[tokens[last], 1])
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if start < end:
                entities.append({"label": label, "text": text[start:end], "start": start, "end": end, "score": float(score)})
        return entities


def _split_tag(name: str) -> tuple[str, str]:
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name
