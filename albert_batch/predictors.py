"""ALBERT predictors in three steps: CPU `preprocess` (fast tokenizer), device `forward` (token-budget
batches) and numpy `postprocess`. Results match Hugging Face's ``text-classification`` and
``token-classification`` (``aggregation_strategy="simple"``) pipelines in fp32.

`preprocess` runs in the tokenizer stage and needs no model; `predict` runs in the model stage on the
features that `preprocess` produced. Logits become float32 numpy exactly once, in `Predictor.forward`.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from albert_batch import models
from albert_batch.config import Precision, Task
from albert_batch.models import ModelInfo

if TYPE_CHECKING:
    import torch

Features = dict[str, list[np.ndarray]]


@functools.cache
def cpu_has_amx() -> bool:
    """True when the CPU multiplies bf16 matrices natively (Intel AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in fh)
    except OSError:
        return False


def resolve_device(use_gpu: bool) -> torch.device:
    import torch

    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def resolve_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 where the hardware runs it fast (AMX CPUs, GPUs with bf16), fp32 elsewhere."""
    import torch

    if precision is Precision.FP32:
        return torch.float32
    if precision is Precision.BF16:
        return torch.bfloat16
    if precision is Precision.FP16:
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_amx() else torch.float32


def describe_precision(precision: Precision, *, use_gpu: bool) -> str:
    """What ``precision`` means on this node, for summaries and manifests (no torch import)."""
    if precision is not Precision.AUTO:
        return precision.value
    if use_gpu:
        return "auto (bf16 on GPUs that support it, else fp32)"
    return f"auto ({'bf16: this CPU has AMX' if cpu_has_amx() else 'fp32: this CPU lacks AMX'})"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


class Predictor(ABC):
    """Base of the two task predictors. It owns the device, the dtype and `torch.inference_mode`."""

    task: Task

    def __init__(
        self,
        info: ModelInfo,
        *,
        load_model: bool = True,
        precision: Precision = Precision.FP32,
        use_gpu: bool = False,
        max_tokens_per_forward: int = 2048,
        allow_pickle_weights: bool = False,
    ) -> None:
        self.info = info
        self.tokenizer = models.load_tokenizer(info)
        self.max_length = info.max_length
        self.labels = info.labels
        self.max_tokens_per_forward = max_tokens_per_forward
        self.model = None
        if load_model:
            self.device = resolve_device(use_gpu)
            self.dtype = resolve_dtype(precision, self.device)
            self.model = models.load_model(
                info, dtype=self.dtype, device=self.device, allow_pickle_weights=allow_pickle_weights
            )
            self.config = self.model.config

    # -- preprocess (CPU, no model) -------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )

    @abstractmethod
    def preprocess(self, texts: Sequence[str]) -> Features:
        """Tokenize texts into per-row arrays (content tokens only; special tokens are added later)."""

    # -- forward (device) -----------------------------------------------------------------------
    def _with_specials(self, ids: np.ndarray) -> np.ndarray:
        seq = np.empty(len(ids) + 2, dtype=np.int64)
        seq[0] = self.tokenizer.cls_token_id
        seq[1:-1] = ids
        seq[-1] = self.tokenizer.sep_token_id
        return seq

    def forward(self, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Logits (float32 numpy) for each sequence. Sequences are sorted by length and grouped so that
        each forward pass holds at most ``max_tokens_per_forward`` tokens, padding included."""
        import torch

        assert self.model is not None, "predictor was built without its model"
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        order = np.argsort(lengths, kind="stable")
        out: list[np.ndarray | None] = [None] * len(sequences)
        pad = self.tokenizer.pad_token_id or 0
        start = 0
        with torch.inference_mode():
            while start < len(order):
                stop = start + 1
                while stop < len(order) and (stop - start + 1) * lengths[order[stop]] <= self.max_tokens_per_forward:
                    stop += 1
                rows = order[start:stop]
                width = int(lengths[rows[-1]])
                ids = np.full((len(rows), width), pad, dtype=np.int64)
                mask = np.zeros((len(rows), width), dtype=np.int64)
                for i, r in enumerate(rows):
                    ids[i, : lengths[r]] = sequences[r]
                    mask[i, : lengths[r]] = 1
                logits = self.model(
                    input_ids=self._to_device(ids),
                    attention_mask=self._to_device(mask),
                    token_type_ids=self._to_device(np.zeros_like(ids)),
                ).logits
                logits = logits.float().cpu().numpy()
                for i, r in enumerate(rows):
                    out[r] = logits[i, : lengths[r]] if logits.ndim == 3 else logits[i]
                start = stop
        return out  # type: ignore[return-value]

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        import torch

        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    # -- postprocess (numpy) --------------------------------------------------------------------
    @abstractmethod
    def predict(self, texts: Sequence[str], features: Features) -> list[dict[str, Any]]:
        """Forward and postprocess rows that `preprocess` produced; one result per text."""

    def __call__(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        return self.predict(texts, self.preprocess(texts))


class ClassificationPredictor(Predictor):
    """One label per text: ``label``, ``score``, ``scores`` (every label) and ``truncated``."""

    task = Task.CLASSIFY

    def preprocess(self, texts: Sequence[str]) -> Features:
        budget = self.max_length - 2
        ids, truncated = [], []
        for row in self._encode(texts)["input_ids"]:
            truncated.append(np.array(len(row) > budget))
            ids.append(np.asarray(row[:budget], dtype=np.int32))
        return {"input_ids": ids, "truncated": truncated}

    def _function(self) -> str:
        config = self.config
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def predict(self, texts: Sequence[str], features: Features) -> list[dict[str, Any]]:
        logits = self.forward([self._with_specials(ids) for ids in features["input_ids"]])
        function = self._function()
        results = []
        for row_logits, truncated in zip(logits, features["truncated"], strict=True):
            scores = softmax(row_logits) if function == "softmax" else sigmoid(row_logits) if function == "sigmoid" else row_logits
            best = int(scores.argmax())
            results.append(
                {
                    "label": self.labels[best],
                    "score": float(scores[best]),
                    "scores": dict(zip(self.labels, map(float, scores), strict=True)),
                    "truncated": bool(truncated),
                }
            )
        return results


class NerPredictor(Predictor):
    """Entities per text: ``label``, ``text`` (= ``original[start:end]``), ``start``, ``end``, ``score``.

    Texts longer than the model's window are covered by overlapping windows; each token takes its scores
    from the window in which it sits farthest from an edge, so no entity after token 512 is lost."""

    task = Task.NER

    def __init__(self, info: ModelInfo, *, window_overlap: int = 128, **kwargs: Any) -> None:
        super().__init__(info, **kwargs)
        self.window_overlap = window_overlap

    def preprocess(self, texts: Sequence[str]) -> Features:
        encoded = self._encode(texts)
        return {
            "input_ids": [np.asarray(r, dtype=np.int32) for r in encoded["input_ids"]],
            "offsets": [np.asarray(r, dtype=np.int32).reshape(-1, 2) for r in encoded["offset_mapping"]],
            "special": [np.asarray(r, dtype=bool) for r in encoded["special_tokens_mask"]],
        }

    def windows(self, length: int) -> list[int]:
        """Start positions of the windows that cover ``length`` content tokens."""
        size = self.max_length - 2
        if length <= size:
            return [0]
        step = max(1, size - self.window_overlap)
        starts = list(range(0, length - size, step))
        return [*starts, length - size]

    def predict(self, texts: Sequence[str], features: Features) -> list[dict[str, Any]]:
        size = self.max_length - 2
        sequences, spans = [], []
        for ids in features["input_ids"]:
            starts = self.windows(len(ids))
            spans.append((len(sequences), starts))
            sequences.extend(self._with_specials(ids[s : s + size]) for s in starts)
        logits = self.forward(sequences)
        results = []
        for text, ids, offsets, special, (first, starts) in zip(
            texts, features["input_ids"], features["offsets"], features["special"], spans, strict=True
        ):
            token_logits = self._merge_windows([logits[first + k][1:-1] for k in range(len(starts))], starts, len(ids))
            results.append({"entities": self._entities(text, softmax(token_logits), offsets, special)})
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
        # new run); the group's score is the mean of its tokens' scores; "O" groups are dropped.
        best = scores.argmax(axis=-1)
        groups: list[tuple[str, list[int]]] = []  # (tag, token indices)
        for index in np.flatnonzero(~special):
            bi, tag = _split_tag(self.labels[best[index]])
            if groups and groups[-1][0] == tag and bi != "B":
                groups[-1][1].append(int(index))
            else:
                groups.append((tag, [int(index)]))
        entities = []
        for _, members in groups:
            label = self.labels[best[members[0]]].split("-", 1)[-1]
            if label == "O":
                continue
            start, end = int(offsets[members[0], 0]), int(offsets[members[-1], 1])
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if start == end:
                continue
            score = float(np.mean(scores[members, best[members]]))
            entities.append({"label": label, "text": text[start:end], "start": start, "end": end, "score": score})
        return entities


def _split_tag(name: str) -> tuple[str, str]:
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


PREDICTORS: dict[Task, type[Predictor]] = {Task.CLASSIFY: ClassificationPredictor, Task.NER: NerPredictor}


def build_predictor(info: ModelInfo, **kwargs: Any) -> Predictor:
    if info.task is not Task.NER:
        kwargs.pop("window_overlap", None)
    return PREDICTORS[info.task](info, **kwargs)
