"""The predictor of each task, built from a model that `albert_batch.inference.models.inspect` checked."""

from __future__ import annotations

from typing import Any

from albert_batch.contract import Task
from albert_batch.errors import ModelLoadError
from albert_batch.inference import models
from albert_batch.inference.classification import ClassificationPredictor
from albert_batch.inference.models import ModelInfo
from albert_batch.inference.ner import NerPredictor
from albert_batch.inference.predictor import Predictor

PREDICTORS: dict[Task, type[Predictor]] = {Task.CLASSIFY: ClassificationPredictor, Task.NER: NerPredictor}


def build_predictor(info: ModelInfo, **kwargs: Any) -> Predictor:
    if info.task is not Task.NER:
        kwargs.pop("window_overlap", None)
    return PREDICTORS[info.task](info, **kwargs)


def load_predictors(model_uris: dict[Task, str], weights_sha256: dict[Task, str] | None = None,
                    **kwargs: Any) -> dict[Task, Predictor]:
    """The predictors of ``model_uris``. With ``weights_sha256`` (what the driver inspected and put in the
    manifest), weights that differ — the model was overwritten during the run, or a hub id without a
    revision moved on — are refused, so one partition never mixes two models' results."""
    allow_pickle = kwargs.get("allow_pickle_weights", False)
    predictors = {}
    for task, uri in model_uris.items():
        info = models.inspect(uri, task, allow_pickle_weights=allow_pickle, hash_weights=weights_sha256 is not None)
        if weights_sha256 is not None and info.weights_sha256 != weights_sha256[task]:
            raise ModelLoadError(
                f"model {uri} changed during the run: its weights are {info.weights_sha256[:12]}… here, "
                f"{weights_sha256[task][:12]}… when the run started. Pin a revision, or publish new models "
                "to a new location"
            )
        predictors[task] = build_predictor(info, **kwargs)
    return predictors
