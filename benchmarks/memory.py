"""Peak memory and CPU time of a process tree: the contender's process and every descendant (for Ray runs
that is the driver, GCS, raylet and every worker, all started under it).

Summed RSS would count shared pages once per process: torch's libraries in every worker and Ray's object
store (shared memory mapped into each reader) would be counted many times over. PSS (proportional set
size, from ``/proc/PID/smaps_rollup``) splits each shared page between the processes that map it, so the
sum over a tree is the memory the tree actually holds. Both are recorded; PSS is the headline.

CPU time (user + system, summed over every process seen) is the work done whatever else runs on the
machine; on a busy machine it is the steadier figure to compare two versions by.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil

GIB = 1024**3
RSS_STEP = 16 << 20
T = TypeVar("T")


@dataclass
class TreeUsage:
    """Memory peaks (bytes) and CPU time over a sampled interval, and the (seconds since start, PSS)
    samples behind the peaks."""

    pss: int = 0
    rss: int = 0
    machine_used: int = 0  # the machine's memory in use above its level when sampling started
    processes: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    cpu_by_process: dict[tuple[int, int], float] = field(default_factory=dict)  # `process_key` -> CPU s

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_by_process.values())

    def peak_between(self, start_fraction: float, stop_fraction: float) -> int:
        """Peak PSS within a fraction of the sampled time, e.g. (0.5, 1.0) for the second half."""
        if not self.samples:
            return 0
        end = self.samples[-1][0]
        chosen = [pss for t, pss in self.samples if start_fraction * end <= t <= stop_fraction * end]
        return max(chosen, default=0)


def machine_memory_in_use() -> int:
    memory = psutil.virtual_memory()
    return memory.total - memory.available


def process_key(process: psutil.Process) -> tuple[int, int]:
    """A process's pid and start (clock ticks since boot, ``/proc/PID/stat``'s 22nd field): a key that stays
    the same for the process's life and differs for a later process given its pid. psutil's ``create_time``
    would not do: it adds the boot time, which moves by a second whenever the machine's clock is adjusted
    across one, and a process keyed twice had its CPU time counted twice."""
    try:
        with open(f"/proc/{process.pid}/stat", "rb") as stat:
            return process.pid, int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError) as exc:
        raise psutil.NoSuchProcess(process.pid) from exc


def read_tree(root: psutil.Process, read: Callable[[psutil.Process], T]) -> list[T]:
    """``read`` of ``root`` and of each of its descendants, each process read in one go; processes that exit
    meanwhile are skipped."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    found = []
    for process in processes:
        try:
            with process.oneshot():
                found.append(read(process))
        except psutil.Error:
            continue
    return found


def sample_tree(root: psutil.Process, usage: TreeUsage, elapsed: float, machine_baseline: int = 0,
                memory_in_use: Callable[[], int] = machine_memory_in_use, *, pss: bool = True) -> None:
    """Add one sample of ``root`` and its descendants to ``usage``; processes that exit meanwhile are skipped
    (their CPU time counts up to their last sample). The machine-wide figure is ``memory_in_use()`` above
    ``machine_baseline``. Without ``pss``, RSS and CPU time only: reading PSS has the kernel walk each
    process's page tables, ~40 ms of CPU for a run's tree with a base model loaded (RSS: ~3 ms)."""
    def read(process: psutil.Process) -> tuple[Any, Any, tuple[int, int]]:
        memory = process.memory_full_info() if pss else process.memory_info()
        return memory, process.cpu_times(), process_key(process)

    total_pss = rss = count = 0
    for info, times, key in read_tree(root, read):
        total_pss += info.pss if pss else 0
        rss += info.rss
        count += 1
        usage.cpu_by_process[key] = times.user + times.system
    usage.machine_used = max(usage.machine_used, memory_in_use() - machine_baseline)
    if count:
        usage.rss = max(usage.rss, rss)
        usage.processes = max(usage.processes, count)
        if pss:
            usage.pss = max(usage.pss, total_pss)
            usage.samples.append((elapsed, total_pss))


class TreeSampler:
    """Samples a process tree's memory and CPU time on a background thread until stopped: RSS and CPU time
    every ``interval_s``; PSS every ``pss_interval_s``, and whenever the tree's RSS passes its highest so far
    by ``RSS_STEP`` (where a new peak can be). PSS at every sample would take ~2% of two cores from the run it
    measures."""

    def __init__(self, pid: int, interval_s: float = 1.0, pss_interval_s: float = 10.0) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.pss_interval_s = pss_interval_s
        self.usage = TreeUsage()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._started = 0.0

    def __enter__(self) -> TreeSampler:
        self._started = time.monotonic()
        self._machine_baseline = machine_memory_in_use()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        pss_read, rss_then = -self.pss_interval_s, 0  # when PSS was last read, and the highest RSS then
        while not self._stop.is_set():
            elapsed = time.monotonic() - self._started
            sample_tree(self.root, self.usage, elapsed, self._machine_baseline, pss=False)
            if self.usage.rss > rss_then + RSS_STEP or elapsed - pss_read >= self.pss_interval_s:
                sample_tree(self.root, self.usage, elapsed, self._machine_baseline)
                pss_read, rss_then = elapsed, self.usage.rss
            self._stop.wait(self.interval_s)
