"""Data-quality findings: what is wrong with which rows, collected all at once (never silently dropped)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from spm_lib.errors import DataError, format_ids

Severity = Literal["fatal", "warning", "info"]
FINDING_COLUMNS = ["table", "column", "check", "severity", "count", "ids", "message", "fix"]


@dataclass(frozen=True)
class Finding:
    """One problem found in the data: where, how many rows, which ids, and how to fix it."""

    table: str
    column: str | None
    check: str
    severity: Severity
    ids: tuple[str, ...]
    message: str
    fix: str
    count: int = -1  # rows concerned; defaults to len(ids)

    @property
    def n(self) -> int:
        """Number of rows concerned."""
        return self.count if self.count >= 0 else len(self.ids)

    def describe(self) -> str:
        """One readable paragraph: table.column, what, which ids, the fix."""
        where = f"{self.table}.{self.column}" if self.column else self.table
        ids = f" — ids: {format_ids(self.ids)}" if self.ids else ""
        return f"[{self.severity}] {where}: {self.message} ({self.n} rows){ids}. Fix: {self.fix}"


@dataclass
class Findings:
    """An ordered collection of findings that can be rendered, counted and raised."""

    items: list[Finding] = field(default_factory=list)

    def add(self, table: str, column: str | None, check: str, severity: Severity, ids: Iterable[object],
            message: str, fix: str, count: int = -1) -> None:
        """Record one finding (ignored when it concerns no row and no count)."""
        id_tuple = tuple(str(i) for i in ids)
        if not id_tuple and count <= 0:
            return
        self.items.append(Finding(table, column, check, severity, id_tuple, message, fix, count))

    def extend(self, other: Findings) -> None:
        """Append every finding of `other`."""
        self.items.extend(other.items)

    def fatal(self) -> list[Finding]:
        """The findings that make the data unusable."""
        return [f for f in self.items if f.severity == "fatal"]

    def raise_if_fatal(self) -> None:
        """Raise DataError listing every fatal finding, if there is any."""
        fatal = self.fatal()
        if fatal:
            raise DataError("The data cannot be used until these are fixed:\n"
                            + "\n".join("  " + f.describe() for f in fatal))

    def to_frame(self) -> pd.DataFrame:
        """The findings as a table (one row per finding) for reports and tests."""
        rows = [{"table": f.table, "column": f.column, "check": f.check, "severity": f.severity,
                 "count": f.n, "ids": list(f.ids), "message": f.message, "fix": f.fix} for f in self.items]
        return pd.DataFrame(rows, columns=FINDING_COLUMNS)

    def __len__(self) -> int:
        return len(self.items)
