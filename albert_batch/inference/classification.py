"""Text classification: one label per text, as Hugging Face's ``text-classification`` pipeline gives it."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from albert_batch.contract import Task
from albert_batch.inference.predictor import Features, Predictor, sigmoid, softmax


class ScoreFunction(StrEnum):
    """How logits become scores, chosen from the model's config as Hugging Face's pipeline chooses it."""

    NONE = "none"  # regression: the logits themselves
    SIGMOID = "sigmoid"  # one label, or several that may all apply
    SOFTMAX = "softmax"  # one of several labels


SCORE_FUNCTIONS = {ScoreFunction.NONE: lambda logits: logits, ScoreFunction.SIGMOID: sigmoid,
                   ScoreFunction.SOFTMAX: softmax}


class ClassificationPredictor(Predictor):
    """One label per text: ``label``, ``score``, ``scores`` (every label) and ``truncated``."""

    task = Task.CLASSIFY
    features: ClassVar[dict[str, pa.DataType]] = {"input_ids": pa.list_(pa.int32()), "tokens": pa.int32()}

    def preprocess(self, texts: Sequence[str]) -> Features:
        """Token ids cut to the model's length, and each text's whole length in tokens."""
        budget = self.max_length - 2
        ids, tokens = [], []
        for row in self.encoder.ids(texts):
            tokens.append(np.array(len(row), dtype=np.int32))
            ids.append(np.asarray(row[:budget], dtype=np.int32))
        return {"input_ids": ids, "tokens": tokens}

    def text_tokens(self, features: Features) -> list[int]:
        return [int(n) for n in features["tokens"]]

    def sequences(self, features: Features) -> list[np.ndarray]:
        return [self._with_specials(ids) for ids in features["input_ids"]]

    @property
    def score_function(self) -> ScoreFunction:
        config = self.config
        if config.problem_type == "regression":
            return ScoreFunction.NONE
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return ScoreFunction.SIGMOID
        return ScoreFunction.SOFTMAX

    def postprocess(self, texts: Sequence[str], features: Features, logits: list[np.ndarray]) -> list[dict[str, Any]]:
        scores = SCORE_FUNCTIONS[self.score_function](np.stack(logits))
        best = scores.argmax(axis=-1)
        budget = self.max_length - 2
        return [
            {
                "label": self.labels[b],
                "score": float(row[b]),
                "scores": dict(zip(self.labels, row.tolist(), strict=True)),
                "truncated": bool(tokens > budget),
            }
            for b, row, tokens in zip(best, scores, features["tokens"], strict=True)
        ]
