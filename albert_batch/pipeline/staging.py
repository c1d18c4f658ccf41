"""The staging folder of a partition: where a run's results wait until they are published, and what lets
the next run of a stopped one reuse its work.

    OUTPUT/_staging/<partition>/                 the partition path, its "/" escaped
        _run.json                                the run that stages here and what its results depend on
        <table>/part-<run>-u<unit>-<piece>.parquet
        _pieces/u<unit>-<piece>.json             a piece of a unit: which of its rows, in which files
        _retries/<id>.json                       storage retries a read or write task made
        _COMMIT.json                             the point of no return of publishing (`pipeline.publish`)

A unit of work (`pipeline.units.WorkUnit`) reaches the writer in pieces: a write task gathers rows of
one or more units and writes each unit's rows as files of their own, then records the piece, last, so a
piece's record never names a file that is not all there. A unit is done when its recorded pieces cover
each of its rows exactly once (`cover`); a piece that repeats rows (a retried write task whose first
attempt got as far as its record) is never used, nor is a file that no record names (one that got no
further), so nothing is published twice or half.

A piece counts for every unit of work with the same key (`albert_batch.pipeline.units`): a run of a partition
whose staging folder holds another run's work, for the same models and result-affecting settings
(`WorkKey`), keeps the done units whose files are unchanged and redoes the rest (`prepare`); what it reuses,
and why not the rest, is decided and logged by `albert_batch.pipeline.reuse`.
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
from typing import Any, Protocol
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
    """What a partition's results depend on besides their input rows: staged or published work is reused
    only by a run with the same key, and only for units of work with the same `units.WorkUnit.key`."""

    models: dict[str, str]  # task -> a digest of the model's weights, labels and length
    settings: dict[str, Any]  # the settings that change results (tasks, columns, precision, ...)

    @classmethod
    def of(cls, record: dict[str, Any]) -> WorkKey:
        return cls(models=dict(record.get("models", {})), settings=dict(record.get("settings", {})))

    def changes_from(self, earlier: WorkKey) -> list[str]:
        """Why work done under ``earlier`` cannot be reused by a run with this key, in words."""
        reasons = []
        for task in sorted(set(self.models) | set(earlier.models)):
            if self.models.get(task) != earlier.models.get(task):
                reasons.append(f"the {task} model changed")
        for name in sorted(set(self.settings) | set(earlier.settings)):
            if self.settings.get(name) != earlier.settings.get(name):
                reasons.append(f"{name} changed from {earlier.settings.get(name)!r} to {self.settings.get(name)!r}")
        return reasons


class Unit(Protocol):
    """A unit of work as staging knows it (`albert_batch.pipeline.units.WorkUnit`)."""

    @property
    def index(self) -> int: ...

    @property
    def key(self) -> str: ...

    @property
    def rows(self) -> int: ...

    def as_record(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Piece:
    """Rows of one unit that one write task wrote: ``ranges`` of row numbers in the unit, ``files`` per table,
    and the counts the run summary needs."""

    unit: int  # the unit's index in the run that staged the piece
    name: str
    run_id: str
    ranges: list[list[int]]  # [start, stop) pairs
    files: dict[str, str] = field(default_factory=dict)  # table -> file name, for tables with rows
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows
    rejects: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # processing errors' details -> rows
    samples: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)  # `albert_batch.quality.sketch.Sketch` of its rows
    key: str = ""  # the unit's key: the piece counts for any later unit with the same key

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


def done_units(folder: Location, units: Sequence[Unit],
               cache: dict[str, Piece] | None = None) -> tuple[dict[int, list[Piece]], list[Piece]]:
    """The done ``units`` (by index) with the pieces that cover them, whichever run staged them for a unit
    with the same key, and every recorded piece that is not used (of units not done, or repeating rows)."""
    by_key: dict[str, list[Piece]] = {}
    for piece in read_pieces(folder, cache):
        by_key.setdefault(piece.key, []).append(piece)
    done, used = {}, set()
    for unit in units:
        chosen = cover(unit.rows, by_key.get(unit.key, [])) if unit.key else None
        if chosen is not None:
            done[unit.index] = chosen
            used.update(id(p) for p in chosen)
    unused = [p for pieces in by_key.values() for p in pieces if id(p) not in used]
    return done, unused


@dataclass(frozen=True)
class Resumed:
    """What a run starts from: the units that are done, with their pieces, and the runs that did them."""

    done: dict[int, list[Piece]]
    runs: tuple[str, ...]

    @property
    def pieces(self) -> list[Piece]:
        return [p for pieces in self.done.values() for p in pieces]


def prepare(folder: Location, table_dirs: dict[str, Location], key: WorkKey, run_id: str, units: Sequence[Unit],
            *, keep: bool, files: dict[str, list[Any]], published: Callable[[], set[Location]] = set,
            cache: dict[str, Piece] | None = None) -> None:
    """Make ``folder`` ready for ``run_id``: keep the pieces of earlier staged work that cover ``units`` (if
    ``keep``: the earlier run had the same `WorkKey`), drop everything else, and record the run, its key,
    its units and its input ``files`` (path -> [size, version]). ``table_dirs`` are where each table's staged
    files are; ``published()`` names files of a published table, never dropped (asked only when there is
    earlier work to drop from). ``cache``: as `read_pieces`'s."""
    if read_record(folder) is not None:
        protected = published()
        if keep:
            _, unused = done_units(folder, units, cache)
            _drop(folder, table_dirs, unused, protected)
        else:
            _drop(folder, table_dirs, read_pieces(folder), protected)
            storage.delete_dir(folder)
        storage.delete_dir(folder.child(RETRIES))  # counts are per run
    record = {"run_id": run_id, "key": dataclasses.asdict(key), "files": files, "units": [u.as_record() for u in units]}
    storage.write_bytes(folder.child(RUN_RECORD), json.dumps(record).encode())


def resumed(folder: Location, units: Sequence[Unit], cache: dict[str, Piece] | None = None) -> Resumed:
    """The done ``units`` of the staged work in ``folder``, and the runs that did them (``cache``: as
    `read_pieces`'s)."""
    done, _ = done_units(folder, units, cache)
    return Resumed(done=done, runs=tuple(dict.fromkeys(p.run_id for pieces in done.values() for p in pieces)))


def discard(folder: Location) -> None:
    """Remove staged work that must not be reused (best effort: leftover work is found unusable anyway)."""
    try:
        storage.delete_dir(folder)
    except AlbertBatchError as err:
        log.warning("could not remove the staging folder %s: %s", folder, err)


def read_record(folder: Location) -> dict[str, Any] | None:
    """The run record of the staging folder, if a run has staged there."""
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
