"""The ``albert-batch`` command line (``run``, ``finetune``, ``pretrain``, ``report``): a thin layer over
`albert_batch.run`, `albert_batch.training` and `albert_batch.quality`.

Every flag is a field of `RunConfig`, `ResourceConfig`, `FinetuneConfig` or `PretrainConfig`, with the help text given
there, so a new setting is added in one place; docs/cli.md is generated from the same parser (`build_parser`).
Exit codes are `albert_batch.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from albert_batch.config import ResourceConfig, RunConfig
from albert_batch.console import RunConsole
from albert_batch.errors import AlbertBatchError, ExitCode, Stopped, exit_code
from albert_batch.training.config import FinetuneConfig, PretrainConfig

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
                argv += [flag_name(f.name), "=".join(map(str, item)) if isinstance(item, tuple) else str(item)]
        elif isinstance(value, tuple):
            argv += [flag_name(f.name), ",".join(map(str, value))]
        else:
            argv += [flag_name(f.name), str(value)]
    return argv


def add_console_flags(parser: argparse.ArgumentParser) -> None:
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("-q", "--quiet", action="store_true", help="print the summary, warnings and errors only")
    shown.add_argument("-v", "--verbose", action="store_true",
                       help="print albert-batch's debug lines too, and Ray's own output (no details log)")


def build_parser() -> argparse.ArgumentParser:
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
    add_console_flags(run)

    tune = commands.add_parser(
        "finetune",
        help="fine-tune ALBERT on labelled Parquet with Ray Train; writes a model folder `run` can use",
        description="Classification data has columns text, label; NER data has text, entities "
        "(a list of {start, end, label} character spans). Give exactly one of --base-model and --init.",
    )
    add_setting_flags(tune, FinetuneConfig, require=True)
    add_console_flags(tune)

    pre = commands.add_parser(
        "pretrain",
        help="pretrain ALBERT (masked LM + sentence-order prediction) on unlabelled Parquet with Ray Train; "
        "writes a model folder `finetune --base-model` takes",
        description="The corpus has id and text columns, as `run` reads them. Give exactly one of --base-model and --init.",
    )
    add_setting_flags(pre, PretrainConfig, require=True)
    add_console_flags(pre)

    report = commands.add_parser(
        "report",
        help="write the quality report of a published partition (every run also publishes one beside it)",
        description="Reads the partition's _quality.json; compares it with the partition its drift was measured "
        "against (the previous one), or with --against.",
    )
    report.add_argument("--output", required=True, metavar="URI", help="the run's output (path, s3:// or iceberg://)")
    report.add_argument("--partition", required=True, action="append", metavar="KEY=VALUE",
                        help="the partition; repeat for several keys")
    report.add_argument("--against", action="append", metavar="KEY=VALUE",
                        help="compare with this partition instead; repeat for several keys")
    report.add_argument("--to", metavar="FILE.html", help="where to write the report (default: report-<partition>.html)")
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
    if summary.report:
        lines.append(f"report: {summary.report}")
    if summary.shifted:
        lines.append(f"drift: {', '.join(summary.shifted)} shifted against the previous partition (see the report)")
    if summary.units.get("reused"):
        earlier = summary.units.get("earlier") or {}
        files = earlier.get("files", {})
        changes = ", ".join(f"{files[kind]} {kind}" for kind in ("new", "changed", "gone") if files.get(kind))
        lines.append(f"reused: {summary.units['reused']} of {summary.units['total']} units from run(s) "
                     f"{', '.join(summary.units['reused_from_runs'])} ({earlier.get('where', 'staged')} work)"
                     + (f"; input files since then: {changes}" if changes else ""))
    if (dedupe := summary.dedupe) and dedupe.get("duplicate_rows"):
        lines.append(f"repeated texts: {dedupe['duplicate_rows']:,} rows ({dedupe['duplicate_share']:.1%}) repeated a "
                     "text already run, and were not run again")
    if cost := summary.cost:
        per_million = cost.get("gpu_hours_per_million_rows") or cost.get("cpu_hours_per_million_rows")
        unit = "GPU" if cost.get("gpu_hours_per_million_rows") else "CPU"
        lines.append(f"cost: {cost['cpu_seconds']:,.1f} CPU-seconds, {cost['gpu_seconds']:,.1f} GPU-seconds held"
                     + (f"; {per_million:,.4f} {unit}-hours per million rows" if per_million else "")
                     + f"; model actors: {cost['model_actors'].get('min', 0)} to {cost['model_actors'].get('max', 0)} at once, "
                     f"computing {cost['model_actors']['busy_share']:.0%} of their time")
    if summary.storage_retries:
        lines.append("storage operations retried: " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.storage_retries.items())))
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


def format_pretraining(result: Any) -> str:
    lines = [f"pretrained in {result.seconds:.0f}s; model written to {result.output}"]
    for e in result.evaluations:
        lines.append(f"  step {e['step']} (epoch {e['epoch']}): held-out mlm_loss {e['mlm_loss']:.4f}, "
                     f"mlm_accuracy {e['mlm_accuracy']:.4f}, sop_accuracy {e['sop_accuracy']:.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("finetune", "pretrain"):
        return _train(args)
    if args.command == "report":
        return _report(args)
    try:
        config = config_from_args(args)
    except AlbertBatchError as err:
        print(f"albert-batch: error: {err}", file=sys.stderr)
        return exit_code(err)
    from albert_batch.pipeline.runner import run

    with RunConsole(config.run_id, quiet=args.quiet, verbose=args.verbose) as console:
        try:
            summary = run(config)
        except AlbertBatchError as err:
            log.debug("the run ended with an error", exc_info=True)  # the whole story, for the details log
            code = exit_code(err)
            what = "error: " if code == ExitCode.UNUSABLE else "" if isinstance(err, Stopped) else "run failed: "
            console.say(f"albert-batch: {what}{err}" + (f" (details: {console.log_path})" if console.log_path else ""),
                        error=True)
            return code
        console.say(format_summary(summary))
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump({**dataclasses.asdict(summary), "rows_per_second": summary.rows_per_second}, fh, indent=2,
                      default=str)
    return ExitCode.OK


def _report(args: argparse.Namespace) -> int:
    from albert_batch.contract import parse_partition, partition_path
    from albert_batch.quality import stored_report

    try:
        partition = partition_path(parse_partition(args.partition))
        against = partition_path(parse_partition(args.against)) if args.against else None
        figures, page = stored_report(args.output, partition, against=against)
    except AlbertBatchError as err:
        print(f"albert-batch: error: {err}", file=sys.stderr)
        return exit_code(err)
    target = Path(args.to or f"report-{partition.replace('/', '_')}.html")
    target.write_text(page, encoding="utf-8")
    print(f"report of {partition}: {target.resolve()}")
    if figures.drift:
        print(f"drift against {figures.drift['against']}: "
              + ", ".join(f"{name} {c['value']:.3f}{' SHIFTED' if c['shifted'] else ''}"
                          for name, c in figures.drift["checks"].items()))
    return ExitCode.OK


def _train(args: argparse.Namespace) -> int:
    """``finetune`` or ``pretrain``: build its settings from the flags, train with the console of `run`
    (progress in steps), print the outcome."""
    if args.command == "finetune":
        from albert_batch.training.finetune import finetune as train

        settings, describe = FinetuneConfig, format_training
    else:
        from albert_batch.training.pretrain import pretrain as train

        settings, describe = PretrainConfig, format_pretraining
    try:
        config = settings(**settings_from_args(settings, args))
    except AlbertBatchError as err:
        print(f"albert-batch: error: {err}", file=sys.stderr)
        return exit_code(err)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    with RunConsole(started, command=args.command, quiet=args.quiet, verbose=args.verbose) as console:
        try:
            result = train(config)
        except AlbertBatchError as err:
            log.debug("%s ended with an error", args.command, exc_info=True)
            what = "error" if exit_code(err) == ExitCode.UNUSABLE else "failed"
            console.say(f"albert-batch: {what}: {err}" + (f" (details: {console.log_path})" if console.log_path else ""),
                        error=True)
            return exit_code(err)
        console.say(describe(result))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
