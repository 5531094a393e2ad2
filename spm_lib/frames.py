"""Vectorised helpers where pandas 3 would fall back to per-value Python on big text columns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def _arrow_text(s: pd.Series | pd.Index) -> pa.Array | pa.ChunkedArray | None:
    """The pyarrow array behind a pyarrow-backed text column, None for any other column."""
    dtype = s.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        return pa.array(s.array)
    return None


def isin(s: pd.Series, values: Iterable[Any]) -> pd.Series:
    """`s.isin(values)` (same result), computed in pyarrow when both are text (pandas converts each value)."""
    arr = _arrow_text(s)
    if arr is None:
        return s.isin(values)
    wanted = values if isinstance(values, pd.Series | pd.Index) else pd.Index(
        list(values) if isinstance(values, set | frozenset | dict) else values)
    value_set = _arrow_text(wanted)
    if value_set is None:
        return s.isin(values)
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    hit = pc.is_in(arr, value_set=value_set.cast(arr.type), skip_nulls=False)
    return pd.Series(np.asarray(hit, dtype=bool), index=s.index, name=s.name)


# first bytes of the UTF-8 encodings of every Unicode white space character above ASCII (and U+FEFF)
_SPACE_LEADS = np.array([0xC2, 0xE1, 0xE2, 0xE3, 0xEF], dtype=np.uint8)


def _chunk_edges_clean(chunk: pa.Array) -> bool:
    """True when no valid value of a text chunk is empty or may start or end with white space (buffer-level)."""
    if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
        return False
    n = len(chunk)
    if n == 0 or chunk.null_count == n:
        return True
    _, off_buf, data_buf = chunk.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64 if pa.types.is_large_string(chunk.type) else np.int32)
    bounds: np.ndarray[Any, np.dtype[np.int64]] = offsets[chunk.offset: chunk.offset + n + 1].astype(np.int64)
    start, end = bounds[:-1], bounds[1:]
    if chunk.null_count:
        valid = np.asarray(chunk.is_valid(), dtype=bool)
        start, end = start[valid], end[valid]
    length = end - start
    if (length <= 0).any() or data_buf is None:
        return False
    data = np.frombuffer(data_buf, dtype=np.uint8)
    first, last = data[start], data[end - 1]
    if ((first <= 0x20) | (first == 0x7F) | np.isin(first, _SPACE_LEADS)).any():
        return False
    if ((last <= 0x20) | (last == 0x7F)).any():
        return False
    wide = last >= 0x80  # the last character is multi-byte: look at its lead byte (2 or 3 bytes back)
    if wide.any():
        s, e, ln = start[wide], end[wide], length[wide]
        lead2 = np.where(ln >= 2, data[np.maximum(e - 2, s)], 0)
        lead3 = np.where(ln >= 3, data[np.maximum(e - 3, s)], 0)
        if ((lead2 == 0xC2) | np.isin(lead3, _SPACE_LEADS[1:])).any():
            return False
    return True


def trimmed_already(s: pd.Series) -> bool:
    """True when stripping white space from text column `s` and blanking empty cells would change nothing.

    A fast sufficient test on the Arrow buffers (False may also mean "could not tell").
    """
    arr = _arrow_text(s)
    if arr is None:
        return False
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    return all(_chunk_edges_clean(c) for c in chunks)
