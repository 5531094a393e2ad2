"""Memory reuse while a cube is computed: freed memory is kept in the process for the next allocation.

A cube run allocates and frees gigabytes of large arrays. By default glibc hands every large block back to the
operating system on free (mmap/munmap, heap trimming), and so does Arrow's allocator, so the next array of that
size is fresh memory again: each of its pages is faulted in and zeroed by the kernel. On virtual machines whose
host takes free guest memory back (free page reporting), a fresh page costs a fault on the host as well.
`retained_memory()` keeps freed blocks in the process for the length of the run and gives them back at its end.

It also stops numpy from asking for transparent huge pages for its arrays during the run: on the 2-core reference
VM a huge page is cheap to touch again but slow and erratic to fault in fresh (0.7-2.0 s per GB, against a steady
0.43 s per GB for small pages), and a run's memory is mostly touched once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

import numpy._core.multiarray as _np_multiarray
import pyarrow as pa

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_KEEP = {_M_MMAP_MAX: 0,  # large blocks come from the heap too, not from mmap
         _M_TRIM_THRESHOLD: 2**40,  # never trim the heap's free top while the run lasts
         _M_TOP_PAD: 64 * 2**20}  # grow the heap in 64 MB steps
# glibc's own defaults, set back afterwards (a fixed mmap threshold: glibc's dynamic one starts at 128 kB)
_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 128 * 1024,
             _M_MMAP_THRESHOLD: 128 * 1024}


def glibc_malloc() -> bool:
    """True when the C library is glibc with mallopt and malloc_trim (where `retained_memory` keeps memory)."""
    return _glibc() is not None


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt and malloc_trim exist), else None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def retained_memory() -> Iterator[None]:
    """Within the block, keep freed memory in the process (glibc and Arrow); give it back to the system after."""
    libc = _glibc()
    pool = pa.default_memory_pool()
    if libc is not None:
        for param, value in _KEEP.items():
            libc.mallopt(param, value)
        pa.set_memory_pool(pa.system_memory_pool())  # Arrow's buffers on the same reused heap
    huge_pages = numpy_huge_pages(False)
    try:
        yield
    finally:
        numpy_huge_pages(huge_pages)
        if libc is not None:
            pa.set_memory_pool(pool)
            for param, value in _DEFAULTS.items():
                libc.mallopt(param, value)
            libc.malloc_trim(0)


def numpy_huge_pages(enabled: bool) -> bool:
    """Turn numpy's madvise(MADV_HUGEPAGE) of large arrays on or off (the run-time form of NUMPY_MADVISE_HUGEPAGE);
    the setting before (True when this numpy has no such switch: nothing changes)."""
    switch = getattr(_np_multiarray, "_set_madvise_hugepage", None)  # private to numpy: looked up, not imported
    if switch is None:
        return True
    return bool(switch(enabled))
