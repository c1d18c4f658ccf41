"""ALBERT predictors in three steps: CPU `preprocess` (fast tokenizer), device `forward` (token-budget
batches) and numpy `postprocess`. Results match Hugging Face's ``text-classification`` and
``token-classification`` (``aggregation_strategy="simple"``) pipelines in fp32.

`preprocess` runs in the tokenizer stage and needs no model (nor transformers: it calls the Rust tokenizer
directly); `predict` runs in the model stage on the features that `preprocess` produced. Logits become
float32 numpy exactly once, in `Predictor.forward`.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from albert_batch import models
from albert_batch.config import Precision, Task
from albert_batch.models import ModelInfo

if TYPE_CHECKING:
    import tokenizers
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


class Encoder:
    """The Rust tokenizer behind a fast Hugging Face tokenizer, called directly.

    ``tokenizer.json`` is the whole tokenization pipeline as the fast tokenizer saved it, so encoding with
    it gives the same ids, offsets and special-token marks as the fast tokenizer's ``__call__`` (no special
    tokens added, no truncation), while the tokenizer stage needs neither transformers nor torch: actors
    start seconds sooner and hold ~250 MB less. Folders without ``tokenizer.json`` fall back to the
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


def fuse_tanh_gelu(model: torch.nn.Module) -> int:
    """Swap transformers' tanh-approximation GELU (ALBERT's ``gelu_new``), written as six elementwise
    torch ops, for torch's fused kernel of the same formula; return how many modules were swapped.

    In bf16 each of those ops is a pass over the feed-forward layer's largest tensor, rounded to bf16 in
    between; the fused kernel makes one pass and computes in float32 inside. ALBERT-base runs ~1.4x faster
    in bf16 on AMX CPUs, and no further from fp32. Not for fp32 models: their results must match Hugging
    Face's pipelines, which use the op-by-op formula."""
    import torch
    from transformers.activations import FastGELUActivation, NewGELUActivation

    swapped = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (NewGELUActivation, FastGELUActivation)):
                setattr(parent, name, torch.nn.GELU(approximate="tanh"))
                swapped += 1
    return swapped


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
    job) stalls its siblings too, while side-by-side passes wait for nobody. ALBERT-base, bf16, 2 cores:
    ~5,400 tokens/s as two one-thread passes against ~4,500-5,100 as one two-thread pass (see
    BENCHMARKS.md). ``torch.set_num_threads`` is process-wide, so the process runs torch on one thread per
    calling thread from then on."""
    import torch

    return ThreadPoolExecutor(count, thread_name_prefix="forward", initializer=torch.set_num_threads, initargs=(1,))


def map_longest_first(pool: ThreadPoolExecutor, one_pass: Callable[[Any], Any], groups: Sequence[Any]) -> list[Any]:
    """``one_pass`` over length-sorted ``groups`` on ``pool``, the longest first so that no thread is left
    with a long pass at the end; results in the groups' order."""
    return list(pool.map(one_pass, groups[::-1]))[::-1]


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
            if self.dtype != torch.float32:
                fuse_tanh_gelu(self.model)
            self.config = self.model.config

    # -- preprocess (CPU, no model) -------------------------------------------------------------
    @abstractmethod
    def preprocess(self, texts: Sequence[str]) -> Features:
        """Tokenize texts into per-row arrays (content tokens only; special tokens are added later)."""

    # -- forward (device) -----------------------------------------------------------------------
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
        for row in self.encoder.ids(texts):
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
        if not features["input_ids"]:
            return []
        logits = np.stack(self.forward([self._with_specials(ids) for ids in features["input_ids"]]))
        function = self._function()
        scores = softmax(logits) if function == "softmax" else sigmoid(logits) if function == "sigmoid" else logits
        best = scores.argmax(axis=-1)
        return [
            {
                "label": self.labels[b],
                "score": float(row[b]),
                "scores": dict(zip(self.labels, row.tolist(), strict=True)),
                "truncated": bool(truncated),
            }
            for b, row, truncated in zip(best, scores, features["truncated"], strict=True)
        ]


class NerPredictor(Predictor):
    """Entities per text: ``label``, ``text`` (= ``original[start:end]``), ``start``, ``end``, ``score``.

    Texts longer than the model's window are covered by overlapping windows; each token takes its scores
    from the window in which it sits farthest from an edge, so no entity after token 512 is lost."""

    task = Task.NER

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
            "input_ids": [np.asarray(e.ids, dtype=np.int32) for e in encodings],
            "offsets": [np.asarray(e.offsets, dtype=np.int32).reshape(-1, 2) for e in encodings],
            "special": [np.asarray(e.special_tokens_mask, dtype=bool) for e in encodings],
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


PREDICTORS: dict[Task, type[Predictor]] = {Task.CLASSIFY: ClassificationPredictor, Task.NER: NerPredictor}


def build_predictor(info: ModelInfo, **kwargs: Any) -> Predictor:
    if info.task is not Task.NER:
        kwargs.pop("window_overlap", None)
    return PREDICTORS[info.task](info, **kwargs)
