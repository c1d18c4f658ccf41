"""Ray-shaped callables for the two middle stages of a run. Each loads what it needs once, in
``__init__`` (once per actor), and maps an Arrow batch to an Arrow batch; both can be called directly
on a small table, without a cluster.

    TokenizeStage  id, text  ->  id, text, reject_reason, tokens, <task>.<feature>...      (CPU)
    ModelStage     ...       ->  id, reject_reason, tokens, <task>.<result>..., processed_at (GPU or CPU)

A model stage told to ``tokenize`` takes the read's ``id, text`` batches and tokenizes them itself (what a
CPU run does: `albert_batch.pipeline.sizing`), with its models' own tokenizers.

Both pass on each row's position (its unit and row number, `albert_batch.pipeline.columns.POSITION`), the input
columns the run carries (`albert_batch.pipeline.columns.KEPT`) and its reject reason's detail. A row a stage
raises an error for is rejected, not its batch (`albert_batch.pipeline.isolation`).

Neither knows a task by name: the features are what each task's predictor declares
(`Predictor.features`), the results are its output's columns (`albert_batch.contract.TASK_OUTPUTS`).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from albert_batch import metrics
from albert_batch.config import Precision
from albert_batch.contract import TASK_OUTPUTS, TIMESTAMP_TYPE, RejectReason, Task
from albert_batch.inference.predictor import Predictor, text_reject_reason
from albert_batch.inference.predictors import load_predictors
from albert_batch.pipeline import dedupe as dedupe_module
from albert_batch.pipeline import heap
from albert_batch.pipeline import ledger as ledger_module
from albert_batch.pipeline.columns import KEPT, POSITION, TOKENS, from_list_array, task_column, to_list_array
from albert_batch.pipeline.isolation import DETAIL, REASON, check_faults, details, isolated


def reject_reasons(ids: pa.Array | pa.ChunkedArray, texts: list[str | None], earlier: list[str | None] | None = None,
                   *, max_chars: int | None = None) -> list[str | None]:
    """Why each row cannot be processed, or None when it can: the reason the read gave it (``earlier``:
    its bytes are not UTF-8), a null id, a null or blank text, or a text longer than ``max_chars``."""
    id_null = pc.is_null(ids).to_pylist()
    reasons: list[str | None] = []
    for number, (missing_id, text) in enumerate(zip(id_null, texts, strict=True)):
        if earlier is not None and earlier[number] is not None:
            reasons.append(earlier[number])
            continue
        reason = RejectReason.NULL_ID if missing_id else text_reject_reason(text)
        if reason is None and max_chars is not None and len(text) > max_chars:  # type: ignore[arg-type]
            reason = RejectReason.TOO_LONG
        reasons.append(None if reason is None else reason.value)
    return reasons


def earlier_reasons(batch: pa.Table) -> list[str | None] | None:
    """The reasons rows were rejected with before this stage, where the batch carries them."""
    return batch.column(REASON).to_pylist() if REASON in batch.column_names else None


def _positions(batch: pa.Table) -> dict[str, pa.ChunkedArray]:
    """The batch's position columns, where it has them (a stage called on a plain table has none), and the input
    columns the run carries (`albert_batch.pipeline.columns.KEPT`)."""
    return {name: batch.column(name) for name in batch.column_names if name in POSITION or name.startswith(KEPT)}


def _scatter(values: list[Any], accepted: np.ndarray, size: int, fill: Any) -> list[Any]:
    """Place results of the accepted rows back at their row positions; other rows get ``fill``."""
    out = [fill] * size
    for position, value in zip(np.flatnonzero(accepted), values, strict=True):
        out[position] = value
    return out


class TokenizeStage:
    """Validates rows (rejecting null or blank ones with a reason) and tokenizes the accepted texts.

    An actor reserves at most one CPU and tokenizes one batch at a time, so the Rust tokenizer runs on one
    thread (unless ``TOKENIZERS_PARALLELISM`` says otherwise): its own thread pool would spread over every
    core of the node, taking them from the model."""

    def __init__(self, *, model_uris: dict[Task, str], allow_pickle_weights: bool = False,
                 max_text_chars: int | None = None, dedupe: bool = True,
                 ledger: ledger_module.RunLedger | None = None, run: metrics.RunTags | None = None,
                 faults: dict[str, frozenset[object]] | None = None):
        """``ledger``: the run's `albert_batch.pipeline.ledger.RunLedger`, told that this actor lives; ``run``: the
        tags of the metrics it records; ``faults``: the test-only fault hook's rows
        (`albert_batch.pipeline.isolation.FAULTS_ENV`)."""
        ledger_module.heartbeat(ledger, ledger_module.TOKENIZE)
        if run is not None:
            metrics.bind(run)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # read by the tokenizer on every call
        heap.use_the_system_allocator_for_arrow()
        self.predictors = load_predictors(model_uris, load_model=False, allow_pickle_weights=allow_pickle_weights)
        self.max_text_chars = max_text_chars
        self.dedupe = dedupe  # identical texts tokenized once per batch (`albert_batch.pipeline.dedupe`)
        self.faults = faults

    def __call__(self, batch: pa.Table) -> pa.Table:
        return isolated(self.tokenize, batch, stage="tokenize")

    def tokenize(self, batch: pa.Table) -> pa.Table:
        return tokenize_batch(batch, self.predictors, max_text_chars=self.max_text_chars, dedupe=self.dedupe,
                              faults=self.faults)


def tokenize_batch(batch: pa.Table, predictors: dict[Task, Predictor], *, max_text_chars: int | None = None,
                   dedupe: bool = True, faults: dict[str, frozenset[object]] | None = None) -> pa.Table:
    """``batch`` (``id``, ``text``) validated and tokenized by each task's ``predictors``: the tokenize stage's
    work, wherever it runs."""
    ids = batch.column("id")
    texts = batch.column("text").cast(pa.large_string()).to_pylist()
    reasons = reject_reasons(ids, texts, earlier_reasons(batch), max_chars=max_text_chars)
    accepted = np.array([r is None for r in reasons], dtype=bool)
    accepted_texts = [t for t, ok in zip(texts, accepted, strict=True) if ok]
    check_faults("tokenize", faults, ids, accepted)
    columns: dict[str, pa.Array] = {
        "id": ids,
        **_positions(batch),
        "text": pa.array([t if ok else None for t, ok in zip(texts, accepted, strict=True)], pa.large_string()),
        REASON: pa.array(reasons, pa.string()),
        DETAIL: details(batch),
    }
    unique, index = dedupe_module.distinct(accepted_texts) if dedupe else (accepted_texts, None)
    for number, (task, predictor) in enumerate(predictors.items()):
        features = predictor.preprocess(unique) if unique else {}
        if index is not None:  # each distinct text tokenized once, its features copied to its repeats
            features = dedupe_module.expand(features, index)
        if number == 0:  # lengths by the first task's tokenizer
            counts = predictor.text_tokens(features) if accepted_texts else []
            columns[TOKENS] = pa.array(_scatter(counts, accepted, len(texts), None), pa.int32())
        for name, arrow_type in predictor.features.items():
            if pa.types.is_list(arrow_type):
                values = _scatter(features.get(name, []), accepted, len(texts), np.empty(0))
                columns[task_column(task, name)] = to_list_array(values, arrow_type.value_type)
            else:
                values = _scatter([v.item() for v in features.get(name, [])], accepted, len(texts), None)
                columns[task_column(task, name)] = pa.array(values, arrow_type)
    return pa.table(columns)


def _load_predictors(omp_threads: int, ledger: ledger_module.RunLedger | None, *args: Any,
                     **kwargs: Any) -> tuple[dict[Task, Predictor], float]:
    """`load_predictors` in a model actor, torch on ``omp_threads`` threads; and when they were loaded (epoch
    seconds), which the ``ledger`` hears too."""
    import torch

    torch.set_num_threads(omp_threads)
    predictors = load_predictors(*args, **kwargs)
    loaded_at = time.time()
    if ledger is not None:
        ledger.loaded(loaded_at)
    return predictors, loaded_at


class ModelStage:
    """Runs each task's model on the accepted rows of a tokenized batch and adds the result columns."""

    def __init__(
        self,
        *,
        model_uris: dict[Task, str],
        weights_sha256: dict[Task, str],
        precision: Precision,
        use_gpu: bool,
        torch_threads: int,
        max_tokens_per_forward: int,
        window_overlap: int,
        allow_pickle_weights: bool = False,
        dedupe: bool = True,
        ledger: ledger_module.RunLedger | None = None,
        run: metrics.RunTags | None = None,
        faults: dict[str, frozenset[object]] | None = None,
        tokenize: bool = False,
        max_text_chars: int | None = None,
    ):
        """``ledger``, the run's `albert_batch.pipeline.ledger.RunLedger`, hears that this actor lives and of every
        finished batch and its forward passes; ``run``: the tags of the metrics it records; ``faults``: the
        test-only fault hook's rows (`albert_batch.pipeline.isolation.FAULTS_ENV`). With ``tokenize``, each batch
        is the read's (``id``, ``text``), validated (``max_text_chars``) and tokenized here, as `TokenizeStage`
        would, on one thread of the actor: a batch's tokens take a fraction of a percent of its forward passes
        on CPUs (BENCHMARKS.md, "Start-up"), and a run needs no tokenizer actors, nor their processes' start."""
        ledger_module.heartbeat(ledger, ledger_module.MODEL)
        if run is not None:
            metrics.bind(run)
        heap.use_the_system_allocator_for_arrow()
        self.ledger = ledger
        self.faults = faults
        self.tokenize, self.max_text_chars = tokenize, max_text_chars
        if tokenize:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the cores are torch's
        # Identical texts run once per batch, and once per actor while their results stay cached (see dedupe).
        self.cache = dedupe_module.ResultCache() if dedupe else None
        self._rows = self._computed = 0  # accepted rows since the last report, and how many of them were run
        # Ray gives a fractional-CPU actor OMP_NUM_THREADS=1, and runs __init__ and __call__ on different
        # threads; torch reads the variable once, when it loads OpenMP (the first torch import below).
        # On CPUs the predictor runs ``torch_threads`` forward passes side by side, one thread each, so
        # torch stays on one thread. A GPU actor's torch gets its ``torch_threads`` for the ops left on the
        # CPU; the environment sets every thread's default, where torch.set_num_threads reaches only this one.
        omp_threads = torch_threads if use_gpu else 1
        os.environ["OMP_NUM_THREADS"] = str(omp_threads)
        # The models load on a thread of their own (importing torch alone takes a second), so
        # the actor counts as started at once and Ray Data reads and tokenizes the first batch meanwhile; the
        # first call waits for the load and raises its error (BENCHMARKS.md, "Start-up on the AVX2 machine").
        loader = ThreadPoolExecutor(1, thread_name_prefix="load-models")
        self._loading = loader.submit(
            _load_predictors,
            omp_threads,
            ledger,
            model_uris,
            weights_sha256,
            precision=precision,
            use_gpu=use_gpu,
            max_tokens_per_forward=max_tokens_per_forward,
            parallel_passes=1 if use_gpu else torch_threads,
            window_overlap=window_overlap,
            allow_pickle_weights=allow_pickle_weights,
        )
        loader.shutdown(wait=False)

    @property
    def predictors(self) -> dict[Task, Predictor]:
        """Each task's predictor, once loaded: waits for the load, and raises its error (a ModelLoadError for
        a model that changed since the run checked it)."""
        return self._loading.result()[0]

    def __call__(self, batch: pa.Table) -> pa.Table:
        arrived = time.time()
        if self.tokenize:
            batch = isolated(self._tokenize, batch, stage="tokenize")
        output = isolated(self.predict, batch, stage="model")
        heap.return_freed_heap_pages()
        self._report(batch.num_rows, began=max(arrived, self._loading.result()[1]))
        return output

    def _tokenize(self, batch: pa.Table) -> pa.Table:
        return tokenize_batch(batch, self.predictors, max_text_chars=self.max_text_chars, dedupe=self.cache is not None,
                              faults=self.faults)

    def _to_run(self, texts: list[str]) -> tuple[list[bytes] | None, list[int] | None]:
        """Each text's digest, and the positions of the texts to run: the first copy of each text that the
        actor's cache does not hold (without de-duplication: none, and every text runs)."""
        self._rows += len(texts)
        if self.cache is None:
            self._computed += len(texts)
            return None, None
        keys = [dedupe_module.digest(text) for text in texts]
        first: set[bytes] = set()
        to_run = []
        for position, key in enumerate(keys):
            if key not in first and self.cache.get(key) is None:
                to_run.append(position)
            first.add(key)
        self._computed += len(to_run)
        return keys, to_run

    def _results(self, keys: list[bytes] | None, to_run: list[int] | None,
                 computed: dict[str, list[dict[str, Any]]]) -> list[dict[str, dict[str, Any]]]:
        """Each accepted row's results by task: its own, or those of its text's first copy in the batch or in
        the actor's cache."""
        if keys is None or to_run is None or self.cache is None:
            return [{task: found[row] for task, found in computed.items()} for row in range(len(next(iter(
                computed.values()), [])))]
        fresh = {keys[position]: {task: found[number] for task, found in computed.items()}
                 for number, position in enumerate(to_run)}
        rows = [fresh.get(key) or self.cache.get(key) for key in keys]
        for key, results in fresh.items():
            self.cache.put(key, results)
        return rows  # type: ignore[return-value]

    def _report(self, rows: int, began: float) -> None:
        """The batch's forward passes, to the metrics and to the ledger (one small write, under a millisecond:
        BENCHMARKS.md, "What the metrics cost"), with when its work ``began`` (its arrival, or the models' load if
        that was later)."""
        forward, busy_s = {}, 0.0
        for task, predictor in self.predictors.items():
            stats = predictor.take_forward_stats()
            for seconds in stats.pass_seconds:
                metrics.observe("albert_batch_forward_seconds", seconds, task=task.value)
            metrics.count("albert_batch_forward_tokens", stats.real_tokens, task=task.value, kind="real")
            metrics.count("albert_batch_forward_tokens", stats.padding_tokens, task=task.value, kind="padding")
            busy_s += stats.wall_seconds
            forward[task.value] = {"passes": len(stats.pass_seconds), "real_tokens": stats.real_tokens,
                                   "padding_tokens": stats.padding_tokens, "seconds": stats.wall_seconds}
        metrics.count("albert_batch_model_busy_seconds", busy_s)
        repeats = {"accepted_rows": self._rows, "rows_run": self._computed}
        self._rows = self._computed = 0
        if self.ledger is not None:
            self.ledger.modelled(rows, forward, busy_s, repeats, (began, time.time()))

    def predict(self, batch: pa.Table) -> pa.Table:
        size = batch.num_rows
        accepted = pc.is_null(batch.column(REASON)).to_numpy(zero_copy_only=False)
        texts = [t for t, ok in zip(batch.column("text").to_pylist(), accepted, strict=True) if ok]
        check_faults("model", self.faults, batch.column("id"), accepted)
        columns: dict[str, pa.Array] = {"id": batch.column("id"), **_positions(batch),
                                         REASON: batch.column(REASON), DETAIL: details(batch),
                                         TOKENS: batch.column(TOKENS)}
        keys, to_run = self._to_run(texts)
        computed: dict[str, list[dict[str, Any]]] = {}
        for task, predictor in self.predictors.items():
            features = {}
            for name, arrow_type in predictor.features.items():
                column = batch.column(task_column(task, name)).filter(pa.array(accepted))
                if to_run is not None:
                    column = column.take(pa.array(to_run, pa.int64()))
                features[name] = (from_list_array(column) if pa.types.is_list(arrow_type)
                                  else list(column.to_numpy(zero_copy_only=False)))
            computed[task.value] = predictor.predict(texts if to_run is None else [texts[i] for i in to_run], features)
            metrics.count("albert_batch_rows_processed", len(texts), task=task.value)
        results = self._results(keys, to_run, computed)
        for task in self.predictors:
            for result in TASK_OUTPUTS[task].results:
                values = _scatter([r[task.value][result.name] for r in results], accepted, size, None)
                columns[task_column(task, result.name)] = pa.array(values, result.type)
        now = dt.datetime.now(dt.UTC)
        columns["processed_at"] = pa.array([now] * size, TIMESTAMP_TYPE)
        return pa.table(columns)
