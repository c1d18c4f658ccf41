"""Units of work: how a run cuts its input files, and what makes a unit the same from one run to the next.

A unit of work is whole row groups of one or several files, taken in file and row-group order, up to a
number of bytes of uncompressed data (``unit_mib``, `UNIT_BYTES` by default) and `UNIT_FILES` files (a
larger row group is a unit by itself). It is what one read task reads, and what a later run of the
partition reuses or redoes as a whole (`albert_batch.pipeline.staging`, `albert_batch.pipeline.reuse`): a
corpus of one large file is cut into several units, so it resumes too, and thousands of small files are
packed into a few, so a run's units, read tasks, staged files and records follow the data's size, not its
file count.

A unit's `WorkUnit.key` is a digest of what its rows are: its files' names, sizes, versions (ETag or
modification time) and row groups, and which row groups it takes. Work done for a unit counts for any
later unit with the same key, whatever its place among the run's units. So that a changed input keeps
its unchanged files' work, a run cuts its input around the units of earlier work (`pack`'s ``keep``): an
earlier unit whose files are all unchanged is kept as it was, and only the row groups of new and changed
files, and of unchanged files that shared a unit with a changed one, are cut into new units.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

UNIT_BYTES = 16 * 2**20  # uncompressed row groups per unit of work, unless the run's unit_mib says otherwise
# Files per unit at most: a read task opens each of its files (a request or two on S3, read a few at a
# time), so this bounds a read task's time however small the files are.
UNIT_FILES = 1000


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    version: str  # the ETag on S3, the modification time elsewhere: changes whenever the content does
    row_groups: tuple[tuple[int, int], ...]  # (rows, uncompressed bytes) of each row group

    @property
    def rows(self) -> int:
        return sum(rows for rows, _ in self.row_groups)

    def identity(self) -> list[Any]:
        """What the file's content is known by: its name, size, version and row groups."""
        return [self.path, self.size, self.version, [list(group) for group in self.row_groups]]


@dataclass(frozen=True)
class Segment:
    """Row groups ``start`` to ``stop - 1`` of the file ``path``: their ``rows``."""

    path: str
    start: int
    stop: int
    rows: int


@dataclass(frozen=True)
class WorkUnit:
    """The rows of its segments, in order, numbered from 0; ``key`` says what they are (see the module)."""

    index: int
    segments: tuple[Segment, ...]
    key: str = ""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    def as_record(self) -> dict[str, Any]:
        return {"key": self.key, "segments": [[s.path, s.start, s.stop, s.rows] for s in self.segments]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], index: int = -1) -> WorkUnit:
        return cls(index, tuple(Segment(*segment) for segment in record["segments"]), record["key"])


def unit_key(segments: Iterable[Segment], files: Mapping[str, InputFile]) -> str:
    """The key of a unit of ``segments`` of ``files`` (path -> file)."""
    digest = hashlib.sha256()
    for s in segments:
        digest.update(json.dumps([files[s.path].identity(), s.start, s.stop]).encode())
    return digest.hexdigest()[:32]


def pack(files: Sequence[InputFile], *, max_bytes: int | None = None, max_files: int | None = None,
         keep: Iterable[WorkUnit] = ()) -> tuple[WorkUnit, ...]:
    """The units of work of ``files``, each at most ``max_bytes`` (`UNIT_BYTES`) of row groups of at most
    ``max_files`` files (`UNIT_FILES`), numbered in file and row-group order. The units of ``keep`` whose
    files are all in ``files`` unchanged are kept as they are; the rest of the row groups are cut anew."""
    max_bytes, max_files = max_bytes or UNIT_BYTES, max_files or UNIT_FILES
    by_path = {f.path: f for f in files}
    kept: list[tuple[Segment, ...]] = []
    taken: dict[str, set[int]] = {}
    for unit in keep:
        groups = [(s.path, g) for s in unit.segments for g in range(s.start, s.stop)]
        if (all(s.path in by_path for s in unit.segments) and unit_key(unit.segments, by_path) == unit.key
                and not any(g in taken.get(path, ()) for path, g in groups)):
            kept.append(unit.segments)
            for path, g in groups:
                taken.setdefault(path, set()).add(g)
    cut = _cut(files, taken, max_bytes, max_files)
    order = {f.path: position for position, f in enumerate(files)}
    ordered = sorted(kept + cut, key=lambda segments: (order[segments[0].path], segments[0].start))
    return tuple(WorkUnit(index, segments, unit_key(segments, by_path)) for index, segments in enumerate(ordered))


def _cut(files: Sequence[InputFile], taken: Mapping[str, set[int]], max_bytes: int,
         max_files: int) -> list[tuple[Segment, ...]]:
    """The row groups of ``files`` not ``taken`` (path -> row groups), cut into units in order."""
    units: list[tuple[Segment, ...]] = []
    segments: list[Segment] = []
    size = 0

    def close() -> None:
        nonlocal segments, size
        if segments:
            units.append(tuple(segments))
        segments, size = [], 0

    for f in files:
        start, rows = None, 0  # the segment of f being gathered: its first row group and rows
        for group, (group_rows, group_bytes) in enumerate(f.row_groups):
            if group in taken.get(f.path, ()):
                if start is not None:
                    segments.append(Segment(f.path, start, group, rows))
                    start, rows = None, 0
                continue
            full = size + group_bytes > max_bytes or (start is None and len(segments) == max_files)
            if full and (segments or start is not None):
                if start is not None:
                    segments.append(Segment(f.path, start, group, rows))
                close()
                start, rows = None, 0
            if start is None:
                start = group
            rows, size = rows + group_rows, size + group_bytes
        if start is not None:
            segments.append(Segment(f.path, start, len(f.row_groups), rows))
    close()
    return units
