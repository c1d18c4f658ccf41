"""What a finished run reports: `RunSummary`, the figures every partition's manifest repeats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunSummary:
    """What a finished run did; the same figures are in every partition's ``_manifest.json``."""

    run_id: str
    output: str
    partitions: dict[str, str]
    input_rows: int
    accepted_rows: int
    rejected_rows: int
    rejects_by_reason: dict[str, int]
    label_counts: dict[str, int]
    sample_entities: list[dict[str, Any]]
    seconds: float
    precision: str
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)  # the StageSizing the run used
    # total, reused, the runs whose work was reused, and what changed since the earlier work (`reuse.describe`)
    units: dict[str, Any] = field(default_factory=dict)
    storage_retries: dict[str, int] = field(default_factory=dict)  # storage operations retried, by kind
    # seconds each step took (checks_s, ray_s, reuse_s, process_s, publish_s, total_s), and when, after the run's
    # call, its start-up reached each milestone (`ledger.start_up`: model_actor_s, ..., first_forward_s, first_batch_s)
    timings: dict[str, float] = field(default_factory=dict)
    report: str = ""  # the partition's report (`albert_batch.quality`), in its first table
    shifted: list[str] = field(default_factory=list)  # the drift checks that fired against the previous partition
    tokens: dict[str, int] = field(default_factory=dict)  # text: the accepted rows' text tokens
    forward: dict[str, dict[str, float]] = field(default_factory=dict)  # per task: passes, tokens, seconds
    dedupe: dict[str, Any] = field(default_factory=dict)  # rows whose text repeated another's, not run again
    cost: dict[str, Any] = field(default_factory=dict)  # what the run held (`albert_batch.pipeline.ledger.cost`)

    @classmethod
    def of(cls, shared: dict[str, Any], **figures: Any) -> RunSummary:
        """The summary of a run whose manifests share ``shared``, and its other ``figures``."""
        counts = shared["counts"]
        return cls(run_id=shared["run_id"], input_rows=counts["input_rows"], accepted_rows=counts["accepted_rows"],
                   rejected_rows=counts["rejected_rows"], rejects_by_reason=shared["rejects_by_reason"],
                   label_counts=shared["label_counts"], precision=shared["precision"], models=shared["models"],
                   stages=shared["stages"], units=shared["units"], storage_retries=shared["storage_retries"],
                   timings=dict(shared["timings"]), tokens=shared["tokens"], forward=shared["forward"],
                   dedupe=shared["dedupe"], cost=shared["cost"], **figures)

    @property
    def rows_per_second(self) -> float:
        return self.input_rows / self.seconds if self.seconds else 0.0
