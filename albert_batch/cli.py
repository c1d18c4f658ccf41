"""The ``albert-batch`` command line: a thin layer over `albert_batch.run`.

    albert-batch run --input URI --output URI [--tasks classify,ner] [--classifier-model URI]
        [--ner-model URI] [--text-column text] [--id-column id] [--partition KEY=VALUE ...]
        [--precision auto|fp32|bf16|fp16] [--run-id ID] [--ray-address ADDRESS] [--config FILE.yaml]

Exit codes: 0 when every partition was published; 2 when settings, input or models are unusable
(nothing was done); 1 when the run failed (nothing half-written is visible).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from albert_batch.config import Precision, ResourceConfig, RunConfig
from albert_batch.errors import AlbertBatchError, ConfigError, InputError, ModelLoadError

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2

log = logging.getLogger("albert_batch")


# Every `ResourceConfig` setting, as a flag: ``--model-actors N`` and so on (the Airflow operator submits
# its runs as command lines, so each setting needs one).
RESOURCE_FLAGS = {
    "model_actors": ("N", "model actors (default: from cluster resources)"),
    "num_gpus_per_actor": ("X", "GPUs per model actor, fractions allowed (default: 0)"),
    "num_cpus_per_actor": ("X", "CPUs per model actor (default: from cluster resources)"),
    "tokenizer_actors": ("N", "tokenizer actors (default: from cluster resources)"),
    "batch_size": ("ROWS", "rows per model batch (default: 4096)"),
    "max_tokens_per_forward": ("TOKENS", "tokens per forward pass, padding included (default: 2048 on CPUs)"),
    "ner_window_overlap": ("TOKENS", "overlap of the windows a long NER text is cut into (default: 128)"),
}
assert set(RESOURCE_FLAGS) == {f.name for f in dataclasses.fields(ResourceConfig)}, "a resource setting without a flag"


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="albert-batch", description="Batch ALBERT classification and NER on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="classify and/or tag a Parquet corpus and publish Hive-partitioned results",
        description="Flags override the values of --config; every setting is validated before any work.",
    )
    # default=None everywhere: an unset flag never hides a value from --config.
    run.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of the settings below")
    run.add_argument("--input", metavar="URI", help="Parquet file or folder: local path, file:// or s3://")
    run.add_argument("--output", metavar="URI", help="output root: local path, file:// or s3://")
    run.add_argument("--tasks", metavar="classify,ner", help="comma-separated tasks (default: classify,ner)")
    run.add_argument("--classifier-model", metavar="URI", help="model folder, s3:// prefix or hub id[@revision]")
    run.add_argument("--ner-model", metavar="URI", help="model folder, s3:// prefix or hub id[@revision]")
    run.add_argument("--text-column", metavar="NAME", help="text column (default: text)")
    run.add_argument("--id-column", metavar="NAME", help="id column (default: id)")
    run.add_argument("--partition", metavar="KEY=VALUE", action="append",
                     help="output partition; repeat for several keys (default: dt=<today, UTC>)")
    run.add_argument("--precision", choices=[p.value for p in Precision], help="model precision (default: auto)")
    run.add_argument("--run-id", metavar="ID", help="run id recorded in every row (default: generated)")
    run.add_argument("--ray-address", metavar="ADDRESS",
                     help="'auto' or host:port to join a cluster (default: embedded local Ray, or RAY_ADDRESS)")
    run.add_argument("--allow-pickle-weights", action="store_true", default=None,
                     help="accept pytorch_model.bin weights (runs pickle: only for models you trust)")
    for name, (metavar, text) in RESOURCE_FLAGS.items():
        run.add_argument(_flag(name), type=ResourceConfig.kind(name), metavar=metavar, help=text)
    run.add_argument("--summary-json", metavar="FILE", help="also write the run summary as JSON to FILE")
    run.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")

    tune = commands.add_parser(
        "finetune",
        help="fine-tune ALBERT on labelled Parquet with Ray Train; writes a model folder `run` can use",
        description="Classification data has columns text, label; NER data has text, entities "
        "(a list of {start, end, label} character spans).",
    )
    tune.add_argument("--task", required=True, choices=["classify", "ner"])
    tune.add_argument("--train", required=True, metavar="URI", help="labelled Parquet file or folder")
    tune.add_argument("--eval", required=True, metavar="URI", help="held-out labelled Parquet, scored every epoch")
    tune.add_argument("--output", required=True, metavar="URI", help="where the model folder goes (local or s3://)")
    start = tune.add_mutually_exclusive_group(required=True)
    start.add_argument("--base-model", metavar="URI", help="pretrained ALBERT: folder, s3:// prefix or hub id")
    start.add_argument("--init", choices=["tiny", "base"], help="build ALBERT from scratch (offline), with a "
                       "SentencePiece tokenizer trained on the training texts")
    tune.add_argument("--epochs", type=int, default=3)
    tune.add_argument("--batch-size", type=int, default=32)
    tune.add_argument("--learning-rate", type=float,
                      help="AdamW learning rate (default 5e-5 with --base-model, 2e-3 with --init)")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--num-workers", type=int, default=1, help="data-parallel Ray Train workers")
    tune.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    tune.add_argument("--max-length", type=int, default=512,
                      help="tokens per training sequence (default 512; long NER texts are cut into windows)")
    tune.add_argument("--max-windows", type=int, metavar="N",
                      help="NER: train on at most the first N windows of each long text (default: all)")
    tune.add_argument("--ray-address", metavar="ADDRESS")
    tune.add_argument("--allow-pickle-weights", action="store_true")
    tune.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    resources = {name: getattr(args, name) for name in RESOURCE_FLAGS if getattr(args, name) is not None}
    return RunConfig.from_sources(
        args.config,
        input=args.input,
        output=args.output,
        tasks=args.tasks,
        classifier_model=args.classifier_model,
        ner_model=args.ner_model,
        text_column=args.text_column,
        id_column=args.id_column,
        partition=args.partition,
        precision=args.precision,
        run_id=args.run_id,
        ray_address=args.ray_address,
        allow_pickle_weights=args.allow_pickle_weights,
        resources=resources or None,
    )


def run_argv(config: RunConfig) -> list[str]:
    """The ``albert-batch run`` command line that rebuilds ``config`` exactly (the Airflow operator submits it
    as the Ray job's entrypoint, so scheduled and ad-hoc runs share one contract)."""
    argv = ["albert-batch", "run", "--input", config.input, "--output", config.output,
            "--tasks", ",".join(t.value for t in config.tasks)]
    if config.classifier_model:
        argv += ["--classifier-model", config.classifier_model]
    if config.ner_model:
        argv += ["--ner-model", config.ner_model]
    argv += ["--text-column", config.text_column, "--id-column", config.id_column]
    for key, value in config.partition:
        argv += ["--partition", f"{key}={value}"]
    argv += ["--precision", config.precision.value, "--run-id", config.run_id]
    if config.ray_address:
        argv += ["--ray-address", config.ray_address]
    if config.allow_pickle_weights:
        argv.append("--allow-pickle-weights")
    defaults = ResourceConfig()
    for name in RESOURCE_FLAGS:
        value = getattr(config.resources, name)
        if value != getattr(defaults, name):
            argv += [_flag(name), repr(value)]
    return argv


def format_summary(summary: object) -> str:
    from albert_batch.runner import RunSummary

    assert isinstance(summary, RunSummary)
    lines = [
        f"run {summary.run_id}: published {len(summary.partitions)} partitions",
        *(f"  {table:<16} {uri}" for table, uri in summary.partitions.items()),
        f"rows: {summary.input_rows} in, {summary.accepted_rows} processed, {summary.rejected_rows} rejected"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(summary.rejects_by_reason.items()))})" if summary.rejected_rows else ""),
        f"throughput: {summary.rows_per_second:.1f} rows/s over {summary.seconds:.1f}s (precision {summary.precision})",
    ]
    if summary.label_counts:
        lines.append("labels: " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.label_counts.items())))
    for sample in summary.sample_entities[:3]:
        shown = ", ".join(f"{e['text']!r}/{e['label']}" for e in sample["entities"])
        lines.append(f"entities in {sample['id']!r}: {shown}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "finetune":
            return _finetune(args)
        config = config_from_args(args)
        from albert_batch.runner import run

        summary = run(config)
    except (ConfigError, InputError, ModelLoadError) as err:
        print(f"albert-batch: error: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    except AlbertBatchError as err:
        print(f"albert-batch: run failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(format_summary(summary))
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump({**summary.__dict__, "rows_per_second": summary.rows_per_second}, fh, indent=2, default=str)
    return EXIT_OK


def _finetune(args: argparse.Namespace) -> int:
    from albert_batch.training import FinetuneConfig, finetune

    names = ("task", "train", "eval", "output", "base_model", "init", "epochs", "batch_size", "learning_rate", "seed",
             "num_workers", "use_gpu", "max_length", "max_windows", "ray_address", "allow_pickle_weights")
    result = finetune(FinetuneConfig(**{name: getattr(args, name) for name in names}))
    print(format_training(result))
    return EXIT_OK


def format_training(result: object) -> str:
    from albert_batch.training import FinetuneResult

    assert isinstance(result, FinetuneResult)
    lines = [f"fine-tuned in {result.seconds:.0f}s; best epoch {result.best_epoch}; model written to {result.output}"]
    for epoch in result.epochs:
        shown = {k: v for k, v in epoch.items() if k in ("loss", "accuracy", "macro_f1", "precision", "recall", "f1")}
        lines.append(f"  epoch {epoch['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
