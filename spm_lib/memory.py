"""Memory reuse while a cube is computed: freed memory is kept in the process for the next allocation.

A cube run allocates and frees gigabytes of large arrays. By default glibc hands every large block back to the
operating system on free (mmap/munmap, heap trimming), and so does Arrow's allocator, so the next array of that
size is fresh memory again: each of its pages is faulted in and zeroed by the kernel. On virtual machines whose
host takes free guest memory back (free page reporting), a fresh page costs a fault on the host as well.
`retained_memory()` keeps freed blocks in the process for the length of the run and gives them back at its end.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

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
    try:
        yield
    finally:
        if libc is not None:
            pa.set_memory_pool(pool)
            for param, value in _DEFAULTS.items():
                libc.mallopt(param, value)
            libc.malloc_trim(0)
