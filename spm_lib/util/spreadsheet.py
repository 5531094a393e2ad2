"""Spreadsheet exports that open safely: no text cell is ever run as a formula (the OWASP rule for CSV injection).

CSV: a text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with `'`, which
spreadsheets show and never evaluate. XLSX: such a cell is stored as text (never as a formula) and marked with the
quote prefix, so editing it does not turn it into one either; characters XML cannot hold are dropped. Numbers stay
numbers (a negative amount is not text).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
SHEET_TITLE_MAX = 31  # Excel's limit on a sheet's name
WIDTH_MAX = 60  # characters: longer text wraps in the cell instead of widening the column
_NOT_IN_TITLE = re.compile(r"[\[\]:*?/\\]")
_NOT_IN_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # what openpyxl refuses (IllegalCharacterError)

__all__ = ["FORMULA_STARTS", "safe_cell", "to_safe_csv", "to_safe_xlsx"]


def safe_cell(value: object) -> object:
    """`value`, with `'` in front when it is text a spreadsheet would read as a formula."""
    return f"'{value}" if isinstance(value, str) and value[:1] in FORMULA_STARTS else value


def _text_columns(df: pd.DataFrame) -> list[Any]:
    return [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]


def to_safe_csv(df: pd.DataFrame) -> str:
    """`df` as CSV text (no index, `\\n` line ends) with every text cell made safe for a spreadsheet."""
    out = df.copy()
    for column in _text_columns(out):
        out[column] = out[column].map(safe_cell)
    return str(out.to_csv(index=False, lineterminator="\n"))


def _excel_value(value: object) -> object:
    """A text column's cell as Excel takes it: text without the characters XML cannot hold, a list as its text."""
    if isinstance(value, str):
        return _NOT_IN_XML.sub("", value)
    return value if value is None or pd.api.types.is_scalar(value) else _NOT_IN_XML.sub("", str(value))


def _excel_ready(df: pd.DataFrame) -> pd.DataFrame:
    """`df` as Excel takes it: dates without time zone (as UTC), text cells by `_excel_value`."""
    out = df.copy()
    text = set(_text_columns(out))
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype):
            out[column] = out[column].dt.tz_convert("UTC").dt.tz_localize(None)
        elif column in text:
            out[column] = out[column].map(_excel_value)
    return out


def _sheet_titles(names: list[str]) -> list[str]:
    """Unique sheet names Excel accepts (at most 31 characters, none of []:*?/\\)."""
    titles: list[str] = []
    for name in names:
        base = _NOT_IN_TITLE.sub(" ", name).strip()[:SHEET_TITLE_MAX].strip() or "Sheet"
        title, n = base, 1
        while title.lower() in (t.lower() for t in titles):
            n += 1
            title = f"{base[:SHEET_TITLE_MAX - len(str(n)) - 1]} {n}"
        titles.append(title)
    return titles


def _finish_sheet(ws: Any, df: pd.DataFrame, links: Mapping[str, Callable[[Any], str]],
                  number_formats: Mapping[str, str]) -> None:
    """Bold frozen header with a filter, fitted widths, dates as dates, `number_formats` and `links` on their
    columns, and formula-like text kept as text."""
    from openpyxl.styles import Font  # here: openpyxl takes ~0.7 s to import; only the xlsx export needs it
    from openpyxl.utils import get_column_letter

    ws.freeze_panes = "A2"
    if len(df.columns):
        ws.auto_filter.ref = ws.dimensions
    for i, column in enumerate(df.columns, start=1):
        values = df[column]
        shown = [len(str(column))] + [len(str(v)) for v in values.head(500) if not pd.isna(v)]
        ws.column_dimensions[get_column_letter(i)].width = min(WIDTH_MAX, max(shown) + 2)
        cells = [row[0] for row in ws.iter_rows(min_row=2, min_col=i, max_col=i)]
        shape = number_formats.get(str(column))
        if pd.api.types.is_datetime64_any_dtype(values):
            timed = bool((values.dropna() != values.dropna().dt.normalize()).any())
            shape = "yyyy-mm-dd hh:mm" if timed else "yyyy-mm-dd"
        for cell in cells if shape else ():
            cell.number_format = shape
        link = links.get(str(column))
        if link is not None:
            for cell, value in zip(cells, values, strict=True):
                if not pd.isna(value):
                    cell.hyperlink = link(value)
                    cell.style = "Hyperlink"
    bold = Font(bold=True)
    for cell in ws[1]:
        cell.font = bold
    for row in ws.iter_rows():
        for cell in row:
            if isinstance(cell.value, str) and cell.value[:1] in FORMULA_STARTS:
                cell.data_type = "s"  # openpyxl reads a leading '=' as a formula: store it as the text it is
                cell.quotePrefix = True  # and editing the cell keeps it text


def to_safe_xlsx(sheets: Mapping[str, pd.DataFrame], path: str | Path,
                 links: Mapping[str, Callable[[Any], str]] | None = None,
                 number_formats: Mapping[str, str] | None = None) -> list[str]:
    """Write each frame as one sheet of an XLSX workbook at `path` (openpyxl through pandas): bold header row frozen
    on top with a filter, column widths fitted to the text, dates as YYYY-MM-DD, no text cell run as a formula; the
    cells of a column named in `links` link to `links[column](value)`, those of a column named in `number_formats`
    take its Excel number format (e.g. attainment: "0%"). Returns the sheet names written."""
    titles = _sheet_titles(list(sheets))
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for title, df in zip(titles, sheets.values(), strict=True):
            ready = _excel_ready(df)
            ready.to_excel(writer, sheet_name=title, index=False)
            _finish_sheet(writer.sheets[title], ready, links or {}, number_formats or {})
    return titles
