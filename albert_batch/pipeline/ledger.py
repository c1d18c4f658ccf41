"""What a run's workers tell its driver while it runs, beside what they stage: rows read, through the model
and staged (the progress line, the rows waiting between stages), each stage actor's lifetime and each read
and write task's time (what the run cost), and the forward passes (tokens, padding, seconds).

A run's `RunLedger` is a key prefix in the Ray cluster's own key-value store (the GCS's, on the head): each
worker process keeps its own tallies for the run (a `Ledger`) and, as they change, stores them whole under
its own key; the driver sums every key of the prefix when it looks, and deletes them when the run ends. So a
run starts no process of its own for its figures, a worker's report is one small write that no other worker
waits on, and what a worker reported outlives it (its node lost, its process killed). Like metrics, the
tallies count work done: a batch that Ray runs again (its actor died) counts again; the summary's row counts
come from the staged pieces, each row once.

A stage actor's lifetime runs from the start of its constructor to its last heartbeat (every
`HEARTBEAT_S`), so it is short by less than that; what it held is that time times the CPUs and GPUs it
reserved. A task's time is measured around its work.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
MODEL, TOKENIZE, READ, WRITE = "model", "tokenize", "read", "write"
# The summary's names for the stages' workers, in the order it lists them.
WORKERS = {MODEL: "model_actors", TOKENIZE: "tokenizer_actors", READ: "read_tasks", WRITE: "write_tasks"}
FORWARD_FIELDS = ("passes", "real_tokens", "padding_tokens", "seconds")
NAMESPACE_KEY = b"albert_batch"  # the key-value store's namespace of the runs' tallies
STORE_TIMEOUT_S = 10  # a report waits at most this long for the store (then the next one carries it)
KEPT_RUNS = 4  # runs whose tallies a worker process holds at most (a pooled worker serves run after run)


class Ledger:
    """The run's tallies (see the module's doc); `snapshot` reads them all."""

    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()  # read, modelled, staged
        self.actors: dict[tuple[str, str], tuple[float, float]] = {}  # (worker id, stage) -> (started, last seen)
        self.tasks: dict[str, list[float]] = {}  # stage -> [tasks, seconds]
        self.forward: dict[str, Counter[str]] = {}  # task -> FORWARD_FIELDS
        self.busy_s = 0.0  # model actors' seconds in forward passes
        self.models_loaded_at: float | None = None  # when a model actor first had its models loaded (epoch seconds)
        self.first_forward_at: float | None = None  # when a model actor first began a batch's work (epoch seconds)
        self.first_batch_at: float | None = None  # when a model actor first finished a batch (epoch seconds)

    def read(self, rows: int, seconds: float) -> None:
        self.rows["read"] += rows
        self.task(READ, seconds)

    def staged(self, rows: int, seconds: float) -> None:
        self.rows["staged"] += rows
        self.task(WRITE, seconds)

    def task(self, stage: str, seconds: float) -> None:
        tally = self.tasks.setdefault(stage, [0, 0.0])
        tally[0] += 1
        tally[1] += seconds

    def alive(self, worker: str, stage: str, started: float, now: float) -> None:
        self.actors[worker, stage] = (started, now)

    def loaded(self, at: float) -> None:
        self.models_loaded_at = at if self.models_loaded_at is None else min(self.models_loaded_at, at)

    def modelled(self, rows: int, forward: Mapping[str, Mapping[str, float]], busy_s: float,
                 repeats: Mapping[str, int] | None = None, span: tuple[float, float] | None = None) -> None:
        """A model actor's batch of ``rows``: its forward passes, busy seconds, repeats, and when its work
        began and ended (``span``, epoch seconds)."""
        self.rows["modelled"] += rows
        if span is not None:
            began, ended = span
            self.first_forward_at = began if self.first_forward_at is None else min(self.first_forward_at, began)
            self.first_batch_at = ended if self.first_batch_at is None else min(self.first_batch_at, ended)
        self.rows.update(repeats or {})
        self.busy_s += busy_s
        for task, figures in forward.items():
            self.forward.setdefault(task, Counter()).update(figures)

    def merge(self, other: Ledger) -> None:
        """Add ``other``'s tallies (another worker's) to these."""
        self.rows.update(other.rows)
        self.actors.update(other.actors)
        for stage, (count, seconds) in other.tasks.items():
            tally = self.tasks.setdefault(stage, [0, 0.0])
            tally[0] += count
            tally[1] += seconds
        for task, figures in other.forward.items():
            self.forward.setdefault(task, Counter()).update(figures)
        self.busy_s += other.busy_s
        for name in ("models_loaded_at", "first_forward_at", "first_batch_at"):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, theirs if mine is None else mine if theirs is None else min(mine, theirs))

    def snapshot(self) -> dict[str, Any]:
        actors: dict[str, list[float]] = {}
        for (_, stage), (started, seen) in self.actors.items():
            tally = actors.setdefault(stage, [0, 0.0])
            tally[0] += 1
            tally[1] += max(0.0, seen - started)
        spans = [[started, seen] for (_, stage), (started, seen) in self.actors.items() if stage == MODEL]
        return {"rows": dict(self.rows), "actors": actors, "tasks": {k: list(v) for k, v in self.tasks.items()},
                "model_spans": spans,
                "forward": {task: dict(figures) for task, figures in self.forward.items()}, "busy_s": self.busy_s,
                "started_at": {stage: min(started for (_, kind), (started, _) in self.actors.items() if kind == stage)
                               for stage in {kind for _, kind in self.actors}},
                "models_loaded_at": self.models_loaded_at, "first_forward_at": self.first_forward_at,
                "first_batch_at": self.first_batch_at,
                "alive": Counter(stage for (_, stage), (_, seen) in self.actors.items()
                                 if time.time() - seen < 3 * HEARTBEAT_S)}


@dataclass(frozen=True)
class RunLedger:
    """A run's figures in the cluster's key-value store (see the module's doc): what its workers report
    through, and what its driver reads. Holds only its key prefix, so it travels to every worker as is."""

    prefix: str

    def read(self, rows: int, seconds: float) -> None:
        self._report(lambda tally: tally.read(rows, seconds))

    def staged(self, rows: int, seconds: float) -> None:
        self._report(lambda tally: tally.staged(rows, seconds))

    def alive(self, worker: str, stage: str, started: float, now: float) -> bool:
        """Report that ``worker`` lives; False once the run has ended (its driver deleted its figures)."""
        return self._report(lambda tally: tally.alive(worker, stage, started, now), beat=True)

    def loaded(self, at: float) -> None:
        self._report(lambda tally: tally.loaded(at))

    def modelled(self, rows: int, forward: Mapping[str, Mapping[str, float]], busy_s: float,
                 repeats: Mapping[str, int] | None = None, span: tuple[float, float] | None = None) -> None:
        self._report(lambda tally: tally.modelled(rows, forward, busy_s, repeats, span))

    def snapshot(self) -> dict[str, Any]:
        """Every worker's tallies, summed (`Ledger.snapshot`)."""
        store = _store()
        keys = store.internal_kv_keys(self.prefix.encode(), NAMESPACE_KEY, timeout=STORE_TIMEOUT_S)
        total = Ledger()
        if keys:
            for blob in store.internal_kv_multi_get(keys, NAMESPACE_KEY, timeout=STORE_TIMEOUT_S).values():
                total.merge(pickle.loads(blob))
        return total.snapshot()

    def close(self) -> None:
        """Delete the run's figures (every worker's key); workers that report later are told the run ended.
        Never raises: a cluster that cannot be reached (lost with its head) has nothing left to delete."""
        try:
            _store().internal_kv_del(self.prefix.encode(), True, NAMESPACE_KEY, timeout=STORE_TIMEOUT_S)
        except Exception as err:
            log.debug("cannot delete the run's tallies: %s", err)

    def _report(self, update: Callable[[Ledger], None], *, beat: bool = False) -> bool:
        """Apply ``update`` to this process's tallies for the run and store them under its key. Never raises:
        a report that cannot be stored is carried by the next one. A heartbeat (``beat``) that finds its key
        gone, after this process had stored it, finds the run ended: it removes the key it just made again."""
        with _LOCK:
            held = _HELD.get(self.prefix)
            if held is None:
                held = _HELD[self.prefix] = _Held()
                while len(_HELD) > KEPT_RUNS:
                    del _HELD[next(iter(_HELD))]
            update(held.tally)
            key = f"{self.prefix}{_worker_id()}".encode()
            try:
                added = _store().internal_kv_put(key, pickle.dumps(held.tally), True, NAMESPACE_KEY,
                                                 timeout=STORE_TIMEOUT_S)
                if beat and added and held.stored:
                    _store().internal_kv_del(key, False, NAMESPACE_KEY, timeout=STORE_TIMEOUT_S)
                    return False
            except Exception as err:  # the GCS did not answer in time: the figures wait for the next report
                log.debug("cannot store the run's tallies: %s", err)
                return True
            held.stored = True
            return True


@dataclass
class _Held:
    """This process's tallies for one run, and whether it has stored them yet."""

    tally: Ledger = field(default_factory=Ledger)
    stored: bool = False


_LOCK = threading.Lock()
_HELD: dict[str, _Held] = {}  # by run prefix, the oldest first


def _store() -> Any:
    """The cluster's key-value store (the GCS's), through this process's Ray connection."""
    from ray.experimental import internal_kv

    return internal_kv.internal_kv_get_gcs_client()


def _worker_id() -> str:
    import ray

    return ray.get_runtime_context().get_worker_id()


def start_ledger() -> RunLedger:
    """A new run's `RunLedger`."""
    return RunLedger(f"ledger/{uuid.uuid4().hex}/")


def final_snapshot(ledger: RunLedger | None) -> dict[str, Any]:
    """The ``ledger``'s figures once the stages are done (none: empty ones). A store that cannot answer costs
    the run its figures, never its results."""
    if ledger is not None:
        try:
            return ledger.snapshot()
        except Exception as err:  # the GCS did not answer: the figures are lost, the rows are staged
            log.warning("the run's figures could not be read (%s): its cost, forward and repeat figures are missing",
                        err)
    return Ledger().snapshot()


def heartbeat(ledger: RunLedger | None, stage: str) -> None:
    """From a stage actor's constructor: tell ``ledger`` that this actor lives, now and, from a thread, every
    `HEARTBEAT_S` until the run ends or its process does (no ledger: nothing). A stage called in a driver (a
    test, a benchmark) beats once: a driver's thread would outlive the Ray it reports through."""
    if ledger is None:
        return
    import ray

    context = ray.get_runtime_context()
    worker, started = context.get_worker_id(), time.time()
    ledger.alive(worker, stage, started, started)
    if context.get_actor_id() is None:
        return

    def beat() -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            try:
                if not ledger.alive(worker, stage, started, time.time()):
                    return
            except Exception:  # Ray is shutting down in this process: nobody is left to tell
                return

    threading.Thread(target=beat, name="albert-batch-heartbeat", daemon=True).start()


def cost(snapshot: Mapping[str, Any], reserved: Mapping[str, Mapping[str, float]], rows: int) -> dict[str, Any]:
    """What the run held, from a ledger's ``snapshot``: for each stage's workers (``reserved``: stage ->
    the CPUs and GPUs one of them reserves) their number, seconds, and CPU- and GPU-seconds; in all; and
    CPU- and GPU-hours per million of the ``rows`` this run processed."""
    figures: dict[str, Any] = {}
    for stage, name in WORKERS.items():
        count, seconds = (snapshot["actors"] if stage in (MODEL, TOKENIZE) else snapshot["tasks"]).get(stage, [0, 0.0])
        one = reserved.get(stage, {})
        figures[name] = {"count": int(count), "seconds": round(seconds, 3),
                         "cpu_seconds": round(seconds * one.get("CPU", 0.0), 3),
                         "gpu_seconds": round(seconds * one.get("GPU", 0.0), 3)}
    model = figures[WORKERS[MODEL]]
    model["busy_share"] = round(min(1.0, snapshot["busy_s"] / model["seconds"]), 3) if model["seconds"] else 0.0
    model.update(over_time(snapshot.get("model_spans", [])))
    total = {kind: round(sum(f[kind] for f in list(figures.values())), 3) for kind in ("cpu_seconds", "gpu_seconds")}
    per_million = {f"{kind[:3]}_hours_per_million_rows": round(total[kind] / 3600 / (rows / 1e6), 4) if rows else None
                   for kind in total}
    return {**figures, **total, "rows": rows, **per_million}


def over_time(spans: list[list[float]]) -> dict[str, Any]:
    """How many actors lived over time, from each one's (start, last heartbeat): the fewest and the most
    between the first start and the last heartbeat, and each change (seconds from the first start, actors)."""
    if not spans:
        return {"min": 0, "max": 0, "over_time": []}
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], -e[1]))
    first, alive, timeline = events[0][0], 0, []
    for at, step in events:
        alive += step
        if timeline and timeline[-1][0] == round(at - first, 1):
            timeline[-1][1] = alive
        else:
            timeline.append([round(at - first, 1), alive])
    living = [count for _, count in timeline[:-1]] or [timeline[0][1]]
    return {"min": min(living), "max": max(living), "over_time": timeline}


def start_up(snapshot: Mapping[str, Any], since: float) -> dict[str, float]:
    """When, in seconds after ``since`` (the run's call, epoch seconds), the first tokenizer actor (where the
    run has them) and the first model actor started, a model actor had loaded its models, and the model stage
    began and finished its first batch's forward work; each that happened."""
    started = snapshot.get("started_at", {})
    moments = {"tokenizer_actor_s": started.get(TOKENIZE), "model_actor_s": started.get(MODEL),
               "models_loaded_s": snapshot.get("models_loaded_at"), "first_forward_s": snapshot.get("first_forward_at"),
               "first_batch_s": snapshot.get("first_batch_at")}
    return {name: round(at - since, 3) for name, at in moments.items() if at is not None}


def dedupe_figures(snapshot: Mapping[str, Any], *, enabled: bool) -> dict[str, Any]:
    """What de-duplication saved (`albert_batch.pipeline.dedupe`): of the accepted rows the model stage had,
    those whose text repeated one it had run (in the batch, or in the actor's cache), not run again."""
    accepted, run = snapshot["rows"].get("accepted_rows", 0), snapshot["rows"].get("rows_run", 0)
    return {"enabled": enabled, "accepted_rows": accepted, "rows_run": run, "duplicate_rows": accepted - run,
            "duplicate_share": round((accepted - run) / accepted, 4) if accepted else 0.0}


def forward_figures(snapshot: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Each task's forward passes: passes, real and padding tokens, seconds."""
    return {task: {name: round(figures.get(name, 0), 3) for name in FORWARD_FIELDS}
            for task, figures in snapshot["forward"].items()}
