"""The staging folder of a partition: where a run's results wait until they are published, and what lets
the next run of a stopped one reuse its work.

    OUTPUT/_staging/<partition>/                 the partition path, its "/" escaped
        _run.json                                the run that stages here and what its results depend on
        <table>/part-<run>-u<unit>-<piece>.parquet
        _pieces/u<unit>-<piece>.json             a piece of a unit: which of its rows, in which files
        _retries/<id>.json                       storage retries a read or write task made
        _COMMIT.json                             the point of no return of publishing (`pipeline.publish`)

A unit of work (`pipeline.inputs.WorkUnit`) reaches the writer in pieces: a write task gathers rows of
one or more units and writes each unit's rows as files of their own, then records the piece, last, so a
piece's record never names a file that is not all there. A unit is done when its recorded pieces cover
each of its rows exactly once (`cover`); a piece that repeats rows (a retried write task whose first
attempt got as far as its record) is never used, nor is a file that no record names (one that got no
further), so nothing is published twice or half.

A run of a partition whose staging folder holds another run's work, for the same input files, models and
result-affecting settings (`WorkKey`), keeps the done units and redoes the rest (`prepare`). Anything else
starts afresh, and the log says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from albert_batch import storage
from albert_batch.contract import STAGING_DIR
from albert_batch.errors import AlbertBatchError, NotFound
from albert_batch.storage import Location

log = logging.getLogger(__name__)

RUN_RECORD = "_run.json"
PIECES = "_pieces"
RETRIES = "_retries"


def partition_folder(output: Location, partition_path: str) -> Location:
    """``OUTPUT/_staging/<partition>``: one folder per partition, whichever run stages there."""
    return output.child(STAGING_DIR, quote(partition_path, safe="="))


@dataclass(frozen=True)
class WorkKey:
    """What a partition's results depend on: staged work is reused only by a run with the same key."""

    input: str  # a digest of the input files (names, sizes, versions) and how they are cut into units
    models: dict[str, str]  # task -> a digest of the model's weights, labels and length
    settings: dict[str, Any]  # the settings that change results (tasks, columns, precision, ...)

    def changes_from(self, earlier: WorkKey) -> list[str]:
        """Why work staged under ``earlier`` cannot be reused by a run with this key, in words."""
        reasons = []
        if self.input != earlier.input:
            reasons.append("the input files changed (their names, sizes or versions)")
        for task in sorted(set(self.models) | set(earlier.models)):
            if self.models.get(task) != earlier.models.get(task):
                reasons.append(f"the {task} model changed")
        for name in sorted(set(self.settings) | set(earlier.settings)):
            if self.settings.get(name) != earlier.settings.get(name):
                reasons.append(f"{name} changed from {earlier.settings.get(name)!r} to {self.settings.get(name)!r}")
        return reasons


@dataclass(frozen=True)
class Piece:
    """Rows of one unit that one write task wrote: ``ranges`` of row numbers in the unit, ``files`` per table,
    and the counts the run summary needs."""

    unit: int
    name: str
    run_id: str
    ranges: list[list[int]]  # [start, stop) pairs
    files: dict[str, str] = field(default_factory=dict)  # table -> file name, for tables with rows
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows
    rejects: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # processing errors' details -> rows
    samples: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)  # `albert_batch.quality.sketch.Sketch` of its rows

    @property
    def row_count(self) -> int:
        return sum(stop - start for start, stop in self.ranges)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), default=str).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Piece:
        return cls(**json.loads(data))


def record_name(unit: int, piece: str) -> str:
    return f"u{unit:06d}-{piece}"


def write_piece(folder: Location, piece: Piece) -> None:
    """Record a piece; its files must be written already."""
    storage.write_bytes(folder.child(PIECES, f"{record_name(piece.unit, piece.name)}.json"), piece.to_json())


def read_pieces(folder: Location, cache: dict[str, Piece] | None = None) -> list[Piece]:
    """The pieces recorded in ``folder``; with a ``cache`` (path -> piece), only new records are read."""
    cache = {} if cache is None else cache
    found = [f.path for f in storage.list_files(folder.child(PIECES))]
    new = [path for path in found if path not in cache]
    cache.update(zip(new, storage.concurrently(
        lambda p: Piece.from_json(storage.read_bytes(Location(folder.scheme, p))), new), strict=True))
    return [cache[path] for path in found]


def cover(rows: int, pieces: Sequence[Piece]) -> list[Piece] | None:
    """Pieces that hold each of a unit's ``rows`` rows exactly once, or None when its rows are not all there.
    Pieces are taken in order of their first row (then name), skipping any that repeats a taken row."""
    taken: list[list[int]] = []
    chosen = []
    for piece in sorted(pieces, key=lambda p: (p.ranges[0][0] if p.ranges else -1, p.name)):
        if any(start < 0 or stop > rows for start, stop in piece.ranges):
            continue
        if any(start < t_stop and t_start < stop for start, stop in piece.ranges for t_start, t_stop in taken):
            continue
        taken.extend(piece.ranges)
        chosen.append(piece)
    return chosen if sum(stop - start for start, stop in taken) == rows else None


def done_units(folder: Location, unit_rows: dict[int, int],
               cache: dict[str, Piece] | None = None) -> tuple[dict[int, list[Piece]], list[Piece]]:
    """The done units among ``unit_rows`` (unit -> rows) with the pieces that cover them, and every recorded
    piece that is not used (of units not done, or repeating rows)."""
    by_unit: dict[int, list[Piece]] = {}
    for piece in read_pieces(folder, cache):
        by_unit.setdefault(piece.unit, []).append(piece)
    done, unused = {}, []
    for unit, pieces in by_unit.items():
        chosen = cover(unit_rows[unit], pieces) if unit in unit_rows else None
        if chosen is not None:
            done[unit] = chosen
        unused.extend(p for p in pieces if chosen is None or p not in chosen)
    done.update({unit: [] for unit, rows in unit_rows.items() if rows == 0})
    return done, unused


@dataclass(frozen=True)
class Resumed:
    """What a run starts from: the units that are done, with their pieces, and the runs that did them."""

    done: dict[int, list[Piece]]
    runs: tuple[str, ...]

    @property
    def pieces(self) -> list[Piece]:
        return [p for pieces in self.done.values() for p in pieces]


def prepare(folder: Location, table_dirs: dict[str, Location], key: WorkKey, run_id: str,
            unit_rows: dict[int, int], *, fresh: bool, published: Callable[[], set[Location]] = set) -> Resumed:
    """Make ``folder`` ready for ``run_id``: keep the done units of earlier work with the same ``key`` (unless
    ``fresh``), drop everything else, and record the run. Returns what is reused. ``table_dirs`` are where
    each table's staged files are; ``published()`` names files of a published table, never dropped (asked
    only when there is earlier work to drop from)."""
    record = _read_record(folder)
    resumed = Resumed(done={}, runs=())
    if record is not None:
        keep = published()
        earlier = WorkKey(**record["key"])
        reasons = ["a fresh start was asked for"] if fresh else key.changes_from(earlier)
        if reasons:
            log.warning("starting afresh: the work run %s staged for this partition cannot be reused, because %s",
                        record["run_id"], "; ".join(reasons))
            _drop(folder, table_dirs, read_pieces(folder), keep)
            storage.delete_dir(folder)
        else:
            done, unused = done_units(folder, unit_rows)
            _drop(folder, table_dirs, unused, keep)
            runs = tuple(dict.fromkeys(p.run_id for pieces in done.values() for p in pieces))
            resumed = Resumed(done=done, runs=runs)
            log.info("resuming the work of run %s: %d of %d units are done and kept", record["run_id"],
                     len(done), len(unit_rows))
        storage.delete_dir(folder.child(RETRIES))  # counts are per run
    storage.write_bytes(folder.child(RUN_RECORD),
                        json.dumps({"run_id": run_id, "key": dataclasses.asdict(key)}, indent=2).encode())
    return resumed


def discard(folder: Location) -> None:
    """Remove staged work that must not be reused (best effort: leftover work is found unusable anyway)."""
    try:
        storage.delete_dir(folder)
    except AlbertBatchError as err:
        log.warning("could not remove the staging folder %s: %s", folder, err)


def _read_record(folder: Location) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(folder.child(RUN_RECORD)))
    except NotFound:
        return None


def _drop(folder: Location, table_dirs: dict[str, Location], pieces: list[Piece], published: set[Location]) -> None:
    """Forget pieces that will not be used: their records first, then their files (unless published)."""
    storage.concurrently(storage.delete_file,
                         [folder.child(PIECES, f"{record_name(piece.unit, piece.name)}.json") for piece in pieces])
    files = [table_dirs[table].child(name) for piece in pieces for table, name in piece.files.items()
             if table in table_dirs]
    storage.concurrently(storage.delete_file, [f for f in files if f not in published])


@contextlib.contextmanager
def retries_reported(folder: Location | None) -> Iterator[None]:
    """Record in ``folder`` the storage retries this process makes within the block, if any."""
    before = Counter(storage.retries_made())
    try:
        yield
    finally:
        made = Counter(storage.retries_made())
        made.subtract(before)
        made = Counter({kind: n for kind, n in made.items() if n > 0})
        if folder is not None and made:
            with contextlib.suppress(Exception):  # a count is not worth failing a task for
                storage.write_bytes(folder.child(RETRIES, f"{uuid.uuid4().hex}.json"), json.dumps(made).encode())


def retries_recorded(folder: Location) -> Counter[str]:
    """The storage retries that tasks recorded in ``folder``, by kind."""
    total: Counter[str] = Counter()
    for found in storage.list_files(folder.child(RETRIES)):
        total.update(json.loads(storage.read_bytes(Location(folder.scheme, found.path))))
    return total
