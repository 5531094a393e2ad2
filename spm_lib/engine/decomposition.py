"""Goal decomposition (SPEC §7): from the bookings target of the forward period Q down to action KPIs.

For every scope owner a small driver tree, each node with "required" (what the target implies given the scope's
historical rates over the trailing twelve months) next to "actual":

    bookings_target            target(Q)                                    vs bookings to date in Q
    └ remaining_target         max(target(Q) − bookings to date, 0)         vs open pipeline closing in the rest of Q
      ├ deals_needed           ceil(remaining target / avg deal size)       vs deals won to date in Q
      │ └ deals_per_month      deals needed / months remaining              vs deals won per month (TTM)
      │   └ opps_per_month     deals per month / win rate                   vs opportunities created per month (TTM)
      │     ├ leads_per_month  opportunities per month / lead conversion    vs leads per month (TTM)
      │     └ opp_creation_deadline  end of Q − sales cycle days (days left from as_of; `deadline` holds the date)
      ├ max_discount           from the margin target (see `max_discount`)  vs average discount (TTM)
      └ max_sales_cost         cost-of-sales target % × target(Q)           vs cost of sales booked for Q

A missing input leaves its node (and the nodes below it) with required NaN and a `na_reason`, never 0.
Percentages (win rate, lead conversion, margin, discount, cost of sales) are in percent, like the KPIs.
The maths lives in `what_if`, a pure function of the per-owner inputs, so live sliders can recompute the tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from spm_lib.config import StatusBands
from spm_lib.engine.context import CubeContext
from spm_lib.engine.targets import attainment, resolve_targets, status
from spm_lib.util.frames import isin

TREE_COLUMNS = ["owner_id", "period", "node", "parent", "label", "unit", "required", "actual", "attainment",
                "status", "formula", "na_reason", "deadline"]
TTM = "TTM"
MONTHS_PER_YEAR = 12

# tree input column -> (KPI id, period role) read from the kpis frame; "ttm" rows are per trailing twelve months
KPI_INPUTS: dict[str, tuple[str, str]] = {
    "avg_deal_size": ("avg_deal_size", "ttm"),
    "win_rate": ("win_rate", "ttm"),
    "lead_conversion": ("lead_conversion_rate", "ttm"),
    "sales_cycle_days": ("sales_cycle_days", "ttm"),
    "deals_won_ttm": ("deals_won", "ttm"),
    "opps_created_ttm": ("opps_created", "ttm"),
    "leads_ttm": ("leads", "ttm"),
    "gross_margin": ("gross_margin_pct", "ttm"),
    "discount": ("avg_discount_pct", "ttm"),
    "bookings_to_date": ("bookings_to_date_q", "q"),
    "pipeline_open_value": ("pipeline_open_value", "q"),
}
LABELS = {
    "avg_deal_size": "average deal size", "win_rate": "win rate", "lead_conversion": "lead conversion",
    "sales_cycle_days": "sales cycle", "gross_margin": "gross margin", "discount": "average discount",
}


# ---------------------------------------------------------------- the maths
def max_discount(target_margin_pct: Any, margin_pct: Any, discount_pct: Any) -> Any:
    """Largest average discount (%) that still meets a margin target, from the historical margin and discount.

    With list price L, price A = L·(1 − d) and cost C, the margin is m = 1 − C/A. Historically
    C/A = 1 − m_h and A/L = 1 − d_h, so the margin at list price is m_L = 1 − C/L = 1 − (1 − m_h)(1 − d_h).
    Meeting a target margin m_t at discount d needs 1 − C/(L(1 − d)) ≥ m_t, i.e. (1 − m_L)/(1 − d) ≤ 1 − m_t, so
        d_max = 1 − (1 − m_L) / (1 − m_t) = 1 − (1 − m_h)(1 − d_h) / (1 − m_t).
    Example: m_h = 40 %, d_h = 10 % gives m_L = 46 %; a 40 % target allows 10 %, a 46 % target allows 0 %.
    A negative result means the target cannot be met even at list price. All inputs and the result in percent.
    """
    mt, mh, dh = (np.asarray(x, dtype="float64") / 100 for x in (target_margin_pct, margin_pct, discount_pct))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (1 - (1 - mh) * (1 - dh) / np.where(mt < 1, 1 - mt, np.nan)) * 100
    return float(out) if np.ndim(out) == 0 else out


def what_if(tree_inputs: pd.DataFrame | Mapping[str, Any], win_rate: float | None = None,
            avg_deal_size: float | None = None, sales_cycle_days: float | None = None,
            lead_conversion: float | None = None, *, bands: StatusBands | None = None) -> pd.DataFrame:
    """The driver tree recomputed from the inputs with some historical rates replaced (rates in percent)."""
    inp = pd.DataFrame([dict(tree_inputs)]) if isinstance(tree_inputs, Mapping) else tree_inputs.copy()
    changes = {"win_rate": win_rate, "avg_deal_size": avg_deal_size, "sales_cycle_days": sales_cycle_days,
               "lead_conversion": lead_conversion}
    for col, v in changes.items():
        if v is not None:
            inp[col] = float(v)
            inp[f"na_{col}"] = None
    return _tree(_with_defaults(inp), bands or StatusBands())


def _with_defaults(inp: pd.DataFrame) -> pd.DataFrame:
    """Inputs with every expected column present (NaN values, no reasons) and numbers as float."""
    inp = inp.reset_index(drop=True).copy()
    numeric = ["target", "bookings_to_date", "deals_won_to_date", "pipeline_open_value", "months_remaining",
               "avg_deal_size", "win_rate", "lead_conversion", "sales_cycle_days", "deals_won_ttm",
               "opps_created_ttm", "leads_ttm", "margin_target", "gross_margin", "discount", "cos_target",
               "sales_cost"]
    for c in numeric:
        inp[c] = pd.to_numeric(inp[c], errors="coerce").astype("float64") if c in inp else np.nan
        if f"na_{c}" not in inp:
            inp[f"na_{c}"] = None
    for c in ("owner_id", "period"):
        if c not in inp:
            inp[c] = None
    for c in ("q_end", "as_of"):
        inp[c] = pd.to_datetime(inp[c]) if c in inp else pd.NaT
    return inp


def _first(*reasons: pd.Series | str | None, index: pd.Index) -> pd.Series:
    """Per row, the first non-empty reason."""
    out = pd.Series(None, index=index, dtype=object)
    for r in reasons:
        s = r if isinstance(r, pd.Series) else pd.Series(r, index=index, dtype=object)
        out = out.where(out.notna(), s)
    return out


def _reason(inp: pd.DataFrame, col: str, zero_bad: bool = False) -> pd.Series:
    """Why input `col` cannot be used (None when it can): missing, or 0 / negative where it divides."""
    value = inp[col]
    label = LABELS.get(col, col.replace("_", " "))
    given = inp[f"na_{col}"].where(inp[f"na_{col}"].notna(), f"no {label} over the trailing 12 months")
    out = pd.Series(None, index=inp.index, dtype=object).where(value.notna(), given)
    if zero_bad:
        out = out.where(~(value.notna() & (value <= 0)), f"{label} over the trailing 12 months is 0")
    return out


def _tree(inp: pd.DataFrame, bands: StatusBands) -> pd.DataFrame:
    """Build every node of every owner's tree from complete inputs (one vectorised step per node)."""
    idx = inp.index
    r_target = _first(inp["na_target"], pd.Series(None, index=idx, dtype=object).where(
        inp["target"].notna(), "no bookings target for " + inp["period"].astype(str)), index=idx)
    to_date = inp["bookings_to_date"].fillna(0.0)
    remaining = (inp["target"] - to_date).clip(lower=0)
    r_ads = _reason(inp, "avg_deal_size", zero_bad=True)
    r_months = pd.Series(None, index=idx, dtype=object).where(inp["months_remaining"] > 0,
                                                              "no month left in the period")
    r_win = _reason(inp, "win_rate", zero_bad=True)
    r_conv = _reason(inp, "lead_conversion", zero_bad=True)
    r_cycle = _reason(inp, "sales_cycle_days")
    with np.errstate(divide="ignore", invalid="ignore"):
        deals = np.ceil((remaining / inp["avg_deal_size"]).round(9))
        deals_pm = deals / inp["months_remaining"]
        opps_pm = deals_pm / (inp["win_rate"] / 100)
        leads_pm = opps_pm / (inp["lead_conversion"] / 100)
    deadline = inp["q_end"] - pd.to_timedelta(inp["sales_cycle_days"], unit="D")
    days_left = (deadline - inp["as_of"]).dt.days.astype("float64")
    r_deals = _first(r_target, r_ads, index=idx)
    r_dpm = _first(r_deals, r_months, index=idx)
    r_opps = _first(r_dpm, r_win, index=idx)
    r_margin_t = pd.Series(None, index=idx, dtype=object).where(inp["margin_target"].notna(),
                                                                "no gross_margin_pct target for the period")
    r_disc = _first(inp["na_margin_target"], r_margin_t, _reason(inp, "gross_margin"), _reason(inp, "discount"),
                    index=idx)
    r_cos_t = pd.Series(None, index=idx, dtype=object).where(inp["cos_target"].notna(),
                                                             "no cost_of_sales_pct target for the period")
    per_month = MONTHS_PER_YEAR
    nodes = [
        ("bookings_target", None, "Bookings target", "currency", inp["target"], inp["bookings_to_date"], None,
         "target(Q); actual: bookings to date in Q", r_target),
        ("remaining_target", "bookings_target", "Remaining target", "currency", remaining,
         inp["pipeline_open_value"], "higher",
         "max(target(Q) − bookings to date, 0); actual: open pipeline closing in the rest of Q", r_target),
        ("deals_needed", "remaining_target", "Deals needed", "count", deals, inp["deals_won_to_date"], None,
         "ceil(remaining target / average deal size); actual: deals won to date in Q", r_deals),
        ("deals_per_month", "deals_needed", "Deals needed per month", "count", deals_pm,
         inp["deals_won_ttm"] / per_month, "higher",
         "deals needed / months remaining; actual: deals won per month over the last 12 months", r_dpm),
        ("opps_per_month", "deals_per_month", "Opportunities needed per month", "count", opps_pm,
         inp["opps_created_ttm"] / per_month, "higher",
         "deals per month / win rate; actual: opportunities created per month over the last 12 months", r_opps),
        ("leads_per_month", "opps_per_month", "Leads needed per month", "count", leads_pm,
         inp["leads_ttm"] / per_month, "higher",
         "opportunities per month / lead conversion; actual: leads per month over the last 12 months",
         _first(r_opps, r_conv, index=idx)),
        ("opp_creation_deadline", "opps_per_month", "Days left to create opportunities that close in Q", "days",
         days_left, pd.Series(np.nan, index=idx), None,
         "end of Q − sales cycle days, counted from as-of (opportunities created later cannot close in Q)",
         r_cycle),
        ("max_discount", "remaining_target", "Maximum average discount", "pct",
         pd.Series(max_discount(inp["margin_target"], inp["gross_margin"], inp["discount"]), index=idx),
         inp["discount"], "lower",
         ("1 − (1 − margin)(1 − discount) / (1 − target margin), margin and discount over the last 12 months; "
          "actual: average discount over the last 12 months"), r_disc),
        ("max_sales_cost", "remaining_target", "Maximum cost of sales", "currency",
         inp["cos_target"] / 100 * inp["target"], inp["sales_cost"], "lower",
         "cost-of-sales target % × target(Q); actual: cost of sales booked for Q",
         _first(inp["na_cos_target"], r_cos_t, r_target, index=idx)),
    ]
    frames = []
    for node, parent, label, unit, required, actual, direction, formula, reason in nodes:
        req = pd.Series(required, index=idx, dtype="float64").where(reason.isna())
        act = pd.Series(actual, index=idx, dtype="float64")
        att = attainment(act, req, direction) if direction else pd.Series(np.nan, index=idx)
        frames.append(pd.DataFrame({
            "owner_id": inp["owner_id"], "period": inp["period"], "node": node, "parent": parent, "label": label,
            "unit": unit, "required": req, "actual": act, "attainment": att, "status": status(att, bands),
            "formula": formula, "na_reason": reason,
            "deadline": deadline.where(reason.isna()) if node == "opp_creation_deadline" else pd.NaT}))
    out = pd.concat(frames, ignore_index=True)
    out["deadline"] = pd.to_datetime(out["deadline"])
    return out[TREE_COLUMNS]


# ---------------------------------------------------------------- inputs from the cube
def tree_inputs(ctx: CubeContext, kpis: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """One row per scope owner with every input of the driver tree (targets, TTM rates, actuals, reasons)."""
    q = ctx.windows.forward
    label = str(q.label)
    owners = pd.Index(ctx.owners["owner_id"].astype(str).unique(), name="owner_id")
    inp = pd.DataFrame({"owner_id": owners, "period": label, "q_end": pd.Timestamp(q.end),
                        "as_of": pd.Timestamp(ctx.as_of),
                        "months_remaining": float(ctx.windows.months_remaining)})
    for col, metric in (("target", "bookings"), ("margin_target", "gross_margin_pct"),
                        ("cos_target", "cost_of_sales_pct")):
        inp[col] = inp["owner_id"].map(_q_target(ctx, targets, metric, q)).astype("float64")
    rows = _input_rows(kpis, [TTM, label])
    for col, (kpi, role) in KPI_INPUTS.items():
        r = rows[(rows["kpi"] == kpi) & (rows["period"] == (TTM if role == "ttm" else label))]
        r = r.drop_duplicates("owner_id").set_index("owner_id")
        inp[col] = inp["owner_id"].map(r["value"]).astype("float64")
        reason = r["na_reason"] if "na_reason" in r else pd.Series(dtype=object)
        inp[f"na_{col}"] = inp["owner_id"].map(reason).astype(object).where(lambda s: s.notna(), None)
    actual = _to_date_actuals(ctx, q)
    inp["deals_won_to_date"] = inp["owner_id"].map(actual["deals"]).fillna(0.0).astype("float64")
    inp["bookings_to_date"] = inp["bookings_to_date"].fillna(inp["owner_id"].map(actual["bookings"]).fillna(0.0))
    inp["sales_cost"] = inp["owner_id"].map(_q_costs(ctx, q)).astype("float64") if ctx.data.has("costs") \
        else np.nan
    return inp


def _input_rows(kpis: pd.DataFrame, periods: list[str]) -> pd.DataFrame:
    """The rows of `kpis` without dim of the KPIs and periods the tree reads (the columns it reads only)."""
    keep = isin(kpis["kpi"], sorted({kpi for kpi, _ in KPI_INPUTS.values()})) & isin(kpis["period"], periods)
    if "dim" in kpis:
        keep &= kpis["dim"].isna()
    return kpis.loc[keep, [c for c in ("owner_id", "kpi", "period", "value", "na_reason") if c in kpis]]


def decompose(ctx: CubeContext, kpis: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """The driver tree of every scope owner for the forward period Q (decomposition.parquet rows)."""
    return what_if(tree_inputs(ctx, kpis, targets), bands=ctx.cfg.kpis.status)


def _q_target(ctx: CubeContext, targets: pd.DataFrame, metric: str, q: Any) -> pd.Series:
    """Target of `metric` for Q per owner: from the resolved targets given, else resolved now."""
    t = targets[(targets["metric"] == metric) & (targets["period"] == str(q.label))] \
        if {"metric", "period"} <= set(targets.columns) else targets.iloc[0:0]
    if t.empty:
        t = resolve_targets(ctx, metric, [q])
    return t.drop_duplicates("owner_id").set_index("owner_id")["target"] if not t.empty else pd.Series(dtype=float)


def _to_date_actuals(ctx: CubeContext, q: Any) -> pd.DataFrame:
    """Deals won and bookings per scope with close date from the start of Q through as_of (the as-of snapshot)."""
    start, end = pd.Timestamp(q.start), pd.Timestamp(ctx.as_of)
    empty = pd.DataFrame({"deals": pd.Series(dtype="float64"), "bookings": pd.Series(dtype="float64")})
    if start > end:
        return empty
    df = ctx.con.execute(f"""
        SELECT a.scope_id AS owner_id, count(*)::DOUBLE AS deals, sum(coalesce(f.amount, 0))::DOUBLE AS bookings
        FROM opp f {ctx.scope_join('f', 'f.close_date')}
        WHERE coalesce(f.is_won, FALSE) AND CAST(f.close_date AS DATE) BETWEEN ? AND ?
        GROUP BY a.scope_id""", [start.date(), end.date()]).df()
    return df.set_index("owner_id") if not df.empty else empty


def _q_costs(ctx: CubeContext, q: Any) -> pd.Series:
    """Cost of sales booked for periods starting in Q, per scope."""
    df = ctx.con.execute(f"""
        SELECT a.scope_id AS owner_id, sum(f.amount)::DOUBLE AS cost
        FROM costs f {ctx.scope_join('f', 'f.period_start')}
        WHERE CAST(f.period_start AS DATE) BETWEEN ? AND ?
        GROUP BY a.scope_id""", [pd.Timestamp(q.start).date(), pd.Timestamp(q.end).date()]).df()
    return df.set_index("owner_id")["cost"] if not df.empty else pd.Series(dtype="float64")
