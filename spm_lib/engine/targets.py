"""Targets per owner and period (SPEC §3 `targets`, §5): explicit, derived from another grain, or rolled up.

Resolution order for one metric, per scope owner and period:
1. `explicit`: a row of the targets table with that period label.
2. derived from the owner's explicit rows of another grain (additive metrics: currency and counts):
   - a month: its quarter or its year phased by the profile weights of its fiscal month (`phased`);
   - a quarter: the sum of its months when all three are explicit (`sum_of_months`), else its year phased
     (the sum of its phased months, `phased`);
   - a year: the sum of its twelve months (explicit or phased from explicit quarters, `sum_of_months`);
   - a YTD window (label ending in `-YTD`): the sum of the month targets from the fiscal year start through
     as_of's month (`sum_of_months` when all explicit, else `phased`).
   Ratio metrics (%, days, ratios) are not summed or phased: a month or quarter inherits the target of the
   quarter or year containing it (`inherited`).
3. `rolled_up`: an owner without any explicit target of the metric gets the sum of their direct reports'
   resolved targets (additive metrics only), bottom-up through the hierarchy.
No target anywhere gives no row — never a 0.
"""

from __future__ import annotations

from datetime import date
from typing import Any, cast, overload

import numpy as np
import pandas as pd

from spm_lib.config import StatusBands
from spm_lib.domain.periods import Window
from spm_lib.engine.context import CubeContext
from spm_lib.metrics import kpis
from spm_lib.util.frames import isin, trimmed_already

TARGET_COLUMNS = ["owner_id", "period", "metric", "target", "source"]
ADDITIVE_UNITS = {"currency", "count"}
YTD_SUFFIX = "-YTD"
DERIVABLE = {"month", "quarter", "year", "ytd"}
STATUSES = np.array(["none", "green", "amber", "red"], dtype=object)  # by status code


# ---------------------------------------------------------------- attainment and status
@overload
def attainment(value: float, target: float, direction: str) -> float: ...
@overload
def attainment(value: pd.Series, target: pd.Series | float, direction: str | pd.Series) -> pd.Series: ...
def attainment(value: Any, target: Any, direction: Any) -> Any:
    """Share of target achieved: value/target (higher is better) or target/value (lower); NaN when not computable."""
    scalar = np.isscalar(value) and np.isscalar(target) and isinstance(direction, str)
    index = next((x.index for x in (value, target, direction) if isinstance(x, pd.Series)), None)
    v = np.asarray(pd.to_numeric(value, errors="coerce"), dtype="float64")
    t = np.asarray(pd.to_numeric(target, errors="coerce"), dtype="float64")
    lower = np.asarray(direction == "lower" if isinstance(direction, str) else
                       pd.Series(direction).astype("string").eq("lower").fillna(False), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        num, den = np.where(lower, t, v), np.where(lower, v, t)
        out = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
    out = np.where(np.isfinite(out), out, np.nan)
    if scalar:
        return float(out)
    return pd.Series(np.broadcast_to(out, (len(index),)) if index is not None else out, index=index,
                     dtype="float64")


@overload
def status(attainment: float, bands: StatusBands) -> str: ...
@overload
def status(attainment: pd.Series, bands: StatusBands) -> pd.Series: ...
def status(attainment: Any, bands: StatusBands) -> Any:
    """Status colour of an attainment: green at or above bands.green, amber at or above bands.amber, else red."""
    a = np.asarray(pd.to_numeric(attainment, errors="coerce"), dtype="float64")
    code = np.select([np.isnan(a), a >= bands.green, a >= bands.amber], [0, 1, 2], 3)  # codes, not strings per row
    out = STATUSES[code]
    if np.isscalar(attainment) or a.ndim == 0:
        return str(out)
    index = attainment.index if isinstance(attainment, pd.Series) else None
    return pd.Series(out, index=index, dtype=object)


SESSION_ORDER = ("none", "green", "amber", "red")  # worse to the right


def session_status(statuses: list[str], trust: str) -> str:
    """A session's status from its statuses against target (the closed period's attainment, the forward period's
    expected result): the worst of them (green, amber or red; 'none' without any target), and at best amber
    when the data fails a trust check (the numbers are provisional)."""
    known = [s for s in statuses if s in SESSION_ORDER[1:]]
    if not known:
        return "amber" if trust == "fail" else "none"
    worst = max(known, key=SESSION_ORDER.index)
    return "amber" if trust == "fail" and worst == "green" else worst


# ---------------------------------------------------------------- resolution
def resolve_targets(ctx: CubeContext, metric: str, periods: list[Any]) -> pd.DataFrame:
    """The target of `metric` for every scope owner and each period, with where it came from (see module doc)."""
    explicit = _explicit_rows(ctx, metric)
    if explicit.empty or not periods:
        return _empty()
    targeted = set(explicit["owner_id"].unique())
    months = _period_months(ctx, periods)
    labels = pd.DataFrame({"period": [str(p.label) for p in periods]}).drop_duplicates()
    # only rows of these periods and of the months, quarters and years in them are read: drop the others first
    used = pd.concat([labels["period"], months["month"], months["quarter"], months["year"]]).unique()
    explicit = explicit[isin(explicit["period"], pd.Series(used, dtype=explicit["period"].dtype))]
    direct = explicit.merge(labels, on="period").assign(source="explicit")
    derived = (_derive_additive(explicit, months, phasing_weights(ctx)) if is_additive(metric)
               else _derive_inherited(explicit, months))
    own = pd.concat([direct, derived], ignore_index=True).drop_duplicates(["owner_id", "period"], keep="first")
    resolved = _roll_up(ctx, own, targeted) if is_additive(metric) else own
    scopes = ctx.owners["owner_id"].astype(str)
    out = resolved[isin(resolved["owner_id"], scopes) & resolved["value"].notna()]
    out = out.rename(columns={"value": "target"}).assign(metric=metric)
    return out[TARGET_COLUMNS].sort_values(["owner_id", "period"]).reset_index(drop=True)


def is_additive(metric: str) -> bool:
    """True when targets of `metric` add up over periods and owners (currency and count KPIs, unknown metrics)."""
    kpi = kpis.REGISTRY.get(metric)
    return kpi is None or kpi.unit in ADDITIVE_UNITS


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"owner_id": pd.Series([], dtype="string"), "period": pd.Series([], dtype="string"),
                         "metric": pd.Series([], dtype="string"), "target": pd.Series([], dtype="float64"),
                         "source": pd.Series([], dtype="string")})


def _explicit_rows(ctx: CubeContext, metric: str) -> pd.DataFrame:
    """The targets table's rows for `metric` (owner_id, period, value); a repeated owner/label keeps its last row.

    Built once per run and metric (resolve_targets runs for several period sets)."""
    key = f"target_rows:{metric}"
    if key not in ctx.cache:
        if not ctx.data.has("targets"):
            return pd.DataFrame(columns=["owner_id", "period", "value"])
        t = ctx.data.table("targets")
        t = t[t["metric"].astype("string") == metric].dropna(subset=["owner_id", "period", "value"])
        out = pd.DataFrame({"owner_id": _stripped(t["owner_id"]), "period": _stripped(t["period"]),
                            "value": t["value"].astype("float64")})
        ctx.cache[key] = out.drop_duplicates(["owner_id", "period"], keep="last").reset_index(drop=True)
    return cast(pd.DataFrame, ctx.cache[key])


def _stripped(s: pd.Series) -> pd.Series:
    """`s.astype(str).str.strip()`, without a pass over the values when no value has white space to strip."""
    text = s.astype(str)
    return text if trimmed_already(text) else text.str.strip()


def _grain(p: Any) -> str:
    """The grain of a period object: 'ytd' for labels ending in -YTD, else its own grain."""
    return "ytd" if str(p.label).endswith(YTD_SUFFIX) else str(getattr(p, "grain", ""))


def _period_months(ctx: CubeContext, periods: list[Any]) -> pd.DataFrame:
    """One row per (derivable period, month in it): period, grain, n_months, month, quarter, year, fm.

    `fm` is the fiscal month index (0 = first month of the fiscal year); YTD windows stop at as_of's month.
    """
    key = "target_months:" + repr([(str(p.label), _grain(p), str(p.start), str(p.end)) for p in periods])
    if key in ctx.cache:
        return cast(pd.DataFrame, ctx.cache[key])
    cal = ctx.calendar
    rows = []
    for p in periods:  # a handful of periods per run
        grain = _grain(p)
        if grain not in DERIVABLE:
            continue
        end = min(_as_date(p.end), ctx.as_of) if grain == "ytd" else _as_date(p.end)
        rows += [(str(p.label), grain, m.label, m.start) for m in cal.months_in(Window(_as_date(p.start), end))]
    df = pd.DataFrame(rows, columns=["period", "grain", "month", "first"])
    firsts = pd.Series(pd.to_datetime(df["first"]), index=df.index)
    df["quarter"] = cal.labels("quarter", firsts).astype(str)
    df["year"] = cal.labels("year", firsts).astype(str)
    df["fm"] = df["first"].map(cal.fiscal_month).astype(int) - 1
    df["n_months"] = df.groupby("period")["month"].transform("size")
    months = df.drop(columns="first")
    ctx.cache[key] = months
    return months


def _as_date(d: Any) -> date:
    return pd.Timestamp(d).date()


def phasing_weights(ctx: CubeContext) -> np.ndarray:
    """The 12 fiscal-month weights of the configured phasing profile (equal weights for 'flat')."""
    t = ctx.cfg.targets
    return np.ones(12) if t.phasing == "flat" else np.asarray(t.profiles[t.phasing], dtype="float64")


def _month_targets(explicit: pd.DataFrame, months: pd.DataFrame, weights: np.ndarray) -> pd.DataFrame:
    """Month targets per owner: explicit (prio 0), else the quarter phased (1), else the year phased (2).

    Columns owner_id, month, value, prio, year_phased (the year's share of that month, NaN without a year target).
    """
    um = months[["month", "quarter", "year", "fm"]].drop_duplicates("month")
    fm = um["fm"].to_numpy()
    qsum = weights.reshape(4, 3).sum(axis=1)[fm // 3]
    um = um.assign(w_year=weights[fm] / weights.sum(), w_quarter=np.where(qsum > 0, weights[fm] / qsum, np.nan))
    e_month = explicit.merge(um, left_on="period", right_on="month").assign(prio=0)
    e_quarter = explicit.merge(um, left_on="period", right_on="quarter").assign(prio=1)
    e_quarter["value"] = e_quarter["value"] * e_quarter["w_quarter"]
    e_year = explicit.merge(um, left_on="period", right_on="year").assign(prio=2)
    e_year["value"] = e_year["value"] * e_year["w_year"]
    cols = ["owner_id", "month", "value", "prio"]
    mt = pd.concat([e_month[cols], e_quarter[cols], e_year[cols]], ignore_index=True)
    mt = mt.sort_values("prio").drop_duplicates(["owner_id", "month"], keep="first")
    yp = e_year[["owner_id", "month", "value"]].rename(columns={"value": "year_phased"})
    return mt.merge(yp, on=["owner_id", "month"], how="left")


def _derive_additive(explicit: pd.DataFrame, months: pd.DataFrame, weights: np.ndarray) -> pd.DataFrame:
    """Targets of derivable periods from each owner's explicit rows of other grains (sums and phasing)."""
    if months.empty:
        return pd.DataFrame(columns=["owner_id", "period", "value", "source"])
    mt = _month_targets(explicit, months, weights)
    j = months[["period", "grain", "n_months", "month"]].merge(mt, on="month")
    j["is_explicit"] = j["prio"] == 0
    j["has_year"] = j["year_phased"].notna()
    g = j.groupby(["owner_id", "period", "grain", "n_months"], as_index=False).agg(
        total=("value", "sum"), n=("value", "size"), n_explicit=("is_explicit", "sum"),
        year_total=("year_phased", "sum"), n_year=("has_year", "sum"))
    complete = g["n"] == g["n_months"]
    all_explicit = g["n_explicit"] == g["n_months"]
    quarter, year, month, ytd = (g["grain"] == x for x in ("quarter", "year", "month", "ytd"))
    conds = [
        month & complete & all_explicit,
        month & complete,
        quarter & all_explicit,
        quarter & (g["n_year"] == g["n_months"]),
        year & complete,
        ytd & complete & all_explicit,
        ytd & complete,
    ]
    sources = ["explicit", "phased", "sum_of_months", "phased", "sum_of_months", "sum_of_months", "phased"]
    values = [g["total"], g["total"], g["total"], g["year_total"], g["total"], g["total"], g["total"]]
    g["source"] = np.select(conds, sources, default="")
    g["value"] = np.select(conds, values, default=np.nan)
    return g.loc[g["source"] != "", ["owner_id", "period", "value", "source"]]


def _derive_inherited(explicit: pd.DataFrame, months: pd.DataFrame) -> pd.DataFrame:
    """Ratio targets: a month inherits its quarter's or year's target, a quarter or YTD its year's."""
    first = months.sort_values("month").drop_duplicates("period")  # the first month names the enclosing periods
    q = first[first["grain"] == "month"].merge(explicit, left_on=["quarter"], right_on=["period"],
                                               suffixes=("", "_t"))
    y = first[first["grain"].isin(["month", "quarter", "ytd"])].merge(explicit, left_on=["year"],
                                                                         right_on=["period"], suffixes=("", "_t"))
    out = pd.concat([q, y], ignore_index=True)[["owner_id", "period", "value"]].assign(source="inherited")
    return out.drop_duplicates(["owner_id", "period"], keep="first")


def _parents(owners: pd.DataFrame) -> pd.Series:
    """Each owner's manager id (NA at the top), indexed by owner id."""
    mgr = owners["manager_id"].astype("string").str.strip()
    return pd.Series(mgr.where(mgr.str.len() > 0).to_numpy(), index=owners["owner_id"].astype(str).to_numpy())


def _depths(parent: pd.Series) -> pd.Series:
    """Depth of each owner in the hierarchy (0 at the top), computed level by level."""
    depth = pd.Series(np.where(parent.isna() | ~parent.isin(parent.index), 0, -1), index=parent.index)
    level = 0
    while (depth < 0).any() and level < len(depth):
        nxt = depth.index[(depth < 0) & parent.isin(depth.index[depth == level]).to_numpy()]
        depth[nxt] = level + 1
        level += 1
    return depth


def _hierarchy(ctx: CubeContext) -> tuple[pd.Series, pd.Series]:
    """Each owner's manager id and depth (`_parents`, `_depths`), computed once per run."""
    if "target_hierarchy" not in ctx.cache:
        parent = _parents(ctx.owners)
        ctx.cache["target_hierarchy"] = (parent, _depths(parent))
    return cast("tuple[pd.Series, pd.Series]", ctx.cache["target_hierarchy"])


def _roll_up(ctx: CubeContext, own: pd.DataFrame, with_targets: set[str]) -> pd.DataFrame:
    """Add, for owners without any explicit target, the sum of their direct reports' targets, bottom-up."""
    parent, depth = _hierarchy(ctx)
    targeted = pd.Index(list(with_targets), dtype="str")
    resolved = own.copy()
    row_depth = resolved["owner_id"].map(depth).to_numpy(dtype="float64")  # a sum's owner is one level up
    for level in range(int(depth.max()), 0, -1):
        children = resolved[row_depth == level]
        sums = (children.assign(owner_id=children["owner_id"].map(parent)).dropna(subset=["owner_id"])
                .groupby(["owner_id", "period"], as_index=False)["value"].sum(min_count=1))
        sums = sums[~isin(sums["owner_id"], targeted)].assign(source="rolled_up")
        resolved = pd.concat([resolved, sums], ignore_index=True)
        row_depth = np.r_[row_depth, np.full(len(sums), level - 1, dtype="float64")]
    return resolved
