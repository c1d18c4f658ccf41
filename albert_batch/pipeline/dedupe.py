"""Identical texts scored once: what the stages share between rows whose texts are byte for byte the same
(within a run, the models and settings are the same for every row, so such rows have the same results).

- Within a batch, the tokenizer stage tokenizes each distinct text once and copies its features to the
  repeats, and the model stage runs each distinct text once.
- Across batches, each model actor keeps the results of the last `CACHE_TEXTS` distinct texts it ran
  (keyed by a 128-bit BLAKE2b digest of the text, so a long text costs its digest, not its length) and
  runs a text it has seen again no more. Ray Data hands each batch to whichever actor is free, so a repeat
  in a later batch is caught when it reaches the actor that ran its first copy (always with one model
  actor, and about one time in N with N of them); a shared cache would cost every batch a round trip to
  one place.

Every row still gets its own result rows, with its own id. Off with ``--no-dedupe``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

CACHE_TEXTS = 100_000  # per model actor: ~100 bytes each for a classification, more for a text's entities


def distinct(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct texts in first-seen order, and each text's position among them."""
    first: dict[str, int] = {}
    index = [first.setdefault(text, len(first)) for text in texts]
    return list(first), index


def expand(features: Mapping[str, Sequence[Any]], index: Sequence[int]) -> dict[str, list[Any]]:
    """Each row's features, from the features of the distinct texts and each row's position among them."""
    return {name: [values[j] for j in index] for name, values in features.items()}


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class ResultCache:
    """The results (per task) of the last ``size`` distinct texts a model actor ran, by digest."""

    def __init__(self, size: int = CACHE_TEXTS) -> None:
        self.size = size
        self._results: OrderedDict[bytes, dict[str, Any]] = OrderedDict()

    def get(self, key: bytes) -> dict[str, Any] | None:
        found = self._results.get(key)
        if found is not None:
            self._results.move_to_end(key)
        return found

    def put(self, key: bytes, results: dict[str, Any]) -> None:
        self._results[key] = results
        self._results.move_to_end(key)
        while len(self._results) > self.size:
            self._results.popitem(last=False)
