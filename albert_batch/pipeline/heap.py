"""Memory held by the long-lived Ray processes of a run: the stage actors and the workers that write.

Both calls are per process and cheap; the stages call them per actor and per batch, the writer per file.
"""

from __future__ import annotations

import ctypes

import pyarrow as pa

# glibc's malloc_trim; None where the C library has none (musl, macOS).
MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def use_the_system_allocator_for_arrow() -> None:
    """Give this process's Arrow buffers to the C library's allocator. pyarrow's default, mimalloc, keeps
    freed pages in a long-lived process, so a run's peak was higher with it (BENCHMARKS.md, "Memory")."""
    pa.set_memory_pool(pa.system_memory_pool())


def return_freed_heap_pages() -> None:
    """Give the C library's free heap pages back to the system.

    Every forward pass of a batch has a shape of its own, so its activations are blocks of new sizes;
    glibc keeps the freed ones in each thread's arena and the model actor's memory creeps up batch after
    batch. A trim takes milliseconds, once per batch. A write of an output file leaves its worker holding
    the file's buffers the same way (BENCHMARKS.md, "Memory")."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
