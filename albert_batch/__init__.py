"""albert-batch: batch ALBERT classification and NER on Ray Data, Parquet in, Hive-partitioned Parquet out.

The public surface is small::

    from albert_batch import RunConfig, run
    summary = run(RunConfig(input="s3://corpus/reviews/", output="s3://results/reviews/",
                            classifier_model="models/sentiment", ner_model="models/ner"))

    from albert_batch import load_predictor       # a few texts in this process, no Ray
    load_predictor("classify", "models/sentiment")(["great phone", "battery died"])

Importing this package has no side effects and does not import torch or ray.
"""

from albert_batch.config import Precision, ResourceConfig, RunConfig
from albert_batch.contract import Task
from albert_batch.errors import (
    AlbertBatchError,
    ConfigError,
    ExitCode,
    InputError,
    ModelLoadError,
    NodeLost,
    NotFound,
    OutputError,
    PermissionDenied,
    PublishError,
    RayUnavailable,
    Stopped,
    StorageError,
    Transient,
)

__version__ = "0.1.0"

__all__ = [
    "AlbertBatchError",
    "ConfigError",
    "ExitCode",
    "InputError",
    "ModelLoadError",
    "NodeLost",
    "NotFound",
    "OutputError",
    "PermissionDenied",
    "Precision",
    "PublishError",
    "RayUnavailable",
    "ResourceConfig",
    "RunConfig",
    "RunSummary",
    "Stopped",
    "StorageError",
    "Task",
    "Transient",
    "__version__",
    "load_predictor",
    "run",
]


def __getattr__(name: str) -> object:
    # `run` pulls in Ray Data; load it on first use so that importing the package stays light.
    if name == "run":
        from albert_batch.pipeline import runner

        return runner.run
    if name == "RunSummary":
        from albert_batch.pipeline.summary import RunSummary

        return RunSummary
    if name == "load_predictor":  # numpy and pyarrow at import; torch only when a model is loaded
        from albert_batch import predict

        return predict.load_predictor
    raise AttributeError(f"module 'albert_batch' has no attribute {name!r}")
