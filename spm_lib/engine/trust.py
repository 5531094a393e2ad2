"""Trust checks (SPEC §6): a registry of data checks run on the open deals of the as-of snapshot for every scope.

Each check is declared once (`TrustCheck`) and computed by `compute_trust` for every owner scope in one pass:
per-deal checks flag each open opportunity once (with a short text of what is wrong), the flags are joined to
the as-of hierarchy (`ancestors`) and counted per scope, so a manager's figures include their own deals and
every report's. The value compared with the thresholds of `config/trust.yml` depends on the threshold's unit:
`count` = offending open deals, `rate` = their share of the scope's open pipeline value (a deal without amount
weighs 0; when the offending deals have no value at all, the share of open deals is used instead), `pct` =
rate × 100 (for `forecast_deviation_pct`: the signed forecast deviation in %, its absolute value is compared),
`material` = the value of the offending deals due by the end of the forward period (dated in its rest, overdue or
undated: what the session decides on) as a share of all the scope's open deals due by then; with `warn: 0` any
offending deal warns, also one dated after the forward period.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from spm_lib.config import Threshold
from spm_lib.data.asof import SortedHistory, first_of_run, snapshot
from spm_lib.domain.periods import Window
from spm_lib.domain.stages import Stages
from spm_lib.errors import SpmError, did_you_mean
from spm_lib.metrics import checks
from spm_lib.metrics.kpis import not_available
from spm_lib.util.frames import day_of, isin, join_positions, map_values, positions

if TYPE_CHECKING:
    from spm_lib.engine.context import CubeContext

Unit = Literal["count", "rate", "pct", "material"]  # the units of config.Threshold
TRUST_COLUMNS = ["owner_id", "level", "check", "status", "value", "count", "amount", "open_count", "open_value",
                 "warn", "fail", "unit", "available", "na_reason", "label", "definition"]
TRUST_ROW_COLUMNS = ["check", "opportunity_id", "owner_id", "name", "account_id", "stage", "amount", "close_date",
                     "last_modified_date", "detail"]

# A per-deal check: (ctx, open deals) -> detail text per open deal, <NA> where the deal is fine.
DealFlag = Callable[["CubeContext", pd.DataFrame], "pd.Series[str]"]
# A per-scope check: (ctx, scopes, bookings_by_month) -> frame indexed by scope owner_id with `value`, `na_reason`.
ScopeValue = Callable[["CubeContext", pd.DataFrame, "pd.DataFrame | None"], pd.DataFrame]


class TrustError(SpmError):
    """A trust check declaration or check id is invalid."""


@dataclass(frozen=True)
class TrustCheck(checks.CheckInfo):
    """A trust check's declaration (metrics.checks.CheckInfo) with its computation: a per-deal flag or a scope value."""

    flag: DealFlag | None = None
    scope_value: ScopeValue | None = None

    def __post_init__(self) -> None:
        if (self.flag is None) == (self.scope_value is None):
            raise TrustError(f"trust check {self.id!r}: declare exactly one of flag or scope_value")

    @property
    def unit(self) -> Unit:
        """The default unit of the check's value."""
        return self.default.unit


CHECKS: dict[str, TrustCheck] = {}


def register(check: TrustCheck, *, replace: bool = False) -> TrustCheck:
    """Add a trust check to the registry (an id can be declared once unless `replace`)."""
    if check.id in CHECKS and not replace:
        raise TrustError(f"trust check {check.id!r} is declared twice; pick another id or pass replace=True")
    CHECKS[check.id] = check
    checks.NEEDS[check.id] = check.needs
    return check


def get(check_id: str) -> TrustCheck:
    """The declaration of `check_id` (TrustError with a suggestion when unknown)."""
    try:
        return CHECKS[check_id]
    except KeyError:
        raise TrustError(f"unknown trust check {check_id!r}{did_you_mean(check_id, CHECKS)}") from None


# ---------------------------------------------------------------- helpers on the snapshot
def _asof_ts(ctx: CubeContext) -> pd.Timestamp:
    return pd.Timestamp(ctx.as_of)


def _dates(s: pd.Series) -> pd.Series:
    """A date/datetime column as midnight timestamps (time of day dropped)."""
    return day_of(pd.to_datetime(s))


def _due_by(deals: pd.DataFrame, window: Window) -> np.ndarray:
    """True for each deal the session on `window` (the rest of the forward period) decides on: dated up to the
    window's end, overdue ones included (they are due now), and undated ones (they may close in it)."""
    cd = _dates(deals["close_date"])
    return cd.le(pd.Timestamp(window.end)).fillna(True).to_numpy(dtype=bool)


def _fmt_date(s: pd.Series) -> pd.Series:
    return _dates(s).dt.strftime("%Y-%m-%d")


def _int_text(s: pd.Series) -> pd.Series:
    return s.round().astype("Int64").astype("string")


def open_deals(ctx: CubeContext) -> pd.DataFrame:
    """The open opportunities of the as-of snapshot (a reopened deal is open), with `value` = amount or 0 and
    `snapshot_row` = the deal's row in ctx.snapshot."""
    snap = ctx.snapshot
    is_closed = snap["is_closed"].astype("boolean") if "is_closed" in snap else pd.Series(pd.NA, index=snap.index,
                                                                                           dtype="boolean")
    if is_closed.isna().any():  # a missing flag: closed when the stage is a won or lost one
        closed_stage = Stages.of(ctx.cfg.stages).is_closed(snap["stage"]) if "stage" in snap else False
        is_closed = is_closed.fillna(pd.Series(closed_stage, index=snap.index).astype("boolean"))
    closed = is_closed.astype(bool)
    out = snap[~closed]
    out["snapshot_row"] = np.flatnonzero(~closed.to_numpy())
    out["value"] = pd.to_numeric(out["amount"], errors="coerce").astype("float64").fillna(0.0)
    return out.reset_index(drop=True)


def asof_ancestors(ctx: CubeContext) -> pd.DataFrame:
    """(owner_id, scope_id, distance) of the hierarchy valid on the as-of date."""
    anc = ctx.ancestors
    ts = _asof_ts(ctx)
    keep = pd.Series(True, index=anc.index)
    if "valid_from" in anc:
        vf = pd.to_datetime(anc["valid_from"])
        keep &= vf.isna() | (vf <= ts)
    if "valid_to" in anc:
        vt = pd.to_datetime(anc["valid_to"])
        keep &= vt.isna() | (vt >= ts)
    out = anc.loc[keep, ["owner_id", "scope_id", "distance"]]
    out = out.assign(owner_id=out["owner_id"].astype(str), scope_id=out["scope_id"].astype(str))
    return out.drop_duplicates(["owner_id", "scope_id"]).reset_index(drop=True)


def _scopes(ctx: CubeContext) -> pd.DataFrame:
    """Every owner scope with its level (None when the owner has no level)."""
    owners = ctx.owners
    level = owners["level"] if "level" in owners else pd.Series(None, index=owners.index, dtype="object")
    return pd.DataFrame({"owner_id": owners["owner_id"].astype(str).to_numpy(),
                         "level": level.astype("object").where(level.notna(), None).to_numpy()})


def threshold_for(ctx: CubeContext, level: str | None, check_id: str) -> Threshold:
    """The threshold of a check for a level: config for the level, else config `default`, else the declaration."""
    th = ctx.cfg.trust.thresholds
    for key in ([level] if level else []) + ["default"]:
        if key in th and check_id in th[key]:
            return th[key][check_id]
    return get(check_id).default


# ---------------------------------------------------------------- per-deal checks
def _flagged(deals: pd.DataFrame, text: pd.Series) -> pd.Series:
    """The detail text of every deal from the texts of the flagged ones (`text`, indexed like `deals`; <NA>: fine).
    Texts are built for the flagged deals only: a few of the open deals."""
    return text.reindex(deals.index).astype("string")


def _past_close(ctx: CubeContext, deals: pd.DataFrame) -> pd.Series:
    cd = _dates(deals["close_date"])
    cd = cd[cd < _asof_ts(ctx)]
    days = (_asof_ts(ctx) - cd).dt.days
    return _flagged(deals, "close date " + _fmt_date(cd) + " is " + _int_text(days) + " days in the past")


def _stale(ctx: CubeContext, deals: pd.DataFrame) -> pd.Series:
    lm = _dates(deals["last_modified_date"])
    days = (_asof_ts(ctx) - lm).dt.days
    return _flagged(deals, "no update for " + _int_text(days[days >= ctx.cfg.trust.stale_days]) + " days")


def _early_closing(ctx: CubeContext, deals: pd.DataFrame) -> pd.Series:
    cd = _dates(deals["close_date"])
    ts = _asof_ts(ctx)
    days = (cd - ts).dt.days
    early = ctx.cfg.stages.open_names[: ctx.cfg.trust.early_stages]
    hit = (cd >= ts) & (days <= ctx.cfg.trust.closing_soon_days) & deals["stage"].isin(early)
    return _flagged(deals, "closes " + _fmt_date(cd[hit]) + " (in " + _int_text(days[hit]) + " days) but is still in "
                    + deals.loc[hit, "stage"].astype("string"))


def _missing_fields(ctx: CubeContext, deals: pd.DataFrame) -> pd.Series:
    no_amount = deals["amount"].isna()
    no_close = deals["close_date"].isna()
    text = pd.Series(pd.NA, index=deals.index, dtype="string")
    text = text.mask(no_amount, "no amount").mask(no_close, "no close date")
    return text.mask(no_amount & no_close, "no amount and no close date")


def _pushed(ctx: CubeContext, deals: pd.DataFrame) -> pd.Series:
    pushes = pd.to_numeric(deals["pushes"], errors="coerce").fillna(0)
    return _flagged(deals, "pushed " + _int_text(pushes[pushes >= ctx.cfg.trust.pushed_min_moves]) + " times")


def _no_activity(ctx: CubeContext, deals: pd.DataFrame) -> pd.Series:
    """Open deals with no activity in the last `no_activity_days` (deals younger than that are not flagged)."""
    ts = _asof_ts(ctx)
    n = ctx.cfg.trust.no_activity_days
    last_for = pd.Series(ctx.last_activity()[deals["snapshot_row"].to_numpy()], index=deals.index)
    quiet = last_for.isna() | (last_for <= ts - pd.Timedelta(days=n))
    if "created_date" in deals:
        created = _dates(deals["created_date"])
        quiet &= created.isna() | (created <= ts - pd.Timedelta(days=n))
    days = (ts - last_for[quiet]).dt.days
    return _flagged(deals, ("no activity for " + _int_text(days) + " days").fillna("no activity logged"))


def stage_medians(ctx: CubeContext) -> pd.Series:
    """Median days spent in each stage, over stage spells that ended by as-of (from opportunity_history)."""
    h = ctx.sorted_history()
    if h is None:
        return pd.Series([], dtype="float64", index=pd.Index([], dtype="string", name="stage"))
    med = _group_medians(*_ended_spells(h), len(h.stages))
    codes = np.flatnonzero(~np.isnan(med))  # the stages some ended spell was in
    return pd.Series(med[codes], name="days", index=pd.Index(h.stages.take(codes), name="stage")).sort_index()


def _ended_spells(h: SortedHistory) -> tuple[np.ndarray, np.ndarray]:
    """(stage code, length in ns) of every stage spell that ended by as-of, from the sorted history: a spell starts
    where a deal's carried-forward stage is first set or changes, and ends where the deal's next spell starts."""
    starts = (h.stage_ff >= 0) & (h.first | first_of_run(h.stage_ff))
    code, when = h.code[starts], h.changed_at.view("int64")[starts]
    ended = np.flatnonzero(code[1:] == code[:-1])  # the next spell is the same deal's
    return h.stage_ff[starts][ended], when[ended + 1] - when[ended]


def _group_medians(group: np.ndarray, length: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group code, the median in days of the ns lengths of its members (NaN: no member), as pandas computes it:
    each length in days (`dt.total_seconds() / 86400`), then the middle value or the mean of the two middle ones."""
    counts = np.bincount(group, minlength=n_groups)
    # members grouped by code (a stable sort of small integers is a radix sort), each group's middle picked
    grouped = length[np.argsort(group.astype(np.min_scalar_type(max(n_groups - 1, 0))), kind="stable")]
    out = np.full(n_groups, np.nan)
    for code, end in zip(np.flatnonzero(counts), np.cumsum(counts)[counts > 0], strict=True):
        n = counts[code]
        middle = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
        ns = np.partition(grouped[end - n: end], middle)[middle]
        days = pd.Series(ns.view("timedelta64[ns]")).dt.total_seconds().to_numpy() / 86400
        out[code] = days[0] if n % 2 else (days[0] + days[1]) / 2
    return out


def _stalled(ctx: CubeContext, deals: pd.DataFrame) -> pd.Series:
    med = map_values(deals["stage"], stage_medians(ctx)).astype("float64")
    days = pd.to_numeric(deals["days_in_stage"], errors="coerce").astype("float64")
    hit = med.notna() & days.notna() & (days > ctx.cfg.trust.stalled_factor * med)
    return _flagged(deals, _int_text(days[hit]) + " days in " + deals.loc[hit, "stage"].astype("string")
                    + " (usual: " + _int_text(med[hit]) + " days)")


def _amount_decreased(ctx: CubeContext, deals: pd.DataFrame) -> pd.Series:
    hit = deals["amount_decreased"].astype("boolean").fillna(False).astype(bool)
    flagged = deals.loc[hit, ["snapshot_row", "amount"]]
    peak = pd.Series(_peak_amounts(ctx, flagged["snapshot_row"].to_numpy()), index=flagged.index)
    amount = flagged["amount"].astype("float64")
    text = ("amount cut from " + _int_text(peak) + " to " + _int_text(amount))
    return _flagged(deals, text.where(peak > amount).fillna("amount decreased"))


def _peak_amounts(ctx: CubeContext, rows: np.ndarray) -> np.ndarray:
    """The largest amount any history row up to as_of gave each snapshot deal of `rows` (NaN: none)."""
    h = ctx.sorted_history()
    out = np.full(len(rows), np.nan)
    if h is None or not len(h.ids):
        return out
    code = ctx.history_codes()[rows]
    wanted = np.zeros(len(h.ids), dtype=bool)
    wanted[code[code >= 0]] = True
    # the carried-forward amounts of a deal's rows are its rows' own amounts repeated: the same largest one
    keep = wanted[h.code] & ~np.isnan(h.amount_ff)
    peak = np.full(len(h.ids), np.nan)
    np.fmax.at(peak, h.code[keep], h.amount_ff[keep])
    return np.where(code >= 0, peak[np.maximum(code, 0)], np.nan)


# ---------------------------------------------------------------- forecast deviation (per scope)
def last_full_month(as_of: date) -> tuple[str, date, date]:
    """(label YYYY-MM, first day, last day) of the last calendar month ending on or before `as_of`."""
    if (as_of + timedelta(days=1)).month != as_of.month:
        end = as_of
    else:
        end = as_of.replace(day=1) - timedelta(days=1)
    start = end.replace(day=1)
    return f"{start.year:04d}-{start.month:02d}", start, end


def _won_in_month(ctx: CubeContext, start: date, end: date) -> pd.DataFrame:
    """Deals won with close date in [start, end], as they stood at `end` (history) or as they stand now."""
    history = ctx.data.tables.get("opportunity_history")
    if history is not None and not history.empty:
        snap = snapshot(ctx.data.table("opportunities"), history, end, ctx.cfg.stages)
    else:
        snap = ctx.snapshot
    cd = _dates(snap["close_date"])
    won = snap["is_won"].astype("boolean").fillna(False).astype(bool)
    won &= (cd >= pd.Timestamp(start)) & (cd <= pd.Timestamp(end))
    return snap.loc[won, ["owner_id"]].assign(value=pd.to_numeric(snap.loc[won, "amount"]).fillna(0.0))


def scope_forecasts(ctx: CubeContext, label: str, start: date) -> pd.Series:
    """Forecast per scope for month `label`: the top-most submissions inside the scope, summed.

    Each owner's submission is their latest one for `label` submitted by the end of the month's first day.
    A submission covers its owner's whole scope: a manager's own submission is the team's forecast; where a
    manager submitted none, their reports' forecasts (recursively) are summed. Scopes without any: absent.
    """
    fc = ctx.data.table("forecasts")
    fc = fc[(fc["period"].astype(str).str.strip() == label)
            & (pd.to_datetime(fc["submitted_at"]) < pd.Timestamp(start) + pd.Timedelta(days=1))]
    latest = (fc.assign(submitted_at=pd.to_datetime(fc["submitted_at"])).sort_values("submitted_at", kind="stable")
              .groupby(fc["owner_id"].astype(str))["amount"].last().astype("float64"))
    anc = asof_ancestors(ctx)
    pairs = anc[isin(anc["owner_id"], latest.index)]
    covering = anc[isin(anc["scope_id"], latest.index) & (anc["distance"] >= 1)]
    shadow = pairs.merge(covering, on="owner_id", suffixes=("", "_c"))
    shadow = shadow[shadow["distance_c"] <= shadow["distance"]][["owner_id", "scope_id"]].drop_duplicates()
    counted = pairs.merge(shadow, on=["owner_id", "scope_id"], how="left", indicator=True)
    counted = counted[counted["_merge"] == "left_only"]
    return counted.assign(amount=counted["owner_id"].map(latest)).groupby("scope_id")["amount"].sum()


def _forecast_deviation(ctx: CubeContext, scopes: pd.DataFrame, bookings_by_month: pd.DataFrame | None
                        ) -> pd.DataFrame:
    """(actual − forecast) / forecast × 100 of the last full month, per scope (signed; |value| meets thresholds).

    Actual bookings: taken from `bookings_by_month` (owner_id = scope, period, value) when given; otherwise
    computed here from the deals won with close date in that month as they stood at the month's end
    (reconstructed with opportunity_history; without history, the current snapshot is used).
    """
    label, start, end = last_full_month(ctx.as_of)
    forecast = scopes["owner_id"].map(scope_forecasts(ctx, label, start)).astype("float64")
    if bookings_by_month is not None:
        b = bookings_by_month[bookings_by_month["period"].astype(str) == label]
        actual_by_scope = b.groupby(b["owner_id"].astype(str))["value"].sum()
    else:
        won = _won_in_month(ctx, start, end).merge(asof_ancestors(ctx), on="owner_id")
        actual_by_scope = won.groupby("scope_id")["value"].sum()
    actual = scopes["owner_id"].map(actual_by_scope).astype("float64").fillna(0.0)
    value = (actual - forecast) / forecast.where(forecast != 0) * 100
    reason = pd.Series(None, index=scopes.index, dtype="object")
    reason = reason.mask(forecast == 0, f"not available — the forecast for {label} is 0")
    reason = reason.mask(forecast.isna(), f"not available — no forecast for {label} submitted by {start}")
    return pd.DataFrame({"value": value.to_numpy(), "na_reason": reason.to_numpy()}, index=scopes["owner_id"])


# ---------------------------------------------------------------- the built-in checks
_COMPUTE: dict[str, tuple[str, DealFlag | ScopeValue]] = {
    "forecast_deviation_pct": ('scope_value', _forecast_deviation),
    "opps_past_close_date": ('flag', _past_close),
    "opps_stale_60d": ('flag', _stale),
    "opps_early_stage_closing_30d": ('flag', _early_closing),
    "opps_missing_fields": ('flag', _missing_fields),
    "opps_pushed": ('flag', _pushed),
    "deals_no_activity": ('flag', _no_activity),
    "deals_stalled_in_stage": ('flag', _stalled),
    "deals_amount_decreased": ('flag', _amount_decreased),
}
for _info in checks.BUILTIN.values():
    _kind, _fn = _COMPUTE[_info.id]
    register(TrustCheck(_info.id, _info.label, _info.definition, _info.needs, _info.default,
                        **{_kind: _fn}))  # type: ignore[arg-type] # flag or scope_value, by _COMPUTE
del _info, _kind, _fn


# ---------------------------------------------------------------- computing every check for every scope
def compute_trust(ctx: CubeContext, bookings_by_month: pd.DataFrame | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every trust check for every owner scope: (trust, one row per scope and check; trust_rows, offending deals).

    `trust` has TRUST_COLUMNS; `trust_rows` has TRUST_ROW_COLUMNS, one row per offending open deal and check
    (owner_id there is the deal's owner). `bookings_by_month` (owner_id = scope, period YYYY-MM, value) lets the
    cube pass its own bookings to the forecast check.
    """
    deals = open_deals(ctx)
    scopes = _scopes(ctx)
    in_scope = _ScopePairs.of(deals, asof_ancestors(ctx), scopes["owner_id"])
    open_count, open_value = in_scope.totals(deals["value"].to_numpy(), None)
    due = _due_by(deals, ctx.windows.remaining) if ctx.windows is not None else None  # None: no material unit
    forward_value = (in_scope.totals(deals["value"].to_numpy(), due)[1] if due is not None
                     else np.full(len(scopes), np.nan))
    base = scopes.assign(open_count=open_count, open_value=open_value, forward_value=forward_value)
    row_cols = [c for c in TRUST_ROW_COLUMNS if c in deals]  # the deal columns of the offending rows

    parts: list[pd.DataFrame] = []
    rows: list[pd.DataFrame] = []
    for check in CHECKS.values():  # a handful of checks; each is vectorised over deals and scopes
        part = base.assign(check=check.id, count=pd.Series(pd.NA, index=base.index, dtype="Int64"),
                           amount=np.nan, due_amount=np.nan, metric=np.nan, available=True, na_reason=None)
        missing = ctx.data.missing(list(check.needs))
        if missing:
            part = part.assign(available=False, na_reason=not_available(missing))
        elif check.scope_value is not None:
            sv = check.scope_value(ctx, scopes, bookings_by_month)
            part = part.assign(metric=part["owner_id"].map(sv["value"]).astype("float64"),
                               na_reason=part["owner_id"].map(sv["na_reason"]))
        else:
            assert check.flag is not None
            detail = check.flag(ctx, deals).reindex(deals.index)
            hit = detail.notna()
            rows.append(_offending_rows(check.id, deals.loc[hit, row_cols], detail[hit]))
            count, amount = in_scope.totals(deals["value"].to_numpy(), hit.to_numpy())
            n, v = pd.Series(count, index=part.index, dtype="Int64"), pd.Series(amount, index=part.index)
            due_amount = (in_scope.totals(deals["value"].to_numpy(), hit.to_numpy() & due)[1] if due is not None
                          else np.nan)  # the flagged value the session decides on (the material unit's)
            part = part.assign(count=n, amount=v, due_amount=due_amount,
                               metric=_rate(n, v, part["open_count"], part["open_value"]))
        parts.append(part)
    trust = _statuses(ctx, pd.concat(parts, ignore_index=True))
    trust_rows = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=TRUST_ROW_COLUMNS)
    return trust, trust_rows.sort_values(["check", "opportunity_id"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class _ScopePairs:
    """Every (open deal, scope) pair of the deals and the as-of scopes of their owner, as integer codes: `deal` (row
    in the deals frame) in deal order, `scope` (code of the scope id); `at` gives each scope row its code (-1: the
    scope holds no deal)."""

    deal: np.ndarray
    scope: np.ndarray
    at: np.ndarray
    n_codes: int

    @classmethod
    def of(cls, deals: pd.DataFrame, anc: pd.DataFrame, scope_ids: pd.Series) -> _ScopePairs:
        """The pairs of `deals` (owner_id) and the ancestor map `anc` (owner_id, scope_id; one row per pair)."""
        owner, owners = pd.factorize(anc["owner_id"])
        scope, codes = pd.factorize(anc["scope_id"])
        deal, row = join_positions(positions(deals["owner_id"].astype(str), owners), owner)
        return cls(deal=deal, scope=scope[row], at=pd.Index(codes).get_indexer(scope_ids), n_codes=len(codes))

    def totals(self, value: np.ndarray, hit: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(number, summed `value`) of the deals (those where `hit`) per scope row; sums in deal order, like a
        groupby of the pairs."""
        keep = slice(None) if hit is None else hit[self.deal]
        scope = self.scope[keep]
        count = np.bincount(scope, minlength=self.n_codes)
        total = pd.Series(value[self.deal[keep]]).groupby(scope).sum().reindex(range(self.n_codes), fill_value=0.0)
        return _take(count, self.at, 0), _take(total.to_numpy(dtype="float64"), self.at, 0.0)


def _take(values: np.ndarray, codes: np.ndarray, missing: float) -> np.ndarray:
    """values[codes], `missing` where the code is -1."""
    return np.where(codes >= 0, values[np.maximum(codes, 0)] if len(values) else missing, missing)


def _rate(n: pd.Series, v: pd.Series, open_count: pd.Series, open_value: pd.Series) -> pd.Series:
    """Share of the open pipeline value offending; by count when the offending deals (or the scope) have no value."""
    by_value = v / open_value.where(open_value > 0)
    by_count = n / open_count.where(open_count > 0)
    return by_value.where(v > 0, by_count).fillna(0.0)


def _statuses(ctx: CubeContext, df: pd.DataFrame) -> pd.DataFrame:
    """Pick each row's threshold (by level) and value (by unit), then its status."""
    keys = df[["level", "check"]].drop_duplicates()
    ths = [threshold_for(ctx, lv, ck) for lv, ck in zip(keys["level"], keys["check"], strict=True)]
    th = keys.assign(warn=pd.Series([t.warn for t in ths], index=keys.index, dtype="float64"),
                     fail=pd.Series([t.fail for t in ths], index=keys.index, dtype="float64"),
                     fail_amount=pd.Series([t.fail_amount for t in ths], index=keys.index, dtype="float64"),
                     unit=pd.Series([t.unit for t in ths], index=keys.index, dtype="str"))
    df = df.merge(th, on=["level", "check"], how="left")
    per_deal = _per_check(df["check"], lambda c: CHECKS[c].flag is not None).astype(bool)
    value = df["metric"].astype("float64")
    count = df["count"].astype("Int64")
    value = value.mask(per_deal & (df["unit"] == "count"), count.astype("Float64").astype("float64"))
    value = value.mask(per_deal & (df["unit"] == "pct"), df["metric"] * 100)
    is_material = per_deal & (df["unit"] == "material")
    # the material unit weighs only the flagged deals due by the forward period's end (`_due_by`), against all the
    # open deals due by then; the other units weigh every flagged deal
    amount = df["amount"].astype("float64").mask(is_material, df["due_amount"].astype("float64"))
    with np.errstate(divide="ignore", invalid="ignore"):  # a flagged value against no forward pipeline: infinite
        material = np.where(amount.fillna(0) > 0, amount / df["forward_value"].astype("float64"), 0.0)
    value = value.mask(is_material, pd.Series(material, index=df.index))
    value = value.where(df["available"])
    compared = value.abs()
    warn = df["warn"].astype("float64")
    fail = df["fail"].astype("float64")
    status = pd.Series("pass", index=df.index, dtype="object")
    status = status.mask(warn.notna() & (compared > warn), "warn")
    # material: a warn of 0 warns on any flagged deal, also one dated after the forward period (it is listed)
    status = status.mask(is_material & (warn == 0) & (count.fillna(0) > 0).astype(bool), "warn")
    status = status.mask(fail.notna() & (compared > fail), "fail")
    fail_amount = df["fail_amount"].astype("float64")
    status = status.mask(per_deal & fail_amount.notna() & (amount >= fail_amount), "fail")
    status = status.mask(value.isna(), "not_available")
    available = df["available"] & value.notna()
    df = df.assign(value=value, status=status, available=available.astype(bool),
                   count=count, amount=df["amount"].astype("float64"),
                   label=_per_check(df["check"], lambda c: CHECKS[c].label),
                   definition=_per_check(df["check"], lambda c: CHECKS[c].definition))
    return df[TRUST_COLUMNS].reset_index(drop=True)


def _per_check(check: pd.Series, attr: Callable[[str], object]) -> pd.Series:
    """`check.map(attr)`, calling `attr` once per distinct check id."""
    codes, ids = pd.factorize(check)
    return pd.Series(ids).map(attr).take(codes).set_axis(check.index)


def _offending_rows(check_id: str, deals: pd.DataFrame, detail: pd.Series) -> pd.DataFrame:
    """The offending deals of one check in the TRUST_ROW_COLUMNS layout."""
    out = pd.DataFrame({"check": check_id, "detail": detail.astype("string")}, index=deals.index)
    for c in TRUST_ROW_COLUMNS:
        if c not in out:
            out[c] = deals[c] if c in deals else pd.Series(pd.NA, index=deals.index, dtype="object")
    return out[TRUST_ROW_COLUMNS]


# ---------------------------------------------------------------- helpers for reports
_SCOPE_RANK = {"fail": 2, "warn": 1}  # a check not available does not make a scope untrusted


def worst_status(statuses: Iterable[str]) -> str:
    """The trust of a scope from its checks' statuses: fail > warn > pass (not_available counts as pass)."""
    return {2: "fail", 1: "warn", 0: "pass"}[max((_SCOPE_RANK.get(s, 0) for s in statuses), default=0)]


def worst_by_owner(trust: pd.DataFrame) -> pd.Series:
    """`worst_status` of every owner's scope in a trust table, indexed by owner id (one vectorised pass)."""
    rank = trust["status"].map(_SCOPE_RANK).fillna(0)
    worst = rank.groupby(trust["owner_id"].astype(str)).max()
    return worst.map({2: "fail", 1: "warn", 0: "pass"})


def owner_status(trust: pd.DataFrame, owner_id: str) -> str:
    """`worst_status` of one owner's scope in a trust table ('pass' when it has no row)."""
    return str(worst_by_owner(trust[trust["owner_id"] == owner_id]).get(owner_id, "pass"))


def checks_with_status(trust: pd.DataFrame, owner_id: str, statuses: Iterable[str] = ("warn", "fail")) -> set[str]:
    """The ids of the checks whose status in `owner_id`'s scope is one of `statuses` (`trust`: the cube's table)."""
    return set(trust.loc[(trust["owner_id"] == owner_id) & trust["status"].isin(list(statuses)), "check"])


def scope_offenders(trust_rows: pd.DataFrame, deals: pd.DataFrame, checks: Iterable[str] | None = None
                    ) -> pd.DataFrame:
    """The offending rows (one per deal and check) of the deals in `deals` (its opportunity_id column: a scope's),
    for `checks` (default: all); the largest deal first, then by id. The one selection of a scope's offending deals:
    the report, the email, the live drill-down and `offenders_for` read it."""
    rows = trust_rows.merge(deals[["opportunity_id"]], on="opportunity_id")
    if checks is not None:
        rows = rows[rows["check"].isin(set(checks))]
    return rows.sort_values(["amount", "opportunity_id"], ascending=[False, True], na_position="last")


DEAD_CHECKS = ("opps_stale_60d",)  # a deal flagged by these is not pushed: it goes to the trust list


def dead_deals(trust_rows: pd.DataFrame, deals: pd.DataFrame) -> pd.Series:
    """True for each deal of `deals` that is dead for a push list: no update for trust.stale_days or more (flagged
    by a check of DEAD_CHECKS; pushing it moves nothing until its owner updates it)."""
    dead = trust_rows.loc[trust_rows["check"].isin(DEAD_CHECKS), "opportunity_id"]
    return deals["opportunity_id"].isin(set(dead))


def offenders_for(trust_rows: pd.DataFrame, facts: pd.DataFrame, owner_id: str, limit: int = 20,
                  checks: Iterable[str] | None = None) -> pd.DataFrame:
    """The `limit` largest offending deals (by amount) of a scope, one row per deal with every check and detail.

    `facts` is the snapshot with each deal's ancestor owner ids in `scope_ids` (the cube's facts table).
    """
    rows = scope_offenders(trust_rows, facts[facts["scope_ids"].map(lambda s: owner_id in list(s))], checks)
    text = rows["check"].astype(str) + ": " + rows["detail"].astype(str)
    what = text.groupby(rows["opportunity_id"]).agg("; ".join)
    chk = rows.groupby("opportunity_id")["check"].agg(list)
    deal_cols = [c for c in TRUST_ROW_COLUMNS if c not in ("check", "detail")]
    deals = rows.drop_duplicates("opportunity_id")[deal_cols].set_index("opportunity_id")
    deals = deals.assign(checks=chk, detail=what).reset_index()
    deals = deals.sort_values(["amount", "opportunity_id"], ascending=[False, True], na_position="last")
    return deals.head(limit).reset_index(drop=True)
