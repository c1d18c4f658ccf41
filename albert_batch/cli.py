"""The ``albert-batch`` command line: a thin layer over `albert_batch.run` and `albert_batch.training.finetune`.

    albert-batch run --input URI --output URI [--tasks classify,ner] [--classifier-model URI]
        [--ner-model URI] [--text-column text] [--id-column id] [--partition KEY=VALUE ...]
        [--precision auto|fp32|bf16|fp16] [--run-id ID] [--ray-address ADDRESS] [--config FILE.yaml]
    albert-batch finetune --task classify|ner --train URI --eval URI --output URI ...

Every flag is a field of `RunConfig`, `ResourceConfig` or `FinetuneConfig`, with the help text given
there, so a new setting is added in one place. Exit codes are `albert_batch.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from albert_batch.config import ResourceConfig, RunConfig
from albert_batch.errors import AlbertBatchError, ExitCode, exit_code

log = logging.getLogger("albert_batch")


def flag_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def add_setting_flags(parser: argparse.ArgumentParser, settings: type, *, require: bool) -> None:
    """One flag per field of the ``settings`` dataclass that has help text. Flags default to None, so an
    unset flag never hides a value from a config file; with ``require``, fields without a default are
    required flags."""
    for f in dataclasses.fields(settings):
        meta = f.metadata
        if "help" not in meta:
            continue
        options: dict[str, Any] = {"dest": f.name, "help": meta["help"], "default": None}
        if meta.get("action") == "store_true":
            options["action"] = "store_true"
        else:
            options.update({k: meta[k] for k in ("metavar", "type", "choices", "action") if meta.get(k) is not None})
        if require and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            options["required"] = True
        parser.add_argument(flag_name(f.name), **options)


def settings_from_args(settings: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``settings`` that were given as flags."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(settings)
            if "help" in f.metadata and getattr(args, f.name, None) is not None}


def setting_flags(settings: Any) -> list[str]:
    """The flags that rebuild the settings dataclass ``settings``; values at their default stay implicit
    (fields whose default is computed, such as the run id and the partition, are always given)."""
    argv: list[str] = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if "help" not in f.metadata or value is None or (f.default is not dataclasses.MISSING and value == f.default):
            continue
        if f.metadata.get("action") == "store_true":
            argv.append(flag_name(f.name))
        elif f.metadata.get("action") == "append":
            for item in value:
                argv += [flag_name(f.name), "=".join(item) if isinstance(item, tuple) else str(item)]
        elif isinstance(value, tuple):
            argv += [flag_name(f.name), ",".join(map(str, value))]
        else:
            argv += [flag_name(f.name), str(value)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    from albert_batch.training.config import FinetuneConfig

    parser = argparse.ArgumentParser(prog="albert-batch", description="Batch ALBERT classification and NER on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="classify and/or tag a Parquet corpus and publish Hive-partitioned results",
        description="Flags override the values of --config; every setting is validated before any work.",
    )
    run.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of the settings below")
    add_setting_flags(run, RunConfig, require=False)
    add_setting_flags(run, ResourceConfig, require=False)
    run.add_argument("--summary-json", metavar="FILE", help="also write the run summary as JSON to FILE")
    run.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")

    tune = commands.add_parser(
        "finetune",
        help="fine-tune ALBERT on labelled Parquet with Ray Train; writes a model folder `run` can use",
        description="Classification data has columns text, label; NER data has text, entities "
        "(a list of {start, end, label} character spans). Give exactly one of --base-model and --init.",
    )
    add_setting_flags(tune, FinetuneConfig, require=True)
    tune.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    resources = settings_from_args(ResourceConfig, args)
    return RunConfig.from_sources(args.config, **settings_from_args(RunConfig, args), resources=resources or None)


def run_argv(config: RunConfig) -> list[str]:
    """The ``albert-batch run`` command line that rebuilds ``config`` exactly (the Airflow operator submits it
    as the Ray job's entrypoint, so scheduled and ad-hoc runs share one contract)."""
    return ["albert-batch", "run", *setting_flags(config), *setting_flags(config.resources)]


def format_summary(summary: Any) -> str:
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


def format_training(result: Any) -> str:
    lines = [f"fine-tuned in {result.seconds:.0f}s; best epoch {result.best_epoch}; model written to {result.output}"]
    for epoch in result.epochs:
        shown = {k: v for k, v in epoch.items() if k in ("loss", "accuracy", "macro_f1", "precision", "recall", "f1")}
        lines.append(f"  epoch {epoch['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "finetune":
            from albert_batch.training.finetune import FinetuneConfig, finetune

            print(format_training(finetune(FinetuneConfig(**settings_from_args(FinetuneConfig, args)))))
            return ExitCode.OK
        from albert_batch.pipeline.runner import run

        summary = run(config_from_args(args))
    except AlbertBatchError as err:
        code = exit_code(err)
        print(f"albert-batch: {'error' if code is ExitCode.UNUSABLE else 'run failed'}: {err}", file=sys.stderr)
        return code
    print(format_summary(summary))
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump({**dataclasses.asdict(summary), "rows_per_second": summary.rows_per_second}, fh, indent=2,
                      default=str)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
