"""Predictions for a few texts in this process, with no Ray and no cluster. `load_predictor` builds the
batch job's own predictor of a task (`albert_batch.inference`) under the batch job's rules — the same model
checks and safe loading, precision rules, token-budget forward passes and windows over long NER texts — so
a text gets here what a run writes for it::

    from albert_batch import load_predictor

    classify = load_predictor("classify", "models/sentiment")
    classify(["great phone", "battery died"])  # [{'label': 'positive', 'score': 0.98, 'scores': {...}, ...}, ...]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, overload

from albert_batch.config import Precision, ResourceConfig, check_precision
from albert_batch.contract import RejectReason, Task
from albert_batch.errors import ConfigError, InputError
from albert_batch.inference import models
from albert_batch.inference.models import ModelInfo
from albert_batch.inference.predictor import Predictor, text_reject_reason
from albert_batch.inference.predictors import build_predictor
from albert_batch.pipeline.sizing import BATCH_ROWS, tokens_per_forward

# A classification (dict) or a text's entities (list of dicts).
Result = dict[str, Any] | list[dict[str, Any]]

REFUSED = {RejectReason.NULL_TEXT: "None", RejectReason.BLANK_TEXT: "empty or only whitespace"}


@dataclass(frozen=True)
class LocalPredictor:
    """A model's predictions in this process. Called with one text it returns one result; with a sequence
    of texts, a list of results in their order:

    - classify: ``{"label", "score", "scores", "truncated"}``, the columns of a run's ``classifications``;
    - ner: the text's entities, ``[{"label", "text", "start", "end", "score"}, ...]``, a run's ``entities``.

    A None or blank text is refused with an InputError naming its position and the reason a run would
    reject it for (``null_text``, ``blank_text``): nothing is dropped silently, and results keep the texts'
    positions."""

    model: ModelInfo  # location, revision, labels and weights' sha256, as a run's manifest records them
    predictor: Predictor = field(repr=False)  # the batch job's predictor of the model's task

    @property
    def task(self) -> Task:
        return self.model.task

    @overload
    def __call__(self, texts: str) -> Result: ...

    @overload
    def __call__(self, texts: Iterable[str]) -> list[Result]: ...

    def __call__(self, texts: str | Iterable[str]) -> Result | list[Result]:
        if isinstance(texts, str):
            _check_text(texts, "the text")
            return self._predict([texts])[0]
        texts = list(texts)
        for position, text in enumerate(texts):
            _check_text(text, f"texts[{position}]")
        return self._predict(texts)

    def _predict(self, texts: list[str]) -> list[Result]:
        results: list[Result] = []
        for start in range(0, len(texts), BATCH_ROWS):  # the batch job's batches: bounded memory for long lists
            results.extend(self.predictor(texts[start : start + BATCH_ROWS]))
        if self.task is Task.NER:
            return [r["entities"] for r in results]
        return results


def _check_text(text: object, name: str) -> None:
    if text is not None and not isinstance(text, str):
        raise InputError(f"{name} is a {type(text).__name__}, not a str")
    reason = text_reject_reason(text)
    if reason is not None:
        raise InputError(f"{name} is {REFUSED[reason]} ({reason.value}: a run puts such rows in its rejects table); "
                         "give it text or leave it out")


def load_predictor(
    task: Task | str,
    model: str,
    *,
    precision: Precision | str = Precision.AUTO,
    use_gpu: bool = False,
    max_tokens_per_forward: int | None = None,
    ner_window_overlap: int = ResourceConfig.ner_window_overlap,
    allow_pickle_weights: bool = False,
) -> LocalPredictor:
    """Load ``model`` (a local folder, ``file://``, an ``s3://`` prefix or a hub id ``org/name[@revision]``)
    for ``task`` (``"classify"`` or ``"ner"``) once, for any number of calls.

    The settings are the batch job's, with its defaults and checks: ``precision`` ``auto`` is bf16 where the
    hardware is fast at it and fp32 elsewhere, ``fp32`` matches Hugging Face's pipelines, ``fp16`` needs
    ``use_gpu``; ``max_tokens_per_forward`` (padding included) defaults to the job's size for the device;
    ``ner_window_overlap`` is the overlap of the windows a long NER text is cut into. Weights must be
    safetensors unless ``allow_pickle_weights``; remote code is never run. Forward passes run one at a time
    on torch's threads. Raises ConfigError for a setting, ModelLoadError for a model that cannot be used."""
    try:
        task = Task(str(task).lower())
    except ValueError:
        raise ConfigError(f"task {task!r} is not one of {', '.join(t.value for t in Task)}") from None
    resources = ResourceConfig(max_tokens_per_forward=max_tokens_per_forward, ner_window_overlap=ner_window_overlap)
    precision = check_precision(precision, gpu=use_gpu, gpu_setting="a GPU (use_gpu=True)")
    if use_gpu:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("use_gpu is set, but torch sees no CUDA device (a CPU build of torch, or no GPU here)")
    info = models.inspect(model, task, allow_pickle_weights=allow_pickle_weights)
    predictor = build_predictor(
        info,
        precision=precision,
        use_gpu=use_gpu,
        max_tokens_per_forward=tokens_per_forward(resources, gpu=use_gpu),
        window_overlap=resources.ner_window_overlap,
        allow_pickle_weights=allow_pickle_weights,
    )
    return LocalPredictor(info, predictor)
