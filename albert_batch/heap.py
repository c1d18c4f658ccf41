"""Memory held by the long-lived Ray processes of a run: the stage actors and the workers that write.

Both calls are per process and cheap; the stages call them per actor and per batch, the writer per file.
"""

from __future__ import annotations

import ctypes

import pyarrow as pa

# glibc's malloc_trim; None where the C library has none (musl, macOS).
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def use_the_system_allocator_for_arrow() -> None:
    """Give this process's Arrow buffers to the C library's allocator. pyarrow's default, mimalloc, keeps
    freed pages in a long-lived process: 150,000 rows through the pipeline peaked at 2.56 and 2.58 GiB
    with it in the stage actors, 2.42 GiB without (see BENCHMARKS.md)."""
    pa.set_memory_pool(pa.system_memory_pool())


def return_freed_heap_pages() -> None:
    """Give the C library's free heap pages back to the system.

    Every forward pass of a batch has a shape of its own, so its activations are blocks of new sizes;
    glibc keeps the freed ones in each thread's arena and the model actor's memory creeps up batch after
    batch. Trimmed once per batch (milliseconds), the actor held ~0.3 GiB less after 80,000 rows, no
    slower. A write of an output file (up to 100,000 rows of results) leaves its worker holding the
    file's buffers the same way: trimmed, it held 0.28 GiB instead of 0.46 (see BENCHMARKS.md)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
