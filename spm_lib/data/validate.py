"""Validate contract tables against the data contract: every problem at once, as findings.

`validate` never stops at the first problem (pandera's lazy mode is the model): column presence and dtypes go
through a pandera schema per table, relational checks (owners, stages, references, ranges) are vectorised pandas.
Fatal findings make the data unusable; rows that cannot be used are dropped and every dropped row is counted in a
warning that says so. `check_report` renders the findings of the configured source for `spm data check`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from spm_lib.config import Config
from spm_lib.data import consistency
from spm_lib.data.mapping import row_ids
from spm_lib.data.quality import Finding, Findings
from spm_lib.domain.contract import CONTRACT, PANDAS_DTYPES, REQUIRED_TABLES
from spm_lib.domain.org import HierarchyScreen, hierarchy_problems, overlapping_owners
from spm_lib.domain.stages import Stages
from spm_lib.errors import SpmError, did_you_mean, format_ids
from spm_lib.metrics import checks, kpis
from spm_lib.util.frames import isin

# a period label: month 2026-10, fiscal quarter FY2026-Q3, fiscal year FY2026, ISO week 2026-W07
PERIOD_LABEL = r"\d{4}-(?:0[1-9]|1[0-2])|FY\d{4}-Q[1-4]|FY\d{4}|\d{4}-W(?:0[1-9]|[1-4]\d|5[0-3])"
OWNED_TABLES = ("activities", "leads", "targets", "forecasts", "costs")  # rows attributed to an owner
PERIOD_TABLES = ("targets", "forecasts", "costs")
# what a table or column enables besides the KPIs and trust checks that declare it in `needs`
ALSO_NEEDED_BY: dict[str, tuple[str, ...]] = {
    "opportunity_history": ("as-of reconstruction",),
    "owners.email": ("sending reports by email",),
    "owners.level": ("level-specific KPIs and thresholds",),
    "accounts": ("account names/segments",),
}
# findings about a whole table or column, not about rows: the report shows no row count for them
STRUCTURAL_CHECKS = frozenset({"table_missing", "table_absent", "table_empty", "unreadable_layout", "unreadable",
                               "column_missing", "column_absent", "no_top_owner"})
REPORT_WIDTH = 100
SOURCE_FIX = "config/source.yml"


# ---------------------------------------------------------------- validate
def validate(tables: dict[str, pd.DataFrame], cfg: Config, findings: Findings) -> dict[str, pd.DataFrame]:
    """Check contract tables, record every problem in `findings`, return the tables to use (unusable rows dropped)."""
    out = {name: _typed(name, df, findings) if name in CONTRACT else df for name, df in tables.items()}
    known = _owner_ids(out.get("owners"))
    # not util.tasks.in_background: one worker runs the queued masks in order and cancels the unasked ones
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spm-validate") as pool:
        ahead = _start_references(out, known, pool)
        try:
            _check_tables_present(out, findings)
            for name, df in out.items():
                if name in CONTRACT:
                    _check_columns(name, df, findings)
                    consistency.check_finite(name, df, findings)
            _check_rows(out, known, cfg, findings, ahead)
        finally:
            ahead.cancel()
    return out


def _check_rows(out: dict[str, pd.DataFrame], known: set[str] | None, cfg: Config, findings: Findings,
                ahead: _Ahead) -> None:
    """The checks of owners and rows (in `out`, unusable rows dropped), in the order their findings are listed."""
    owners = out.get("owners")
    if owners is not None and {"owner_id", "manager_id"} <= set(owners.columns):
        _check_owners(owners, findings)
    if "opportunities" in out:
        out["opportunities"] = _check_opportunities(out["opportunities"], known, cfg, findings, ahead)
    for name in OWNED_TABLES:
        if name in out and known is not None and "owner_id" in out[name].columns:
            out[name] = _drop_unknown_owners(name, out[name], known, findings, ahead)
    for name in PERIOD_TABLES:
        if name in out and "period" in out[name].columns:
            out[name] = _drop_bad_periods(name, out[name], findings)
    if "opportunity_history" in out and "opportunities" in out:
        out["opportunity_history"] = _drop_unknown_opportunities(out["opportunity_history"], out["opportunities"],
                                                                 findings, ahead)
        out["opportunity_history"] = consistency.relabel_history(out["opportunity_history"], out["opportunities"],
                                                                 cfg.stages)
    if "surveys" in out and "score" in out["surveys"].columns:
        out["surveys"] = _drop_bad_scores(out["surveys"], findings)
    if owners is not None and "opportunities" in out:
        _agents_without_deals(owners, out["opportunities"], findings)


class _Ahead:
    """Reference masks computed by a worker thread while other checks run (pyarrow hashes without the GIL); a
    mask is used only when asked for with the very arguments it was computed from, else computed again."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.jobs: dict[str, tuple[tuple[Any, ...], Future[pd.Series]]] = {}

    def start(self, key: str, fn: Callable[..., pd.Series], *args: Any) -> None:
        """Start computing `fn(*args)` under `key`."""
        self.jobs[key] = (args, self.pool.submit(fn, *args))

    def get(self, key: str, fn: Callable[..., pd.Series], *args: Any) -> pd.Series:
        """`fn(*args)`, taken from the job started under `key` when that had the same arguments (identical)."""
        job = self.jobs.pop(key, None)
        if job is None:
            return fn(*args)
        started, future = job
        if len(started) == len(args) and all(a is b for a, b in zip(started, args, strict=True)):
            return future.result()
        future.cancel()  # computed from other frames (rows were dropped since): not used
        return fn(*args)

    def cancel(self) -> None:
        """Drop the jobs nobody asked for (not started ones do not run)."""
        for _, future in self.jobs.values():
            future.cancel()
        self.jobs.clear()


def _start_references(out: dict[str, pd.DataFrame], known: set[str] | None, pool: ThreadPoolExecutor) -> _Ahead:
    """Start the owner and opportunity reference masks of the typed tables, in the order they are needed."""
    ahead = _Ahead(pool)
    owned = [name for name in ("opportunities", *OWNED_TABLES)
             if known is not None and name in out and "owner_id" in out[name].columns]
    if "opportunities" in owned:
        ahead.start("opportunities", _known_owner, out["opportunities"], known)
    history, opps = out.get("opportunity_history"), out.get("opportunities")
    if history is not None and opps is not None and "opportunity_id" in history.columns \
            and "opportunity_id" in opps.columns:
        ahead.start("opportunity_history", _known_opportunity, history, opps)
    for name in owned[1:] if "opportunities" in owned else owned:
        ahead.start(name, _known_owner, out[name], known)
    return ahead


def _typed(name: str, df: pd.DataFrame, findings: Findings) -> pd.DataFrame:
    """The table with contract dtypes (pandera, lazily); columns whose values cannot be typed are left out."""
    t = CONTRACT[name]
    present = [c for c in t.columns if c.name in df.columns]
    if all(_has_dtype(df[c.name], PANDAS_DTYPES[c.dtype]) for c in present):
        # already typed by the mapping: nothing can fail, so do only what pandera's coercion would do
        casts = {c.name: _coerced(PANDAS_DTYPES[c.dtype]) for c in present
                 if _coerced(PANDAS_DTYPES[c.dtype]) != df[c.name].dtype}
        return df.astype(casts) if casts else df
    schema = pa.DataFrameSchema({c.name: pa.Column(PANDAS_DTYPES[c.dtype], nullable=True, required=False,
                                                   coerce=True) for c in t.columns if c.name in df.columns})
    try:
        return schema.validate(df, lazy=True)
    except SchemaErrors as e:
        cases = e.failure_cases
    broken = sorted(str(c) for c in cases["column"].dropna().unique())
    cases = cases[cases["column"].notna() & cases["check"].astype(str).str.startswith("coerce_dtype")]
    ids = row_ids(df, name)
    for column, bad in cases.groupby("column", sort=True):
        positions = df.index.get_indexer(pd.Index(bad["index"].dropna()))
        expected = PANDAS_DTYPES[t.column(str(column)).dtype]
        examples = ", ".join(repr(v) for v in bad["failure_case"].drop_duplicates().head(3))
        findings.add(name, str(column), "wrong_type", "fatal", ids.iloc[positions[positions >= 0]],
                     f"values cannot be read as {expected}, e.g. {examples}",
                     f"fix the values, or set the date/number format in {SOURCE_FIX} tables.{name}")
    return schema.remove_columns(broken).validate(df.drop(columns=broken))


@cache
def _coerced(dtype: str) -> np.dtype[Any] | pd.api.extensions.ExtensionDtype:
    """The dtype pandera's coercion gives a column of dtype `dtype` (pandas 3: "string" becomes `str`)."""
    empty = pd.DataFrame({"x": pd.Series([], dtype=dtype)})
    schema = pa.DataFrameSchema({"x": pa.Column(dtype, nullable=True, required=False, coerce=True)})
    return schema.validate(empty)["x"].dtype


def warm_up() -> None:
    """Work out the coercion of every contract dtype ahead (pandera's first schema is slow to build)."""
    for dtype in dict.fromkeys(PANDAS_DTYPES.values()):
        _coerced(dtype)


def _has_dtype(column: pd.Series, dtype: str) -> bool:
    """True when `column` already has exactly the contract dtype `dtype` (storage and missing-value marker too)."""
    return str(column.dtype) == dtype and column.dtype == pd.api.types.pandas_dtype(dtype)


def _check_tables_present(tables: dict[str, pd.DataFrame], findings: Findings) -> None:
    """Fatal for a required table that is missing, info (with what it enables) for an absent optional one."""
    reported = {f.table for f in findings.items if f.check in ("table_absent", "unreadable_layout")}
    for name in CONTRACT:
        if name in tables and name in REQUIRED_TABLES and tables[name].empty:
            findings.add(name, None, "table_empty", "fatal", [], f"required table {name} has no rows",
                         f"export its rows; if the file has them, check skip_rows and drop_rows_matching in "
                         f"{SOURCE_FIX} tables.{name} (they may drop every row)", count=1)
        if name in tables or name in reported:
            continue
        if name in REQUIRED_TABLES:
            findings.add(name, None, "table_missing", "fatal", [], f"required table {name} is missing",
                         f"add it to {SOURCE_FIX} tables.{name} (source: the file/table that holds it)", count=1)
        else:
            users = _consumers(name) or [CONTRACT[name].description]
            findings.add(name, None, "table_absent", "info", [],
                         f"no {name}: {_enables(users)} not available",
                         f"to enable them, add the table to the source and to {SOURCE_FIX} tables.{name}",
                         count=1)


def _check_columns(name: str, df: pd.DataFrame, findings: Findings) -> None:
    """Fatal for missing required columns, info for absent/empty optional columns that something needs."""
    t = CONTRACT[name]
    have = set(df.columns)
    missing = _missing_required(name, have)
    for col in missing:
        needs = "stage (or both is_closed and is_won)" if col == "stage" else col
        findings.add(name, col, "column_missing", "fatal", [],
                     f"required column {needs} is missing; the table has: {', '.join(df.columns) or 'no columns'}",
                     f"map it in {SOURCE_FIX} tables.{name}.columns.{col}: <source column>", count=1)
    for c in t.columns:
        if c.required or c.name in missing or (c.name in have and df[c.name].notna().any()):
            continue
        users = _consumers(f"{name}.{c.name}")
        if users:
            state = "is empty" if c.name in have else "is absent"
            findings.add(name, c.name, "column_absent", "info", [],
                         f"optional column {c.name} {state}: {_enables(users)} not available",
                         f"map it in {SOURCE_FIX} tables.{name}.columns.{c.name} if the source has it",
                         count=max(len(df), 1))


def _missing_required(name: str, have: set[str]) -> list[str]:
    """Required columns of table `name` not in `have` (opportunities: stage, unless is_closed and is_won)."""
    required = list(CONTRACT[name].required_columns)
    if name == "opportunities":
        required.insert(2, "stage")
        if {"is_closed", "is_won"} <= have:
            required.remove("stage")
    return [c for c in required if c not in have]


@cache
def _consumer_map() -> dict[str, tuple[str, ...]]:
    """'table' or 'table.column' -> ids of the KPIs and trust checks that need it (plus ALSO_NEEDED_BY)."""
    users: dict[str, list[str]] = {k: list(v) for k, v in ALSO_NEEDED_BY.items()}
    decls = [(k.id, k.needs) for k in kpis.REGISTRY.values() if not k.hidden]
    decls += list(checks.NEEDS.items())
    for ident, needs in decls:
        for need in needs:
            users.setdefault(need, []).append(ident)
    return {k: tuple(dict.fromkeys(v)) for k, v in users.items()}


def _consumers(need: str) -> list[str]:
    """What needs `need`: a column's users, or for a table every user of the table or any of its columns."""
    found = _consumer_map()
    if "." in need:
        return list(found.get(need, ()))
    return list(dict.fromkeys(u for k, v in found.items() if k == need or k.startswith(need + ".") for u in v))


def _enables(users: list[str]) -> str:
    """'X, Y and Z are' / 'X is': what is lost without a table or column."""
    text = users[0] if len(users) == 1 else ", ".join(users[:-1]) + " and " + users[-1]
    return text + (" is" if len(users) == 1 else " are")


# ---------------------------------------------------------------- owners
def _owner_ids(owners: pd.DataFrame | None) -> set[str] | None:
    """The owner ids of the owners table, None when it (or its owner_id) is missing."""
    if owners is None or "owner_id" not in owners.columns:
        return None
    return set(owners["owner_id"].dropna().astype(str))


def _check_owners(owners: pd.DataFrame, findings: Findings) -> None:
    """Fatal: owners without id, duplicate ids, inverted validity, unknown managers, cycles, no top owner."""
    fix_manager = "give each owner the owner_id of their manager (leave manager_id empty at the top)"
    no_id = owners["owner_id"].isna()
    findings.add("owners", "owner_id", "missing_id", "fatal", row_ids(owners, "owners")[no_id],
                 "rows without owner_id", "give every owner an id")
    df = _with_validity(owners[~no_id])
    inverted = df["valid_from"].notna() & df["valid_to"].notna() & (df["valid_from"] > df["valid_to"])
    findings.add("owners", "valid_from", "inverted_validity", "fatal", df.loc[inverted, "owner_id"],
                 "valid_from is after valid_to", "fix the dates (both days are inclusive)")
    overlap = overlapping_owners(df[~inverted])
    findings.add("owners", "owner_id", "duplicate_id", "fatal", overlap,
                 "owner_id appears in several rows valid on the same day",
                 "keep one row per owner, or give the rows non-overlapping valid_from/valid_to "
                 "(a team move ends the old row the day before the new one starts)")
    unknown: set[str] = set()
    cycles: dict[frozenset[str], list[str]] = {}
    checked = df[~inverted & ~df["owner_id"].isin(overlap)]
    screen = HierarchyScreen(checked["owner_id"], checked["manager_id"])
    for valid in _snapshot_masks(checked):
        if not screen.may_fail(valid):
            continue  # no unknown manager and no cycle on that day
        bad, found = hierarchy_problems(checked[valid])
        unknown.update(bad)
        cycles.update({frozenset(c): c for c in found})
    if unknown:
        rows = df[df["owner_id"].isin(sorted(unknown))]
        strangers = rows[~rows["manager_id"].isin(df["owner_id"])]  # else: a manager not valid on those days
        managers = sorted((strangers if len(strangers) else rows)["manager_id"].dropna().astype(str).unique())
        hint = did_you_mean(managers[0], df["owner_id"].astype(str).unique()) if managers else ""
        findings.add("owners", "manager_id", "unknown_manager", "fatal", sorted(unknown),
                     f"manager_id is not an owner_id (valid on the same days): {format_ids(managers, 5)}{hint}",
                     fix_manager)
    for cycle in cycles.values():
        findings.add("owners", "manager_id", "cycle", "fatal", cycle,
                     f"the hierarchy has a cycle: {' -> '.join([*cycle, cycle[0]])}",
                     "break it by giving one of these owners another manager (empty at the top)")
    current = df.assign(_vf=df["valid_from"].fillna(pd.Timestamp.min)).sort_values(
        ["owner_id", "_vf"], kind="stable").drop_duplicates("owner_id", keep="last")
    if len(current) and current["manager_id"].notna().all():
        findings.add("owners", "manager_id", "no_top_owner", "fatal", [],
                     "every owner has a manager, so no owner sees the whole company", fix_manager,
                     count=len(current))
    consistency.check_single_top(current, findings)
    consistency.check_emails(owners, findings)


def _with_validity(owners: pd.DataFrame) -> pd.DataFrame:
    """owner_id, manager_id, valid_from, valid_to (NaT when the table has no validity columns)."""
    df = owners[["owner_id", "manager_id"]].astype("string")
    for col in ("valid_from", "valid_to"):
        df[col] = owners[col] if col in owners.columns else pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]")
    return df


def _snapshot_masks(df: pd.DataFrame) -> list[np.ndarray]:
    """Which rows are valid on each day the hierarchy changes (all rows when it has no validity dates)."""
    if df["valid_from"].isna().all() and df["valid_to"].isna().all():
        return [np.ones(len(df), dtype=bool)]
    vf, vt = df["valid_from"].fillna(pd.Timestamp.min), df["valid_to"].fillna(pd.Timestamp.max)
    days = pd.concat([vf, df["valid_to"].dropna() + pd.Timedelta(days=1)]).drop_duplicates()
    start, end = vf.to_numpy(), vt.to_numpy()
    return [(start <= day) & (end >= day) for day in days.to_numpy()]  # a loop over change days, not rows


# ---------------------------------------------------------------- opportunities
def _check_opportunities(opps: pd.DataFrame, known: set[str] | None, cfg: Config,
                         findings: Findings, ahead: _Ahead) -> pd.DataFrame:
    """Drop unidentifiable, duplicate and unattributable deals (counted); flag stages, amounts and dates."""
    t = "opportunities"
    if "opportunity_id" in opps.columns:
        opps = _drop(t, opps, "opportunity_id", "missing_id", opps["opportunity_id"].isna(),
                     "rows without opportunity_id cannot be identified", "give every opportunity an id", findings)
        opps = _drop_duplicate_opportunities(opps, findings)
    if known is not None and "owner_id" in opps.columns:
        opps = _drop_unknown_owners(t, opps, known, findings, ahead)
    ids = row_ids(opps, t)
    if "stage" in opps.columns:
        _check_stages(opps, ids, cfg, findings)
        opps = consistency.settle_stage_flags(opps, ids, cfg.stages, findings)
    consistency.check_plausible_amounts(opps, ids, cfg, findings)
    closed, won = _closed_won(opps, cfg)
    amount = opps["amount"] if "amount" in opps.columns else None
    close = opps["close_date"] if "close_date" in opps.columns else None
    if amount is not None:
        neg = (amount < 0).fillna(False)
        findings.add(t, "amount", "negative_amount", "warning", ids[neg], "negative amount (kept as it is: it "
                     "lowers bookings and pipeline)", "correct the amount in the CRM (credit notes are no deals)")
        no_amount = won & amount.isna()
        findings.add(t, "amount", "won_without_amount", "warning", ids[no_amount], "won deal without amount "
                     "(kept: counted in deals_won, adds nothing to bookings)", "enter the amount in the CRM")
    if close is not None:
        no_close = closed & close.isna()
        findings.add(t, "close_date", "closed_without_close_date", "warning", ids[no_close],
                     "closed deal without close_date (kept, but it falls in no period: no closed-deal KPI "
                     "counts it)", "enter the close date in the CRM")
    if close is not None and "created_date" in opps.columns:
        early = (close < opps["created_date"]).fillna(False)
        findings.add(t, "close_date", "close_before_created", "warning", ids[early],
                     "close_date before created_date (kept; its sales cycle is negative)",
                     "correct either date in the CRM")
    if amount is not None and close is not None:
        gaps = ~closed & (amount.isna() | close.isna())
        findings.add(t, "amount", "open_missing_fields", "info", ids[gaps],
                     "open opportunity without amount or close date (kept: adds nothing to pipeline value or "
                     "falls in no forecast period; trust check opps_missing_fields lists them)",
                     "ask the owners to fill in amount and close date")
    if "account_id" in opps.columns and opps["account_id"].notna().any():
        findings.add(t, "account_id", "missing_account", "info", ids[opps["account_id"].isna()],
                     "opportunity without account_id (kept; not counted in expansion KPIs)",
                     "link the deal to an account in the CRM")
    return opps


def _drop_duplicate_opportunities(opps: pd.DataFrame, findings: Findings) -> pd.DataFrame:
    """Fatal for duplicate opportunity ids; one row per id is kept (the latest last_modified_date, else the last
    row) so the other checks count each deal once."""
    if opps["opportunity_id"].is_unique:  # the usual case, found in one hashing pass
        return opps
    rows = np.flatnonzero(opps["opportunity_id"].duplicated(keep=False).to_numpy(dtype=bool))  # only these sort
    order = pd.DataFrame({"opportunity_id": opps["opportunity_id"].iloc[rows].to_numpy(), "_pos": rows})
    by = ["_pos"]
    if "last_modified_date" in opps.columns:
        order["_lmd"] = opps["last_modified_date"].iloc[rows].to_numpy()
        by = ["_lmd", "_pos"]
    order = order.sort_values(by, kind="stable", na_position="first")
    drop = np.zeros(len(opps), dtype=bool)
    drop[order.loc[order.duplicated("opportunity_id", keep="last"), "_pos"].to_numpy()] = True
    dup_ids = sorted(opps.loc[drop, "opportunity_id"].astype(str).unique())
    findings.add("opportunities", "opportunity_id", "duplicate_id", "fatal", dup_ids,
                 f"opportunity_id appears in several rows: a deal must have one row, else its amount counts twice "
                 f"or an old version of it is used ({int(drop.sum())} duplicate rows dropped for the other checks, "
                 f"keeping the latest last_modified_date, else the last row)",
                 f"remove the duplicates from the export, or map opportunity_id in {SOURCE_FIX} "
                 f"tables.opportunities.columns to the column that is unique per deal", count=int(drop.sum()))
    return opps[~drop] if len(rows) else opps


def _check_stages(opps: pd.DataFrame, ids: pd.Series, cfg: Config, findings: Findings) -> None:
    """Fatal for each stage value that is not a configured stage, with the nearest configured one."""
    allowed = cfg.stages.all_names
    stage = opps["stage"]
    bad = stage.notna() & ~stage.isin(allowed)
    for value in sorted(stage[bad].astype(str).unique()):
        findings.add("opportunities", "stage", "unknown_stage", "fatal", ids[bad & (stage == value)],
                     f"stage {value!r} is not a configured stage{did_you_mean(value, allowed)}",
                     f"map it in config/source.yml tables.opportunities.values.stage (e.g. {value!r}: <stage>), "
                     f"or add it to config/stages.yml; configured: {', '.join(allowed)}")


def _closed_won(opps: pd.DataFrame, cfg: Config) -> tuple[pd.Series, pd.Series]:
    """(closed, won) as plain booleans: the flags when present, else derived from the configured stages."""
    stage = opps["stage"] if "stage" in opps.columns else pd.Series(pd.NA, index=opps.index, dtype="string")
    rule = Stages.of(cfg.stages)
    won = opps["is_won"] if "is_won" in opps.columns else pd.Series(rule.is_won(stage), index=opps.index)
    closed = (opps["is_closed"] if "is_closed" in opps.columns
              else pd.Series(rule.is_closed(stage, generic=True), index=opps.index))
    won = won.astype("boolean").fillna(False).astype(bool)
    return closed.astype("boolean").fillna(False).astype(bool) | won, won


# ---------------------------------------------------------------- references and ranges (drop + count)
def _drop(table: str, df: pd.DataFrame, column: str, check: str, bad: pd.Series, message: str, fix: str,
          findings: Findings) -> pd.DataFrame:
    """Drop the rows where `bad` holds, recording them (by id) in one warning that says they were dropped."""
    bad = bad.astype("boolean").fillna(True).astype(bool)  # an undecidable row cannot be used either
    if not bad.any():
        return df
    findings.add(table, column, check, "warning", row_ids(df, table)[bad], f"{message}; these rows are dropped",
                 fix)
    return df[~bad]


def _drop_unknown_owners(table: str, df: pd.DataFrame, known: set[str], findings: Findings,
                         ahead: _Ahead) -> pd.DataFrame:
    """Drop rows whose owner_id is not an owner (empty too, except in leads where the owner is optional)."""
    owner = df["owner_id"]
    bad = ~ahead.get(table, _known_owner, df, known)
    if table == "leads":
        bad &= owner.notna()
    values = sorted(owner[bad].dropna().astype(str).unique())
    hint = did_you_mean(values[0], known) if values else ""
    shown = ", ".join(filter(None, [format_ids(values, 5), "empty" if owner[bad].isna().any() else ""]))
    return _drop(table, df, "owner_id", "unknown_owner", bad,
                 f"owner_id not in owners ({shown}{hint}), so the rows cannot be attributed to anyone",
                 "add the owners to the owners table, or correct owner_id in the source", findings)


def _known_owner(df: pd.DataFrame, known: set[str]) -> pd.Series:
    """True where the row's owner_id is one of the `known` owner ids."""
    return df["owner_id"].isin(sorted(known))


def _drop_unknown_opportunities(history: pd.DataFrame, opps: pd.DataFrame, findings: Findings,
                                ahead: _Ahead) -> pd.DataFrame:
    """Drop history rows whose opportunity is not in the (kept) opportunities."""
    if "opportunity_id" not in history.columns or "opportunity_id" not in opps.columns:
        return history
    bad = ~ahead.get("opportunity_history", _known_opportunity, history, opps)
    values = format_ids(sorted(history.loc[bad, "opportunity_id"].dropna().astype(str).unique()), 5)
    return _drop("opportunity_history", history, "opportunity_id", "unknown_opportunity", bad,
                 f"opportunity_id not in opportunities, or dropped there ({values or 'empty'})",
                 "export the history of the same opportunities as the opportunities table", findings)


def _known_opportunity(history: pd.DataFrame, opps: pd.DataFrame) -> pd.Series:
    """True where the history row's opportunity_id is an opportunity of `opps`."""
    return isin(history["opportunity_id"], opps["opportunity_id"].dropna())


def _drop_bad_periods(table: str, df: pd.DataFrame, findings: Findings) -> pd.DataFrame:
    """Drop rows whose period label is not YYYY-MM, FYYYYY-Qn, FYYYYY or YYYY-Wnn."""
    period = df["period"].astype("string").str.strip()
    bad = ~period.str.fullmatch(PERIOD_LABEL).fillna(False).astype(bool)
    labels = format_ids(sorted(period[bad].fillna("(empty)").astype(str).unique()), 5)
    return _drop(table, df, "period", "bad_period", bad,
                 f"period label not understood ({labels}); labels look like 2026-10, FY2026-Q3, FY2026, 2026-W07",
                 f"write the periods in one of these shapes in the source of {table}", findings)


def _drop_bad_scores(surveys: pd.DataFrame, findings: Findings) -> pd.DataFrame:
    """Drop survey rows whose score is outside 0-10."""
    score = surveys["score"]
    bad = ((score < 0) | (score > 10)).fillna(False).astype(bool)
    return _drop("surveys", surveys, "score", "score_out_of_range", bad,
                 "score outside 0-10", "scores must be on the 0-10 scale; rescale them in the source", findings)


def _agents_without_deals(owners: pd.DataFrame, opps: pd.DataFrame, findings: Findings) -> None:
    """Info: reps (level rep, or owners nobody reports to) who own no opportunity."""
    if not {"owner_id", "manager_id"} <= set(owners.columns) or "owner_id" not in opps.columns:
        return
    ids = owners["owner_id"].dropna()
    leaf = ~ids.isin(owners["manager_id"].dropna())
    if "level" in owners.columns:
        leaf |= owners.loc[ids.index, "level"].astype("string").str.strip().str.lower().eq("rep").fillna(False)
    idle = sorted(ids[leaf & ~isin(ids, opps["owner_id"].dropna())].astype(str).unique())
    findings.add("owners", "owner_id", "agent_without_deals", "info", idle,
                 "agents without deals: reps who own no opportunity (their KPIs show 0 or n/a)",
                 "nothing to do if they are new or not selling; else check owner_id in opportunities")


# ---------------------------------------------------------------- spm data check
def check_report(cfg: Config) -> tuple[str, bool]:
    """Read and validate the configured source; return a readable report and False when a finding is fatal."""
    from spm_lib.data.sources import read_contract_tables

    findings = Findings()
    loaded: dict[str, int] = {}
    kept: dict[str, pd.DataFrame] = {}
    try:
        tables = read_contract_tables(cfg, findings)
        loaded = {name: len(df) for name, df in tables.items()}
        kept = validate(tables, cfg, findings)
    except SpmError as e:
        findings.add("source", None, "unreadable", "fatal", [], f"the source cannot be read: {e}",
                     "fix config/source.yml or the source as the message says, then run `spm data check` again",
                     count=1)
    return render_report(source_label(cfg), loaded, {n: len(df) for n, df in kept.items()}, findings)


def source_label(cfg: Config) -> str:
    """'kind path' of the configured source (a SQL URL with its password masked)."""
    s = cfg.source
    if s.kind == "sql" and s.url:
        from spm_lib.data.sources import mask_url

        return f"sql {mask_url(s.url)}"
    try:
        path = s.resolved_path() if s.path else ""
    except SpmError:  # an unset ${VAR}: the findings say which
        path = s.path or ""
    return f"{s.kind} {cfg.path(path)}"


def render_report(source: str, loaded: dict[str, int], kept: dict[str, int], findings: Findings) -> tuple[str, bool]:
    """The `spm data check` text: source, row counts per table, findings by severity, verdict; and ok."""
    lines = [f"Data check of {source}", "", f"{'table':<22}{'loaded':>10}{'dropped':>10}{'used':>10}"]
    for name in CONTRACT:
        if name in loaded:
            used = kept.get(name, loaded[name])
            lines.append(f"{name:<22}{loaded[name]:>10,}{loaded[name] - used:>10,}{used:>10,}")
        else:
            lines.append(f"{name:<22}{'—':>10}{'—':>10}{'absent':>10}")
    for severity in ("fatal", "warning", "info"):
        group = [f for f in findings.items if f.severity == severity]
        if group:
            lines += ["", f"{severity.upper()} ({len(group)})"]
            lines += [textwrap.fill(_line(f), REPORT_WIDTH, initial_indent="  ", subsequent_indent="      ",
                                    break_long_words=False, break_on_hyphens=False) for f in group]
    n_fatal = len(findings.fatal())
    ok = n_fatal == 0
    lines += ["", "OK: the data can be used" if ok else
              f"FAILED: {n_fatal} fatal problem{'s' if n_fatal != 1 else ''}; fix them and run `spm data check` again"]
    return "\n".join(lines), ok


def _line(f: Finding) -> str:
    """'table.column: message (N rows) — ids: a, b … and 12 more. Fix: …'."""
    where = f"{f.table}.{f.column}" if f.column else f.table
    rows = "" if f.check in STRUCTURAL_CHECKS else f" ({f.n:,} row{'s' if f.n != 1 else ''})"
    ids = f" — ids: {format_ids(f.ids)}" if f.ids else ""
    return f"{where}: {f.message}{rows}{ids}. Fix: {f.fix}"
