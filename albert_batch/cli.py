"""The ``albert-batch`` command line: a thin layer over `albert_batch.run`.

    albert-batch run --input URI --output URI [--tasks classify,ner] [--classifier-model URI]
        [--ner-model URI] [--text-column text] [--id-column id] [--partition KEY=VALUE ...]
        [--precision auto|fp32|bf16|fp16] [--run-id ID] [--ray-address ADDRESS] [--config FILE.yaml]

Exit codes: 0 when every partition was published; 2 when settings, input or models are unusable
(nothing was done); 1 when the run failed (nothing half-written is visible).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from albert_batch.config import Precision, RunConfig
from albert_batch.errors import AlbertBatchError, ConfigError, InputError, ModelLoadError

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2

log = logging.getLogger("albert_batch")


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
    run.add_argument("--model-actors", type=int, metavar="N", help="model actors (default: from cluster resources)")
    run.add_argument("--num-gpus-per-actor", type=float, metavar="X", help="GPUs per model actor, fractions allowed")
    run.add_argument("--summary-json", metavar="FILE", help="also write the run summary as JSON to FILE")
    run.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    resources = {k: v for k, v in (("model_actors", args.model_actors), ("num_gpus_per_actor", args.num_gpus_per_actor))
                 if v is not None}
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


if __name__ == "__main__":
    sys.exit(main())
