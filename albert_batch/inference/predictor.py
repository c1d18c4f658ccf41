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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from albert_batch.config import Precision
from albert_batch.contract import RejectReason, Task
from albert_batch.inference import models
from albert_batch.inference.device import resolve_device, resolve_dtype, slow_precision
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
        out: list[list[int]] = [[] for _ in texts]
        for group in _groups(*_pieces(texts)):
            encoded = self.backend.encode_batch_fast([piece for _, _, piece in group], add_special_tokens=False)
            for (owner, _, _), encoding in zip(group, encoded, strict=True):
                out[owner].extend(encoding.ids)
        return out

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Ids, character offsets and special-token marks (literal ``[SEP]`` in a text is special)."""
        parts: list[list[Encoded]] = [[] for _ in texts]
        for group in _groups(*_pieces(texts)):
            encoded = self.backend.encode_batch([piece for _, _, piece in group], add_special_tokens=False)
            for (owner, start, _), encoding in zip(group, encoded, strict=True):
                offsets = np.asarray(encoding.offsets, dtype=np.int32).reshape(-1, 2) + start
                parts[owner].append(Encoded(np.asarray(encoding.ids, dtype=np.int32), offsets,
                                            np.asarray(encoding.special_tokens_mask, dtype=bool)))
        return [Encoded.join(p) for p in parts]


# A text longer than this is tokenized in pieces cut at whitespace, a few pieces at a time: the Rust
# tokenizer keeps many times a text's size in alignment tables and per-token strings while it works, so a
# text of tens of MB would take gigabytes at once. Words are tokenized one by one (whitespace splits
# pre-tokenization), so the pieces give the same tokens; only a run of PIECE_CHARS characters without any
# whitespace is cut where it must be.
PIECE_CHARS = 100_000
GROUP_CHARS = 1_000_000  # characters tokenized in one call


@dataclass(frozen=True)
class Encoded:
    """One text's tokens: ids, (start, end) character offsets in the text, and special-token marks."""

    ids: np.ndarray
    offsets: np.ndarray
    special: np.ndarray

    @classmethod
    def join(cls, parts: list[Encoded]) -> Encoded:
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.ids for p in parts]), np.concatenate([p.offsets for p in parts]),
                   np.concatenate([p.special for p in parts]))


def _pieces(texts: Sequence[str]) -> tuple[list[tuple[int, str]], list[int]]:
    """Each text, or its pieces of at most `PIECE_CHARS` (each starting where the text has whitespace), as
    (start in the text, piece); and the text each piece belongs to."""
    pieces: list[tuple[int, str]] = []
    owners: list[int] = []
    for owner, text in enumerate(texts):
        start = 0
        while len(text) - start > PIECE_CHARS:
            cut = _last_space(text, start + 1, start + PIECE_CHARS) or start + PIECE_CHARS
            pieces.append((start, text[start:cut]))
            owners.append(owner)
            start = cut
        pieces.append((start, text[start:]))
        owners.append(owner)
    return pieces, owners


def _groups(pieces: list[tuple[int, str]], owners: list[int]) -> Iterator[list[tuple[int, int, str]]]:
    """(owner, start, piece) in groups of about `GROUP_CHARS` characters, in order."""
    group: list[tuple[int, int, str]] = []
    size = 0
    for owner, (start, piece) in zip(owners, pieces, strict=True):
        if group and size + len(piece) > GROUP_CHARS:
            yield group
            group, size = [], 0
        group.append((owner, start, piece))
        size += len(piece)
    if group:
        yield group


def _last_space(text: str, low: int, high: int) -> int | None:
    """The last position in [low, high) whose character is whitespace, or None."""
    for position in range(high - 1, low - 1, -1):
        if text[position].isspace():
            return position
    return None


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


PASSES_KEPT = 10_000  # the passes whose seconds `ForwardStats` keeps until taken (its sums count them all)


@dataclass
class ForwardStats:
    """What a predictor's forward passes did: each pass's seconds, the tokens they computed (real: special
    tokens included; padding), and the wall time of the `Predictor.forward` calls (passes run side by side)."""

    pass_seconds: list[float] = field(default_factory=list)
    real_tokens: int = 0
    padding_tokens: int = 0
    wall_seconds: float = 0.0


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
        self.forward_stats = ForwardStats()
        if load_model:
            from albert_batch.inference import kernels

            self.cls_id, self.sep_id, self.pad_id = models.special_token_ids(info, self.encoder.backend.token_to_id)
            self.device = resolve_device(use_gpu)
            self.dtype = resolve_dtype(precision, self.device)
            self.model = models.load_model(
                info, dtype=self.dtype, device=self.device, allow_pickle_weights=allow_pickle_weights
            )
            kernels.prepare(self.model, precision=precision, dtype=self.dtype, device=self.device)
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
        began = time.perf_counter()

        def one_pass(rows: np.ndarray) -> tuple[torch.Tensor, float]:
            start = time.perf_counter()
            with torch.inference_mode():  # per thread
                # ALBERT's token_type_ids default to zeros, as the tokenizer would give for one segment.
                logits = self._to_host(self.model(**self._padded(sequences, lengths, rows)))
            return logits, time.perf_counter() - start

        if self.device.type == "cuda" or self._pass_pool is None:
            pending = [one_pass(rows) for rows in groups]
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        else:
            pending = map_longest_first(self._pass_pool, one_pass, groups)
        self._count_passes(groups, lengths, [seconds for _, seconds in pending], time.perf_counter() - began)
        out: list[np.ndarray | None] = [None] * len(sequences)
        for rows, (logits, _) in zip(groups, pending, strict=True):
            values = logits.numpy()
            for i, r in enumerate(rows):
                out[r] = values[i, : lengths[r]] if values.ndim == 3 else values[i]
        return out  # type: ignore[return-value]

    def _count_passes(self, groups: list[np.ndarray], lengths: np.ndarray, seconds: list[float], wall: float) -> None:
        real = [int(lengths[rows].sum()) for rows in groups]
        padded = [len(rows) * int(lengths[rows].max()) for rows in groups]
        if self.device.type == "cuda":  # passes run queued on the device: their time is known only in all
            seconds = [wall * p / sum(padded) for p in padded]
        stats = self.forward_stats
        stats.pass_seconds = [*stats.pass_seconds, *seconds][-PASSES_KEPT:]
        stats.real_tokens += sum(real)
        stats.padding_tokens += sum(padded) - sum(real)
        stats.wall_seconds += wall

    def take_forward_stats(self) -> ForwardStats:
        """What the forward passes since the last call did, and start counting again."""
        stats, self.forward_stats = self.forward_stats, ForwardStats()
        return stats

    def _padded(self, sequences: Sequence[np.ndarray], lengths: np.ndarray,
                rows: np.ndarray) -> dict[str, torch.Tensor | None]:
        """The pass's input ids, padded to its longest row, and its attention mask; no mask when no row is
        padded (decided here, on the host: the model need not read a device's mask back to know)."""
        width = int(lengths[rows].max())
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : lengths[r]] = sequences[r]
            mask[i, : lengths[r]] = 1
        padded = int(lengths[rows].min()) < width
        return {"input_ids": self._to_device(ids), "attention_mask": self._to_device(mask) if padded else None}

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
