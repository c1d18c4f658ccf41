"""Does pretraining on unlabelled text pay off when labels are few? Entity F1 of an NER model fine-tuned
from scratch (`finetune --init tiny`) against one fine-tuned from a model pretrained on the corpus first
(`pretrain --init tiny`, then `finetune --base-model`), with the same labelled documents, the same eval
split and the same fine-tuning budget (epochs, batch size, sequence length).

    python -m benchmarks.pretraining                                   # 1,000 labelled, 20,000 unlabelled
    python -m benchmarks.pretraining --labelled 500 --pretrain-steps 1000 3000 --seeds 0 1 2
    python -m benchmarks.pretraining --pretrain-steps 1 --base-learning-rates 2e-3   # the corpus's tokenizer alone

Texts come from the demo corpus generator (`albert_batch.dev.corpus`): the labelled set is the first
``--labelled`` documents of the demo's train split (the demo fine-tunes on 20,000 of them), the eval set is
the demo's 500 eval documents, and the unlabelled corpus is ``--unlabelled`` other train-split documents
(another seed), read by `pretrain` without their labels. Every step is the `albert-batch` command a user
would type, run in a process of its own; the commands are printed as they run. A pretrained model is
fine-tuned twice per seed: at `finetune --base-model`'s default learning rate (5e-5, meant for a fully
pretrained ALBERT) and at the from-scratch default (2e-3), so neither side's learning rate decides the result.
`--pretrain-steps 1` separates the two things pretraining brings: a tokenizer learnt from the whole corpus
(which one step leaves as it is, with weights still at their random start) and the trained weights.

Prints, and writes to ``WORKDIR/results.json``, each fine-tune's best-epoch and last-epoch entity F1 and its
time, each pretraining's held-out masked-LM accuracy, sentence-order accuracy and time, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.run import machine

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("albert-batch"))
SCRATCH_LR, BASE_LR = 2e-3, 5e-5


def albert_batch(*args: str) -> float:
    """Run one `albert-batch` command; return its wall time in seconds."""
    print("$ albert-batch " + " ".join(shlex.quote(a) for a in args), flush=True)
    started = time.monotonic()
    subprocess.run([CLI, *args, "-q"], check=True, cwd=ROOT)
    return round(time.monotonic() - started, 1)


def write_data(workdir: Path, labelled: int, unlabelled: int) -> None:
    from albert_batch.contract import Task
    from albert_batch.dev import corpus
    from albert_batch.training.data import write_labelled

    for name, docs in (("train.parquet", corpus.generate(labelled, seed=7, split="train")),
                       ("eval.parquet", corpus.generate(500, seed=7, split="eval"))):
        write_labelled(workdir / name, [d.text for d in docs], [list(d.entities) for d in docs], Task.NER)
    corpus.write_corpus(workdir / "unlabelled", corpus.generate(unlabelled, seed=11, split="train"))


def finetune(workdir: Path, name: str, args: argparse.Namespace, seed: int, *start: str) -> dict[str, Any]:
    output = workdir / "models" / name
    if not (output / "training_report.json").exists():
        albert_batch("finetune", "--task", "ner", "--train", str(workdir / "train.parquet"),
                     "--eval", str(workdir / "eval.parquet"), "--output", str(output), *start,
                     "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                     "--max-length", str(args.max_length), "--seed", str(seed))
    report = json.loads((output / "training_report.json").read_text())
    return {"model": name, "seed": seed, "best_f1": report["best_metrics"]["f1"],
            "best_epoch": report["best_epoch"], "last_f1": report["epochs"][-1]["f1"],
            "seconds": report["seconds"]}


def pretrain(workdir: Path, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    output = workdir / "models" / f"pretrained-{steps}"
    if not (output / "pretraining_report.json").exists():
        albert_batch("pretrain", "--corpus", str(workdir / "unlabelled"), "--output", str(output), "--init", "tiny",
                     "--max-steps", str(steps), "--epochs", "1000", "--batch-size", str(args.batch_size),
                     "--max-length", str(args.max_length), "--report-every", str(max(steps // 4, 1)),
                     "--seed", "0")
    report = json.loads((output / "pretraining_report.json").read_text())
    final = report["final"]
    return {"steps": steps, "folder": str(output), "mlm_accuracy": final["mlm_accuracy"],
            "sop_accuracy": final["sop_accuracy"], "mlm_loss": final["mlm_loss"],
            "start_mlm_accuracy": report["evaluations"][0]["mlm_accuracy"], "seconds": report["seconds"],
            "data": report["data"]}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = [r["best_f1"] for r in runs]
    return {"count": len(runs), "best_f1_mean": round(statistics.fmean(best), 4),
            "best_f1_min": round(min(best), 4), "best_f1_max": round(max(best), 4),
            "last_f1_mean": round(statistics.fmean(r["last_f1"] for r in runs), 4),
            "seconds_mean": round(statistics.fmean(r["seconds"] for r in runs), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "pretraining",
                        help="data, models and results.json (finished models are reused when run again)")
    parser.add_argument("--labelled", type=int, default=1000, help="labelled NER documents (default 1000)")
    parser.add_argument("--unlabelled", type=int, default=20000, help="unlabelled documents (default 20000)")
    parser.add_argument("--pretrain-steps", type=int, nargs="+", default=[3000],
                        help="pretraining lengths to compare, in optimizer steps (default 3000)")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs, both sides (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="both sides (default 32)")
    parser.add_argument("--max-length", type=int, default=256, help="both sides, as the demo (default 256)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (default 0 1 2)")
    parser.add_argument("--base-learning-rates", type=float, nargs="+", default=[BASE_LR, SCRATCH_LR],
                        help=f"fine-tuning rates of the pretrained models (default {BASE_LR:g} {SCRATCH_LR:g})")
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.monotonic()
    write_data(args.workdir, args.labelled, args.unlabelled)
    results: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "machine": machine(), "pretraining": [], "finetuning": {}}
    scratch = [finetune(args.workdir, f"scratch-s{seed}", args, seed, "--init", "tiny") for seed in args.seeds]
    results["finetuning"]["scratch"] = {"runs": scratch, **summarise(scratch)}
    for steps in args.pretrain_steps:
        pretrained = pretrain(args.workdir, steps, args)
        results["pretraining"].append(pretrained)
        for lr in args.base_learning_rates:
            runs = [finetune(args.workdir, f"pretrained-{steps}-lr{lr:g}-s{seed}", args, seed,
                             "--base-model", pretrained["folder"], "--learning-rate", str(lr)) for seed in args.seeds]
            results["finetuning"][f"pretrained-{steps}-lr{lr:g}"] = {"runs": runs, **summarise(runs)}
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load_average"] = {"before": [round(x, 2) for x in load_before],
                               "after": [round(x, 2) for x in os.getloadavg()]}
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    lines = ["| starting point | fine-tuning lr | entity F1, best epoch (mean, min–max) | last epoch (mean) | "
             "fine-tuning s |", "|---|---|---|---|---|"]
    for name, s in results["finetuning"].items():
        start, lr = ("from scratch (`--init tiny`)", f"{SCRATCH_LR:g}") if name == "scratch" else (
            f"pretrained {name.split('-')[1]} steps", name.split("-lr")[1])
        lines.append(f"| {start} | {lr} | {s['best_f1_mean']:.3f} ({s['best_f1_min']:.3f}–{s['best_f1_max']:.3f}) "
                     f"| {s['last_f1_mean']:.3f} | {s['seconds_mean']:.0f} |")
    for p in results["pretraining"]:
        lines.append(f"\npretraining {p['steps']} steps: {p['seconds']:.0f}s; held-out masked-LM accuracy "
                     f"{p['start_mlm_accuracy']:.3f} -> {p['mlm_accuracy']:.3f}, SOP accuracy {p['sop_accuracy']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
