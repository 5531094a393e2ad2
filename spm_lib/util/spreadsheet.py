"""CSV that a spreadsheet opens safely: no text cell is ever run as a formula (the OWASP rule for CSV injection).

A text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with `'`, which spreadsheets
show and never evaluate. Numbers stay numbers (a negative amount is not text).
"""

from __future__ import annotations

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

__all__ = ["FORMULA_STARTS", "safe_cell", "to_safe_csv"]


def safe_cell(value: object) -> object:
    """`value`, with `'` in front when it is text a spreadsheet would read as a formula."""
    return f"'{value}" if isinstance(value, str) and value[:1] in FORMULA_STARTS else value


def to_safe_csv(df: pd.DataFrame) -> str:
    """`df` as CSV text (no index, `\\n` line ends) with every text cell made safe for a spreadsheet."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(safe_cell)
    return str(out.to_csv(index=False, lineterminator="\n"))
