"""What a run of a partition reuses of earlier work, so that nothing is computed twice.

Earlier work is either staged (a stopped or failed run's, in the partition's staging folder,
`albert_batch.pipeline.staging`) or published (the partition's last publication, which keeps a work record,
`WORK_RECORD`, beside its reports: each unit of work, the pieces that made it, and where each piece's rows
landed in the published files). Staged work is preferred: it is the later of the two.

Earlier work is reused when it was done with the same models and result-affecting settings (the
`staging.WorkKey`); then every earlier unit of work whose files are all unchanged (same name, size, version
and row groups) is kept as it was, and only the rest of the input is cut into new units and processed
(`albert_batch.pipeline.units`). A published unit's rows are copied from the published files into the
staging folder as pieces of the new run, so the run publishes a whole new partition as it would after
processing every row; rows of files that are gone are not published, since no unit holds them. The log says
what was reused and why the rest was not (`describe`).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from albert_batch import storage
from albert_batch.config import RunConfig
from albert_batch.contract import REJECTS, Task
from albert_batch.errors import PublishError
from albert_batch.inference.device import describe_precision
from albert_batch.inference.models import ModelInfo
from albert_batch.pipeline import staging
from albert_batch.pipeline.destination import Destination
from albert_batch.pipeline.inputs import InputPlan
from albert_batch.pipeline.units import InputFile, WorkUnit
from albert_batch.pipeline.writer import parquet_bytes

log = logging.getLogger(__name__)

WORK_RECORD = "_work.json"  # beside a published partition's reports: what `Earlier` is read from
COPIES = 4  # published files read at a time when their rows are copied (each holds a slice's row groups)


@dataclass(frozen=True)
class Earlier:
    """Earlier work on the partition: the run that did it, whether it is ``staged`` or ``published``, its key,
    its units and the input files it read (path -> [size, version]); for published work, the pieces of each
    unit (by unit key) with where their rows are published (``published``: table -> [file, first row])."""

    run_id: str
    where: str
    key: staging.WorkKey
    units: tuple[WorkUnit, ...]
    files: dict[str, list[Any]]
    pieces: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, record: Mapping[str, Any], where: str) -> Earlier:
        units = tuple(WorkUnit.from_record(unit) for unit in record.get("units", []))
        return cls(run_id=record["run_id"], where=where, key=staging.WorkKey.of(record["key"]), units=units,
                   files=dict(record.get("files", {})),
                   pieces={unit["key"]: unit["pieces"] for unit in record.get("units", []) if "pieces" in unit})


def work_key(config: RunConfig, plan: InputPlan, models: Mapping[Task, ModelInfo]) -> staging.WorkKey:
    """What the partition's results depend on besides their input rows (see `staging.WorkKey`)."""

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()[:32]

    return staging.WorkKey(
        models={task.value: digest([info.weights_sha256, info.labels, info.max_length]) for task, info in models.items()},
        settings={"tasks": [t.value for t in config.tasks], "id_column": config.id_column,
                  "text_column": config.text_column, "id_type": str(plan.id_type),
                  "precision": precision(config), "ner_window_overlap": config.resources.ner_window_overlap,
                  "max_text_chars": config.max_text_chars, "keep_columns": list(config.keep_columns),
                  "albert_batch": metadata.version("albert-batch")},
    )


def precision(config: RunConfig) -> str:
    """The precision the run's model actors use, in words (as manifests record it)."""
    return describe_precision(config.precision, use_gpu=config.resources.num_gpus_per_actor > 0)


def input_files(files: Sequence[InputFile]) -> dict[str, list[Any]]:
    """The input files as work records keep them: path -> [size, version]."""
    return {f.path: [f.size, f.version] for f in files}


def find(destination: Destination) -> Earlier | None:
    """The partition's earlier work: what a run staged, else what was published with a work record, else
    None. Published work whose files are not all published any more (a partition replaced by other means) is
    not used, and the log says so."""
    try:
        record = staging.read_record(destination.folder)
        if record is not None:
            return Earlier.of(record, "staged")
        raw = destination.read_published(REJECTS, WORK_RECORD)
        if raw is None:
            return None
        earlier = Earlier.of(json.loads(raw), "published")
    except (KeyError, TypeError, ValueError) as err:  # a record of an older format
        log.warning("the earlier work on this partition has a record this version cannot read (%s); it is not "
                    "reused", err)
        return None
    tables = {table for pieces in earlier.pieces.values() for piece in pieces for table in piece["published"]}
    if not tables <= set(destination.table_dirs):  # other tasks: its key tells the run that it cannot reuse it
        return earlier
    published = {table: destination.published_names(table) for table in tables}
    missing = [f"{table}/{file}" for pieces in earlier.pieces.values() for piece in pieces
               for table, (file, _) in piece["published"].items() if file not in published[table]]
    if missing:
        log.warning("the published partition does not hold every file its work record names (e.g. %s): it was "
                    "replaced by other means, and its work is not reused", missing[0])
        return None
    return earlier


def reusable(earlier: Earlier | None, key: staging.WorkKey, *, fresh: bool) -> bool:
    """Whether ``earlier`` work may be reused by a run with ``key``; when not, the log says why."""
    if earlier is None:
        return False
    reasons = ["a fresh start was asked for"] if fresh else key.changes_from(earlier.key)
    if reasons:
        log.warning("starting afresh: the work run %s %s for this partition cannot be reused, because %s",
                    earlier.run_id, earlier.where, "; ".join(reasons))
    return not reasons


def import_published(earlier: Earlier, units: Sequence[WorkUnit], destination: Destination, run_id: str) -> None:
    """Copy the published rows of ``units`` that ``earlier`` (published) work holds into the staging folder, as
    pieces of ``run_id``: each piece's rows of each table, sliced from the published file they landed in."""
    copies: dict[tuple[str, str], list[tuple[int, int, str]]] = {}  # (table, published file) -> slices
    records = []
    recorded = {f.name for f in dataclasses.fields(staging.Piece)}
    for unit in units:
        for piece in earlier.pieces.get(unit.key, []):
            name = uuid.uuid4().hex[:12]
            files = {}
            for table, (file, first) in piece["published"].items():
                files[table] = f"part-{run_id}-{staging.record_name(unit.index, name)}.parquet"
                copies.setdefault((table, file), []).append((first, piece["rows"][table], files[table]))
            fields = {k: v for k, v in piece.items() if k in recorded}
            records.append(staging.Piece(**{**fields, "unit": unit.index, "name": name, "files": files,
                                            "key": unit.key}))

    def copy(item: tuple[tuple[str, str], list[tuple[int, int, str]]]) -> None:
        (table, file), slices = item
        source = destination.published_location(table, file)
        footer, _ = storage.parquet_footer(source)
        starts = list(itertools.accumulate((footer.row_group(g).num_rows for g in range(footer.num_row_groups)),
                                           initial=0))
        for first, rows, target in slices:
            if first + rows > starts[-1]:
                raise PublishError(f"published file {source} holds {starts[-1]} rows, fewer than the {first + rows} "
                                   "its work record names; run the partition again with --fresh")
            groups = range(bisect.bisect_right(starts, first) - 1, max(bisect.bisect_left(starts, first + rows), 1))
            found = storage.read_row_groups(source, groups, footer.schema.to_arrow_schema().names)
            found = found.slice(first - starts[groups.start], rows)
            storage.write_bytes(destination.table_dirs[table].child(target), parquet_bytes(found))

    storage.concurrently(copy, list(copies.items()), limit=COPIES)
    storage.concurrently(lambda piece: staging.write_piece(destination.folder, piece), records)


def work_record(run_id: str, key: staging.WorkKey, files: dict[str, list[Any]], units: Sequence[WorkUnit],
                done: Mapping[int, list[staging.Piece]], placed: Mapping[str, Mapping[str, tuple[str, int]]]) -> bytes:
    """The `WORK_RECORD` of a publication: its units with their pieces, each piece's files as ``placed``
    (table -> staged file -> [published file, first row])."""
    record_units = []
    for unit in units:
        pieces = []
        for piece in done[unit.index]:
            entry = {k: v for k, v in dataclasses.asdict(piece).items() if k not in ("files", "unit", "name", "key")}
            entry["published"] = {table: list(placed[table][name]) for table, name in piece.files.items()}
            pieces.append(entry)
        record_units.append({**unit.as_record(), "pieces": pieces})
    record = {"run_id": run_id, "key": dataclasses.asdict(key), "files": files, "units": record_units}
    return json.dumps(record, default=str).encode()


def describe(earlier: Earlier | None, files: Sequence[InputFile], units: Sequence[WorkUnit],
             done: Mapping[int, Any]) -> dict[str, Any] | None:
    """What was reused of ``earlier`` work, and why not the rest, logged and returned for the summary: the
    input files new, changed, gone and unchanged since then, and the units reused and to process."""
    if earlier is None:
        return None
    now = input_files(files)
    changes = {
        "new": sorted(set(now) - set(earlier.files)),
        "changed": sorted(path for path in now if path in earlier.files and now[path] != list(earlier.files[path])),
        "gone": sorted(set(earlier.files) - set(now)),
    }
    unchanged = len(now) - len(changes["new"]) - len(changes["changed"])
    found = {"run_id": earlier.run_id, "where": earlier.where, "files": {
        "unchanged": unchanged, **{kind: len(paths) for kind, paths in changes.items()}}}
    todo = [u for u in units if u.index not in done]
    touched = set(changes["new"]) | set(changes["changed"])
    again = [u for u in todo if not any(s.path in touched for s in u.segments)]

    def named(paths: list[str]) -> str:
        shown = ", ".join(path.rsplit("/", 1)[-1] for path in paths[:5])
        return shown + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")

    words = [f"{len(done)} of {len(units)} units of work reused from run {earlier.run_id} ({earlier.where} work); "
             f"{unchanged} input file(s) unchanged"]
    words += [f"{len(paths)} {kind} ({named(paths)})" for kind, paths in changes.items() if paths]
    if todo:
        words.append(f"{len(todo)} unit(s) to process")
    if again:
        words.append(f"{len(again)} of them of unchanged files only: their earlier unit was not all staged, or "
                     "also held rows of a changed or gone file")
    log.info("%s", "; ".join(words))
    return found

