"""memory.retained_memory: freed blocks stay in the process during a run and go back to the system after it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from spm_lib.util import memory

pytestmark = pytest.mark.skipif(not memory.glibc_malloc(), reason="needs glibc's mallopt")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_freed_memory_is_kept_during_the_run_and_returned_after() -> None:
    before = pa.default_memory_pool().backend_name
    with memory.retained_memory():
        assert pa.default_memory_pool().backend_name == "system"
        assert memory.numpy_huge_pages(False) is False  # numpy asks for no huge pages during the run
        base = _rss_mb()
        block = np.ones(50 * 2**20 // 8)  # 50 MB, touched
        del block
        kept = _rss_mb() - base
        assert kept > 40  # still resident: the next array of that size reuses it
    assert pa.default_memory_pool().backend_name == before
    assert memory.numpy_huge_pages(True) is True  # and as before after it
    assert _rss_mb() - base < 10  # trimmed at the end of the run


def test_without_it_a_freed_large_block_goes_back_at_once() -> None:
    base = _rss_mb()
    block = np.ones(50 * 2**20 // 8)
    del block
    assert _rss_mb() - base < 10
