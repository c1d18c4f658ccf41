"""Masked-language-model masking as ALBERT pretrains: whole words, in n-grams of up to three words (n drawn
with probability proportional to 1/n), until about ``probability`` of a sequence's tokens are chosen; a
chosen token becomes [MASK] 80% of the time, a random token 10%, and stays itself 10%. Special tokens
([CLS], [SEP], padding, unknown) are never chosen."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from albert_batch.training.bio import IGNORE_INDEX

MAX_NGRAM = 3


@dataclass(frozen=True)
class Masker:
    mask_id: int
    vocab_size: int
    special_ids: frozenset[int]
    probability: float = 0.15
    # ALBERT's n-gram weights: P(n) proportional to 1/n for n = 1..MAX_NGRAM.
    ngram_weights: np.ndarray = field(init=False, repr=False, compare=False)
    replacements: np.ndarray = field(init=False, repr=False, compare=False)  # the ids a random replacement draws

    def __post_init__(self) -> None:
        weights = 1 / np.arange(1, MAX_NGRAM + 1)
        object.__setattr__(self, "ngram_weights", weights / weights.sum())
        ordinary = np.setdiff1d(np.arange(self.vocab_size), np.fromiter(self.special_ids, dtype=np.int64))
        object.__setattr__(self, "replacements", ordinary)

    def __call__(self, input_ids: np.ndarray, word_starts: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The masked ids and the labels: the original id where a token was chosen, IGNORE_INDEX elsewhere."""
        ids = np.asarray(input_ids, dtype=np.int64)
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        words = self._words(ids, word_starts)
        ordinary = sum(len(w) for w in words)
        if not ordinary:
            return ids.copy(), labels
        budget = max(1, round(ordinary * self.probability))
        chosen = np.zeros(len(ids), dtype=bool)
        count = 0
        for start in rng.permutation(len(words)):
            if count >= budget:
                break
            n = int(rng.choice(MAX_NGRAM, p=self.ngram_weights)) + 1
            while n and count + sum(len(w) for w in words[start : start + n]) > budget:
                n -= 1  # a shorter n-gram from the same word, as ALBERT does, when the longer one overshoots
            span = np.concatenate(words[start : start + n]) if n else np.empty(0, np.int64)
            if not len(span) or chosen[span].any():
                continue
            chosen[span] = True
            count += len(span)
        positions = np.flatnonzero(chosen)
        labels[positions] = ids[positions]
        masked = ids.copy()
        draw = rng.random(len(positions))
        masked[positions[draw < 0.8]] = self.mask_id
        swapped = positions[(draw >= 0.8) & (draw < 0.9)]
        masked[swapped] = rng.choice(self.replacements, size=len(swapped))
        return masked, labels

    def _words(self, ids: np.ndarray, word_starts: np.ndarray) -> list[np.ndarray]:
        """Positions of each whole word; special tokens end a word, and the token after one begins a word."""
        special = np.isin(ids, list(self.special_ids))
        words: list[list[int]] = []
        for i, (is_special, starts) in enumerate(zip(special, word_starts, strict=True)):
            if is_special:
                continue
            if starts or not words or special[i - 1]:
                words.append([i])
            else:
                words[-1].append(i)
        return [np.asarray(w, dtype=np.int64) for w in words]
