"""The base of ALBERT predictors, in three steps: CPU `preprocess` (the fast tokenizer), device `forward`
(token-budget batches) and numpy `postprocess`. Each task's predictor is a small subclass
(`albert_batch.inference.classification`, `albert_batch.inference.ner`); in fp32 their results match
Hugging Face's pipelines.

`preprocess` runs in the tokenizer stage and needs no model (nor transformers: it calls the Rust tokenizer
directly); `predict` runs `forward` and `postprocess` in the model stage on the features `preprocess`
produced. Logits become float32 numpy exactly once, in `Predictor.forward`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from albert_batch.config import Precision
from albert_batch.contract import RejectReason, Task
from albert_batch.inference import models
from albert_batch.inference.device import (
    fuse_tanh_gelu,
    quantize_linear_int8,
    resolve_device,
    resolve_dtype,
    slow_precision,
)
from albert_batch.inference.models import ModelInfo

if TYPE_CHECKING:
    import tokenizers
    import torch

log = logging.getLogger(__name__)

Features = dict[str, list[np.ndarray]]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


class Encoder:
    """The Rust tokenizer behind a fast Hugging Face tokenizer, called directly.

    ``tokenizer.json`` is the whole tokenization pipeline as the fast tokenizer saved it, so encoding with
    it gives the same ids, offsets and special-token marks as the fast tokenizer's ``__call__`` (no special
    tokens added, no truncation), while the tokenizer stage needs neither transformers nor torch: actors
    start sooner and hold less memory. Folders without ``tokenizer.json`` fall back to the
    transformers tokenizer's own backend."""

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend

    @classmethod
    def load(cls, info: ModelInfo) -> Encoder:
        path = Path(info.local_dir) / "tokenizer.json"
        if path.is_file():
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(path)))
        return cls(models.load_tokenizer(info).backend_tokenizer)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids only; skips computing offsets."""
        return [e.ids for e in self.backend.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str]) -> list[tokenizers.Encoding]:
        """Ids, character offsets and special-token marks (literal ``[SEP]`` in a text is special)."""
        return self.backend.encode_batch(list(texts), add_special_tokens=False)


def text_reject_reason(text: str | None) -> RejectReason | None:
    """Why a text gets no prediction, or None when it gets one: a null text, or one with nothing but
    whitespace (its only tokens would be the special ones). The batch job writes such rows to its rejects
    table with this reason; `albert_batch.load_predictor` refuses them with it."""
    if text is None:
        return RejectReason.NULL_TEXT
    if not text.strip():
        return RejectReason.BLANK_TEXT
    return None


def token_budget_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Row indices grouped for forward passes: sorted by length, each group as many rows as fit in
    ``max_tokens`` once padded to its longest row (a longer row alone always gets its own group)."""
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * lengths[order[stop]] <= max_tokens:
            stop += 1
        groups.append(order[start:stop])
        start = stop
    return groups


def pass_threads(count: int) -> ThreadPoolExecutor:
    """``count`` threads that run CPU forward passes side by side, each with torch on one thread.

    On CPUs, N passes on one thread each beat one pass on N threads: torch's threads meet at a barrier
    after every operator, so a thread that loses its core for a moment (to the tokenizer, Ray or another
    job) stalls its siblings too, while side-by-side passes wait for nobody (BENCHMARKS.md, "What makes it
    fast"). ``torch.set_num_threads`` is process-wide, so the process runs torch on one thread per calling
    thread from then on."""
    import torch

    return ThreadPoolExecutor(count, thread_name_prefix="forward", initializer=torch.set_num_threads, initargs=(1,))


def map_longest_first(pool: ThreadPoolExecutor, one_pass: Callable[[Any], Any], groups: Sequence[Any]) -> list[Any]:
    """``one_pass`` over length-sorted ``groups`` on ``pool``, the longest first so that no thread is left
    with a long pass at the end; results in the groups' order."""
    return list(pool.map(one_pass, groups[::-1]))[::-1]


class Predictor(ABC):
    """Base of the task predictors. It owns the device, the dtype and `torch.inference_mode`; a task's
    subclass says how texts become features (`preprocess`), features become model inputs (`sequences`)
    and logits become results (`postprocess`)."""

    task: ClassVar[Task]
    # What `preprocess` gives for each text: a list column per array feature, a scalar column otherwise.
    features: ClassVar[dict[str, pa.DataType]]

    def __init__(
        self,
        info: ModelInfo,
        *,
        load_model: bool = True,
        precision: Precision = Precision.FP32,
        use_gpu: bool = False,
        max_tokens_per_forward: int = 2048,
        parallel_passes: int = 1,
        allow_pickle_weights: bool = False,
    ) -> None:
        self.info = info
        self.encoder = Encoder.load(info)
        self.max_length = info.max_length
        self.labels = info.labels
        self.max_tokens_per_forward = max_tokens_per_forward
        if parallel_passes < 1:
            raise ValueError(f"parallel_passes must be at least 1, got {parallel_passes}")
        self._pass_pool = pass_threads(parallel_passes) if parallel_passes > 1 else None
        self.model = None
        if load_model:
            import torch

            tokenizer = models.load_tokenizer(info)  # knows which tokens are CLS, SEP and padding
            self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
            self.device = resolve_device(use_gpu)
            self.dtype = resolve_dtype(precision, self.device)
            self.model = models.load_model(
                info, dtype=self.dtype, device=self.device, allow_pickle_weights=allow_pickle_weights
            )
            if precision is Precision.INT8:
                quantize_linear_int8(self.model)
            if self.dtype != torch.float32 or precision is Precision.INT8:  # fp32 alone keeps Hugging Face's GELU
                fuse_tanh_gelu(self.model)
            if warning := slow_precision(precision, use_gpu=self.device.type == "cuda"):
                log.warning("model %s: %s", info.uri, warning)
            self.config = self.model.config

    # -- preprocess (CPU, no model) -------------------------------------------------------------
    @abstractmethod
    def preprocess(self, texts: Sequence[str]) -> Features:
        """Tokenize texts into per-row arrays (content tokens only; special tokens are added later)."""

    def text_tokens(self, features: Features) -> list[int]:
        """Each text's length in tokens, special tokens excluded, before any truncation or windowing."""
        return [len(ids) for ids in features["input_ids"]]

    # -- forward (device) -----------------------------------------------------------------------
    @abstractmethod
    def sequences(self, features: Features) -> list[np.ndarray]:
        """The model's input sequences (special tokens included) for the rows of ``features``."""

    def _with_specials(self, ids: np.ndarray) -> np.ndarray:
        seq = np.empty(len(ids) + 2, dtype=np.int64)
        seq[0] = self.cls_id
        seq[1:-1] = ids
        seq[-1] = self.sep_id
        return seq

    def forward(self, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Logits (float32 numpy) for each sequence, computed in `token_budget_batches` of at most
        ``max_tokens_per_forward`` tokens, padding included.

        On a GPU every forward pass is queued before any result is read back (copies go to pinned memory
        without blocking), so the device runs the passes back to back while the host prepares the next.
        On a CPU with ``parallel_passes`` > 1, that many passes run at once, each on one thread."""
        import torch

        assert self.model is not None, "predictor was built without its model"
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        groups = token_budget_batches(lengths, self.max_tokens_per_forward)

        def one_pass(rows: np.ndarray) -> torch.Tensor:
            with torch.inference_mode():  # per thread
                # ALBERT's token_type_ids default to zeros, as the tokenizer would give for one segment.
                return self._to_host(self.model(**self._padded(sequences, lengths, rows)).logits)

        if self.device.type == "cuda" or self._pass_pool is None:
            pending = [one_pass(rows) for rows in groups]
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        else:
            pending = map_longest_first(self._pass_pool, one_pass, groups)
        out: list[np.ndarray | None] = [None] * len(sequences)
        for rows, logits in zip(groups, pending, strict=True):
            values = logits.numpy()
            for i, r in enumerate(rows):
                out[r] = values[i, : lengths[r]] if values.ndim == 3 else values[i]
        return out  # type: ignore[return-value]

    def _padded(self, sequences: Sequence[np.ndarray], lengths: np.ndarray, rows: np.ndarray) -> dict[str, torch.Tensor]:
        width = int(lengths[rows].max())
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : lengths[r]] = sequences[r]
            mask[i, : lengths[r]] = 1
        return {"input_ids": self._to_device(ids), "attention_mask": self._to_device(mask)}

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        import torch

        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _to_host(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 logits on the host; from a GPU, an asynchronous copy into pinned memory (read it only
        after the stream is synchronised)."""
        import torch

        if self.device.type != "cuda":
            return logits.float()
        host = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
        return host.copy_(logits.float(), non_blocking=True)

    # -- postprocess (numpy) --------------------------------------------------------------------
    @abstractmethod
    def postprocess(self, texts: Sequence[str], features: Features, logits: list[np.ndarray]) -> list[dict[str, Any]]:
        """One result per text from the logits of its `sequences`: a dict with the task's result columns
        (`albert_batch.contract.TaskOutput.results`)."""

    def predict(self, texts: Sequence[str], features: Features) -> list[dict[str, Any]]:
        """Forward and postprocess rows that `preprocess` produced; one result per text."""
        if not texts:
            return []
        return self.postprocess(texts, features, self.forward(self.sequences(features)))

    def __call__(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        return self.predict(texts, self.preprocess(texts))
