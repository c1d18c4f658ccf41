"""What resuming saves at the default write settings: a run killed most of the way through, then run
again, against a clean run.

    python -m benchmarks.resume                       # 2,048 documents, base-shaped models, killed at 80%
    python -m benchmarks.resume --size tiny --docs 400 --kill-at 0.5 --tasks classify,ner

The corpus is the benchmark's (`benchmarks.workload`), written as ``--units`` files (files smaller than a unit
of work share one; the JSON gives the units the run planned).
Each run is ``albert-batch run`` in a process of its own, with ``--batch-size`` rows per batch and
nothing else set: the writer's settings (``--rows-per-file``, ``--flush-seconds``) are the defaults. The
killed run gets SIGKILL (its whole process group) once ``--kill-at`` of the clean run's time has passed;
the resumed run is the same command again. Prints the three times, the units staged when the run was
killed and the units the resumed run reused, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from albert_batch.pipeline.inputs import plan_input
from albert_batch.pipeline.units import WorkUnit
from albert_batch.storage import Location
from benchmarks import workload

ROOT = Path(__file__).resolve().parent.parent
PARTITION = "dt=2026-11-30"


def command(corpus: Path, output: Path, models: workload.Models, run_id: str, args: argparse.Namespace,
            summary: Path) -> list[str]:
    return [sys.executable, "-m", "albert_batch.cli", "run", "-q", "--input", str(corpus), "--output", str(output),
            "--classifier-model", models.classifier, "--ner-model", models.ner, "--tasks", args.tasks,
            "--partition", PARTITION, "--run-id", run_id, "--precision", args.precision,
            "--batch-size", str(args.batch_size), "--summary-json", str(summary)]


def done_units(output: Path, units: Sequence[WorkUnit]) -> int:
    from albert_batch.pipeline import staging
    from albert_batch.storage import Location

    folder = staging.partition_folder(Location.parse(str(output)), PARTITION)
    done, _ = staging.done_units(folder, units)
    return len(done)


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    return time.monotonic() - started


def killed(argv: list[str], output: Path, units: Sequence[WorkUnit], after_s: float) -> tuple[float, int]:
    """Seconds until the run was killed (``after_s``), and how many units it had staged by then."""
    started = time.monotonic()
    process = subprocess.Popen(argv, start_new_session=True,
                               env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    while time.monotonic() - started < after_s:
        if process.poll() is not None:
            raise RuntimeError("the run ended before it could be killed; lower --kill-at")
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    process.wait()
    time.sleep(5)  # its Ray goes with it (Ray's reaper): let any write under way land before counting
    return elapsed, done_units(output, units)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2048)
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--units", type=int, default=8, help="input files (small ones share a unit of work)")
    parser.add_argument("--kill-at", type=float, default=0.8, help="share of the clean run's time when it is killed")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tasks", default="classify")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = workload.build_models(work, args.size)
    base = workload.build_corpus(work, args.docs, models)
    with tempfile.TemporaryDirectory(prefix="resume-", dir=work) as scratch:
        root = Path(scratch)
        corpus = root / "corpus"
        workload.split_into_files(base, args.units, corpus)
        units = plan_input(Location.parse(str(corpus)), id_column="id", text_column="text").units()

        def argv(output: str, run_id: str) -> list[str]:
            return command(corpus, root / output, models, run_id, args, root / f"{run_id}.json")

        clean_s = timed(argv("clean", "clean"))
        killed_s, staged = killed(argv("resumed", "killed"), root / "resumed", units, args.kill_at * clean_s)
        resumed_s = timed(argv("resumed", "resumed"))
        summary: dict[str, Any] = json.loads((root / "resumed.json").read_text())
    print(json.dumps({"docs": args.docs, "size": args.size, "tasks": args.tasks, "units": len(units),
                      "batch_size": args.batch_size, "precision": args.precision, "clean_s": round(clean_s, 1),
                      "killed_after_s": round(killed_s, 1), "staged_when_killed": staged,
                      "resumed_s": round(resumed_s, 1), "resumed_share_of_clean": round(resumed_s / clean_s, 2),
                      "resumed_reused": summary["units"]["reused"], "resumed_run_s": round(summary["seconds"], 1)},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
