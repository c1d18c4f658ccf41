"""Where a small run's start-up goes: ``albert-batch run`` in a fresh process on its embedded Ray, from the
command's start to the model stage's first batch, step by step.

    python -m benchmarks.startup                       # base-shaped classifier, 256 documents, 3 runs
    python -m benchmarks.startup --tasks classify,ner --runs 5

Each run is the CLI in a process of its own, as a user or a scheduler starts it, with a fresh output (no
earlier work to reuse). The steps come from the run's manifest (`timings`: the laps of its checks, Ray's
start and the reuse check; and, in seconds after the run's call, when the first tokenizer and model actors
started, when a model actor had its models loaded, and when the model stage began and finished its first
batch's forward work); the time from the command's start to the run's call (the interpreter, imports and
settings) is the manifest's ``started_at`` less the moment the command was started. Prints each run's steps and their
medians, in seconds after the command's start, as JSON.

With ``--processes``, each run's process tree is also sampled (every 0.2 s: each process's CPU time, and the
machine's): per process, when it was first seen and the CPU-seconds it had used by the first forward pass, and how
busy the machine's cores were until then — where a start-up goes when it is the cores' work, not waiting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import workload
from benchmarks.machine import cpu_class, cpu_model
from benchmarks.memory import process_key, read_tree

ROOT = Path(__file__).resolve().parent.parent
PARTITION = "dt=2026-12-06"
# Laps, in the order a run takes them; then the milestones, already counted from the run's call.
LAPS = ("checks_s", "ray_s", "reuse_s")
MILESTONES = ("tokenizer_actor_s", "model_actor_s", "models_loaded_s", "first_forward_s", "first_batch_s")


def steps(launched: float, manifest: dict) -> dict[str, float]:
    """One run's steps, from its manifest, in seconds after the command's start (``launched``, epoch seconds)."""
    called = dt.datetime.fromisoformat(manifest["started_at"]).timestamp() - launched
    timings = manifest["timings"]
    found, at = {"run_called": called}, called
    for lap in LAPS:
        at += timings.get(lap, 0.0)
        found[lap.removesuffix("_s") + "_done"] = at
    for milestone in MILESTONES:
        if milestone in timings:
            found[milestone.removesuffix("_s")] = called + timings[milestone]
    found["run_done"] = called + timings["total_s"]
    return {name: round(value, 2) for name, value in found.items()}


IDLE = "ray::IDLE"


def process_name(cmdline: list[str]) -> str:
    """What a process of a run is: a Ray worker's title (``ray::Class``), a Python process's module or script,
    or a program's file name."""
    program = Path(cmdline[0]).name
    if not program.startswith("python") or len(cmdline) < 2:
        return cmdline[0] if cmdline[0].startswith("ray::") else program
    rest = cmdline[1:]
    while rest and rest[0].startswith("-") and rest[0] != "-m":  # interpreter flags (-u, -X ...)
        rest = rest[2:] if rest[0] == "-X" else rest[1:]
    if rest[:1] == ["-m"] and len(rest) > 1:
        return rest[1]
    return Path(rest[0]).name if rest else program


@dataclass
class Sampled:
    """A process of the tree: the names it had (`process_name`: a Ray worker takes the name of each actor or
    task it runs, and is IDLE between them), when it was first seen (seconds after the command's start; the
    kernel's start times are whole seconds off) and its (seconds after the start, CPU-seconds) samples."""

    names: set[str]
    seen: float
    samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The longest name it had other than IDLE (a title read as the kernel's 15-character one is a prefix)."""
        return max(self.names - {IDLE}, key=len, default=IDLE)

    def cpu_by(self, moment: float) -> float:
        """CPU-seconds used by ``moment`` (its last sample before it)."""
        return max((cpu for at, cpu in self.samples if at <= moment), default=0.0)


@dataclass
class TreeTimeline:
    """Every process of a tree, sampled until stopped, and the machine's busy cores over time."""

    launched: float
    processes: dict[tuple[int, int], Sampled] = field(default_factory=dict)
    machine: list[tuple[float, float, float]] = field(default_factory=list)  # (at, busy CPU-s, all CPU-s) so far

    def sample(self, root: psutil.Process, at: float) -> None:
        def read(process: psutil.Process) -> tuple[tuple[int, int], Any, str]:
            return (process_key(process), process.cpu_times(),
                    process_name(process.cmdline() or [process.name()]))

        for key, times, name in read_tree(root, read):
            sampled = self.processes.setdefault(key, Sampled(set(), round(at, 2)))
            sampled.names.add(name)
            sampled.samples.append((at, times.user + times.system))
        cpu = psutil.cpu_times()
        self.machine.append((at, cpu.user + cpu.nice + cpu.system + cpu.irq + cpu.softirq, sum(cpu)))

    def by(self, moment: float) -> dict[str, object]:
        """Each process's start and CPU-seconds by ``moment``, the busiest first; and the cores' busy share."""
        used = sorted(((p.name, p.seen, round(p.cpu_by(moment), 2)) for p in self.processes.values()
                       if p.seen <= moment), key=lambda row: -row[2])
        until = [row for row in self.machine if row[0] <= moment]
        busy = (until[-1][1] - until[0][1]) / max(until[-1][2] - until[0][2], 1e-9) if len(until) > 1 else None
        return {"cores_busy": None if busy is None else round(busy, 2),
                "processes": [{"name": name, "seen": seen, "cpu_s": cpu} for name, seen, cpu in used if cpu]}


def sample_until(process: subprocess.Popen, timeline: TreeTimeline, interval_s: float = 0.2) -> None:
    root = psutil.Process(process.pid)
    while process.poll() is None:
        timeline.sample(root, time.time() - timeline.launched)
        time.sleep(interval_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--tasks", default="classify")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    parser.add_argument("--processes", action="store_true",
                        help="also sample the run's processes: each one's start and CPU by the first forward pass")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = workload.build_models(work, args.size)
    corpus = workload.build_corpus(work, args.docs, models)
    model_flags = {"classify": ["--classifier-model", models.classifier], "ner": ["--ner-model", models.ner]}
    runs: list[dict[str, float]] = []
    tree: dict[int, dict[str, object]] = {}  # run -> its processes by the first forward pass (--processes)
    with tempfile.TemporaryDirectory(prefix="startup-", dir=work) as scratch:
        for number in range(args.runs):
            output = Path(scratch) / f"out-{number}"
            command = [sys.executable, "-m", "albert_batch.cli", "run", "-q", "--input", corpus.folder,
                       "--output", str(output), "--tasks", args.tasks, "--partition", PARTITION,
                       "--precision", args.precision,
                       *(flag for task in args.tasks.split(",") for flag in model_flags[task])]
            launched = time.time()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            timeline = TreeTimeline(launched)
            sampler = threading.Thread(target=sample_until, args=(process, timeline), daemon=True)
            if args.processes:
                sampler.start()
            if process.wait():
                raise subprocess.CalledProcessError(process.returncode, command)
            done = round(time.time() - launched, 2)
            manifest = next(output.glob(f"*/{PARTITION}/_manifest.json"))
            runs.append({**steps(launched, json.loads(manifest.read_text())), "command_done": done})
            if args.processes:
                sampler.join()
                tree[number] = timeline.by(runs[-1].get("first_forward", done))
    medians = {name: round(statistics.median(run[name] for run in runs), 2) for name in runs[0]}
    print(json.dumps({"cpu": cpu_model(), "cpu_class": cpu_class(), "docs": args.docs, "size": args.size,
                      "tasks": args.tasks, "precision": args.precision, "runs": runs, "median": medians,
                      **({"by_first_forward": [tree[n] for n in sorted(tree)]} if tree else {})}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
