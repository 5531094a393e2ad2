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
