"""The data contract: the canonical tables of SPEC.md §3, their columns and types, and `Dataset`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

DType = Literal["str", "float", "int", "date", "datetime", "bool"]

PandasDtype = Literal["string", "float64", "Int64", "datetime64[ns]", "boolean"]
PANDAS_DTYPES: dict[str, PandasDtype] = {
    "str": "string",
    "float": "float64",
    "int": "Int64",
    "date": "datetime64[ns]",
    "datetime": "datetime64[ns]",
    "bool": "boolean",
}


@dataclass(frozen=True)
class Column:
    """One contract column: its name, type and whether a table must have it."""

    name: str
    dtype: DType
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Table:
    """One contract table: its columns, its id column and whether a source must provide it."""

    name: str
    columns: tuple[Column, ...]
    key: str | None = None
    required: bool = False
    description: str = ""

    @property
    def column_names(self) -> list[str]:
        """Every contract column of this table, in order."""
        return [c.name for c in self.columns]

    @property
    def required_columns(self) -> list[str]:
        """Columns a source must provide for this table."""
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        """The column called `name`."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def _t(name: str, key: str | None, required: bool, description: str, *cols: Column) -> Table:
    return Table(name=name, key=key, required=required, description=description, columns=cols)


C = Column
CONTRACT: dict[str, Table] = {
    t.name: t
    for t in [
        _t("owners", "owner_id", True, "the owner hierarchy; manager_id empty at the top",
           C("owner_id", "str", True), C("manager_id", "str", True), C("name", "str"), C("email", "str"),
           C("level", "str"), C("valid_from", "date"), C("valid_to", "date"), C("active", "bool")),
        _t("opportunities", "opportunity_id", True, "deals, current state",
           C("opportunity_id", "str", True), C("owner_id", "str", True), C("account_id", "str"),
           C("name", "str"), C("stage", "str"), C("amount", "float", True), C("created_date", "date"),
           C("close_date", "date", True), C("is_closed", "bool"), C("is_won", "bool"),
           C("last_modified_date", "datetime"), C("product", "str"), C("lead_source", "str"),
           C("margin", "float"), C("cost", "float"), C("list_amount", "float"),
           C("forecast_category", "str"), C("next_step", "str")),
        _t("opportunity_history", None, False, "one row per change of an opportunity",
           C("opportunity_id", "str", True), C("changed_at", "datetime", True), C("stage", "str"),
           C("amount", "float"), C("close_date", "date")),
        _t("activities", "activity_id", False, "calls, emails, meetings, demos",
           C("activity_id", "str", True), C("owner_id", "str", True), C("date", "date", True),
           C("type", "str", True), C("opportunity_id", "str"), C("account_id", "str"), C("mode", "str")),
        _t("leads", "lead_id", False, "leads by channel",
           C("lead_id", "str", True), C("created_date", "date", True), C("channel", "str", True),
           C("owner_id", "str"), C("converted_opportunity_id", "str"), C("status", "str")),
        _t("accounts", "account_id", False, "customer accounts",
           C("account_id", "str", True), C("name", "str"), C("segment", "str"),
           C("customer_since", "date"), C("churned_on", "date")),
        _t("targets", None, False, "targets per owner, period label and KPI",
           C("owner_id", "str", True), C("period", "str", True), C("metric", "str", True),
           C("value", "float", True)),
        _t("forecasts", None, False, "the owner's committed forecast per period",
           C("owner_id", "str", True), C("period", "str", True), C("submitted_at", "datetime", True),
           C("amount", "float", True)),
        _t("surveys", None, False, "customer satisfaction / recommendation scores 0-10",
           C("account_id", "str", True), C("date", "date", True), C("score", "float", True)),
        _t("costs", None, False, "cost of sales per owner and period",
           C("owner_id", "str", True), C("period", "str", True), C("amount", "float", True)),
    ]
}
del C

REQUIRED_TABLES = [name for name, t in CONTRACT.items() if t.required]


@dataclass
class Dataset:
    """The contract tables of one source after mapping and validation, with what is missing."""

    tables: dict[str, pd.DataFrame]
    findings: pd.DataFrame = field(default_factory=lambda: pd.DataFrame())
    notes: list[str] = field(default_factory=list)

    def has(self, table: str, column: str | None = None) -> bool:
        """True when the table (and column) is present with at least one non-empty value."""
        df = self.tables.get(table)
        if df is None:
            return False
        if column is None:
            return True
        return column in df.columns and bool(df[column].notna().any())

    def table(self, name: str) -> pd.DataFrame:
        """The contract table `name` (an empty frame with the contract columns when absent)."""
        if name in self.tables:
            return self.tables[name]
        return empty_table(name)

    def missing(self, needs: list[str]) -> list[str]:
        """Which of `needs` ('table' or 'table.column') are not available."""
        out = []
        for need in needs:
            table, _, column = need.partition(".")
            if not self.has(table, column or None):
                out.append(need)
        return out


def empty_table(name: str) -> pd.DataFrame:
    """An empty frame with the contract columns and dtypes of table `name`."""
    t = CONTRACT[name]
    return pd.DataFrame({c.name: pd.Series([], dtype=PANDAS_DTYPES[c.dtype]) for c in t.columns})


def typed(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Cast the contract columns present in `df` to the contract dtypes of table `name` (other columns dropped)."""
    t = CONTRACT[name]
    out = {}
    for c in t.columns:
        if c.name in df.columns:
            s = df[c.name]
            if c.dtype in ("date", "datetime"):
                s = pd.to_datetime(s)
                s = s.dt.normalize() if c.dtype == "date" else s
            out[c.name] = s.astype(PANDAS_DTYPES[c.dtype])
    return pd.DataFrame(out, index=df.index)
