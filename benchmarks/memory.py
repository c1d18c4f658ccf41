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
from typing import TypeVar

import psutil

GIB = 1024**3
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
    cpu_by_process: dict[tuple[int, float], float] = field(default_factory=dict)  # (pid, start time) -> CPU s

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
                memory_in_use: Callable[[], int] = machine_memory_in_use) -> None:
    """Add one sample of ``root`` and its descendants to ``usage``; processes that exit meanwhile are skipped
    (their CPU time counts up to their last sample). The machine-wide figure is ``memory_in_use()`` above
    ``machine_baseline``."""
    pss = rss = count = 0
    for info, times, key in read_tree(root, lambda p: (p.memory_full_info(), p.cpu_times(), (p.pid, p.create_time()))):
        pss += info.pss
        rss += info.rss
        count += 1
        usage.cpu_by_process[key] = times.user + times.system
    usage.machine_used = max(usage.machine_used, memory_in_use() - machine_baseline)
    if count:
        usage.pss = max(usage.pss, pss)
        usage.rss = max(usage.rss, rss)
        usage.processes = max(usage.processes, count)
        usage.samples.append((elapsed, pss))


class TreeSampler:
    """Samples a process tree's memory and CPU time on a background thread until stopped."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
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
        while not self._stop.is_set():
            sample_tree(self.root, self.usage, time.monotonic() - self._started, self._machine_baseline)
            self._stop.wait(self.interval_s)
