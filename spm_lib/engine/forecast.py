"""The forward look (SPEC §4-5): calibrated win probabilities, weighted pipeline, forecast vs target, stage conversion.

Every number is computed for every owner scope at once: facts are attributed to scopes through the ancestor map
(own deals plus every direct report's scope, recursively) and aggregated per scope; ratios are recomputed from the
scope's own numerator and denominator, never averaged.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from spm_lib.config import StagesConfig, WeakStageRule
from spm_lib.engine.context import CubeContext
from spm_lib.metrics.kpis import not_available
from spm_lib.util.frames import day_of, join_positions, map_values, positions

MIN_DEALS = 20
ROW_COLUMNS = ["owner_id", "period", "kpi", "dim", "dim_value", "value", "target", "available", "na_reason"]
UNKNOWN = "(not set)"


# ---------------------------------------------------------------- shared helpers
def _bounds(window: Any) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(start, end) of a period-like window (object with start/end, or a pair), None when empty."""
    if window is None:
        return None
    start, end = (window.start, window.end) if hasattr(window, "start") else window
    if start is None or end is None or pd.Timestamp(start) > pd.Timestamp(end):
        return None
    return pd.Timestamp(start), pd.Timestamp(end)


def _between(dates: pd.Series, window: Any) -> pd.Series:
    """Boolean mask: dates (day precision) inside the inclusive window; all False for an empty window."""
    b = _bounds(window)
    if b is None:
        return pd.Series(False, index=dates.index)
    d = day_of(pd.to_datetime(dates))
    return (d >= b[0]) & (d <= b[1])


def _flag(s: pd.Series) -> pd.Series:
    """A nullable boolean column as plain bool (missing = False)."""
    return s.astype("boolean").fillna(False).astype(bool)


def _scope_totals(ctx: CubeContext, facts: pd.DataFrame, date_col: str | None, keys: list[str],
                  sums: list[str]) -> pd.DataFrame:
    """Per scope_id (and `keys`): n (facts) and the sum of each of `sums`, every fact counted in each scope it
    belongs to on the hierarchy valid at the day of `date_col` (as_of when None); sorted by scope_id, keys."""
    when = (day_of(pd.to_datetime(facts[date_col])) if date_col is not None
            else pd.Series(pd.Timestamp(ctx.as_of), index=facts.index))
    f = pd.DataFrame({"owner_id": facts["owner_id"], "_when": when.astype("datetime64[ns]").to_numpy(),
                      **{c: facts[c] for c in dict.fromkeys(keys + sums)}})
    ctx.con.register("_scope_facts", f)
    cols = "".join(f', f."{c}"' for c in keys)
    totals = "".join(f', coalesce(fsum(f."{c}"), 0.0) AS "{c}"' for c in sums)
    try:
        return ctx.con.execute(f"""
            SELECT a.scope_id{cols}, count(*) AS n{totals}
            FROM _scope_facts f JOIN ancestors a ON a.owner_id = f.owner_id
              AND (a.valid_from IS NULL OR f._when IS NULL OR f._when >= a.valid_from)
              AND (a.valid_to IS NULL OR f._when IS NULL OR f._when <= a.valid_to)
            GROUP BY ALL ORDER BY ALL""").df()
    finally:
        ctx.con.unregister("_scope_facts")


def _fact_scopes(ctx: CubeContext, owner: pd.Series, when: np.ndarray) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """(fact position, scope code) of every fact and scope it counts in, as `_scope_totals` joins them: the ancestor
    rows of the fact's owner valid on its day `when` (datetime64[ns]; NaT: any); with the scope ids of the codes."""
    anc = ctx.ancestors
    own, owners = pd.factorize(anc["owner_id"])
    scope, scope_ids = pd.factorize(anc["scope_id"])
    fact, row = join_positions(positions(owner, owners), own)
    for col, until in (("valid_from", False), ("valid_to", True)):
        bound, day = anc[col].to_numpy(dtype="datetime64[ns]")[row], when[fact]
        valid = np.isnat(bound) | np.isnat(day) | ((day <= bound) if until else (day >= bound))
        fact, row = fact[valid], row[valid]
    return fact, scope[row], pd.Index(scope_ids)


def _text_where(cond: pd.Series, text: str) -> pd.Series:
    """`text` where cond holds, else None (an object Series aligned with cond)."""
    return pd.Series(text, index=cond.index, dtype="object").where(cond.astype(bool), None)


def _scopes(ctx: CubeContext) -> pd.Index:
    """Every scope owner id of the run."""
    return pd.Index(ctx.owners["owner_id"].astype(str).unique(), name="owner_id")


def _rows(values: pd.Series, kpi: str, period: str, **cols: Any) -> pd.DataFrame:
    """KPI rows from a value per scope owner (index owner_id); extra columns given as scalars or aligned Series."""
    df = pd.DataFrame({"owner_id": values.index.astype(str), "period": period, "kpi": kpi, "dim": None,
                       "dim_value": None, "value": values.to_numpy(dtype="float64"), "target": np.nan,
                       "available": True, "na_reason": None})
    for name, v in cols.items():
        df[name] = v.to_numpy() if isinstance(v, pd.Series) else v
    df["na_reason"] = df["na_reason"].astype("object").where(df["na_reason"].notna(), None)
    return df[ROW_COLUMNS]


def _open_stage_table(ctx: CubeContext) -> pd.DataFrame:
    """The configured open stages: stage, stage_index (0-based process order), config probability."""
    st = ctx.cfg.stages.stages
    return pd.DataFrame({"stage": [s.name for s in st], "stage_index": range(len(st)),
                         "config_probability": [float(s.probability) for s in st]})


def _has_history(ctx: CubeContext) -> bool:
    return ctx.data.has("opportunity_history")


def _furthest(ctx: CubeContext) -> pd.Series:
    """Per snapshot deal, the index of the furthest open stage it had reached as of as_of (-1: none); it reached
    every open stage up to that one."""
    from spm_lib.data.asof import furthest_reached

    history = ctx.data.tables.get("opportunity_history")
    from_history = history is not None and not history.empty
    return furthest_reached(ctx.snapshot, from_history, ctx.cfg.stages).fillna(-1).astype("int64")


# ---------------------------------------------------------------- win probabilities
def win_probabilities(ctx: CubeContext, min_deals: int = MIN_DEALS) -> pd.DataFrame:
    """Win probability per open stage, calibrated at org level (one table for the whole company): see
    `stage_win_probabilities`, on the run's snapshot."""
    return stage_win_probabilities(ctx.snapshot, _has_history(ctx), ctx.cfg.stages, ctx.as_of, min_deals,
                                   furthest=_furthest(ctx))


def stage_win_probabilities(snap: pd.DataFrame, from_history: bool, stages_cfg: StagesConfig, as_of: date,
                            min_deals: int = MIN_DEALS, furthest: pd.Series | None = None) -> pd.DataFrame:
    """Win probability per open stage from an as-of snapshot (`from_history`: it was reconstructed from history).

    probability = won / n over the deals closed in the 12 months up to as_of that had reached the stage; the
    configured probability (stages.yml) is used when fewer than `min_deals` such deals exist or there is no history.
    Columns: stage, stage_index, probability, source ("calibrated" | "config"), n (closed deals that reached it).
    `furthest`: each deal's furthest stage index (-1: none) when the caller has it already.
    """
    from spm_lib.data.asof import furthest_reached

    st = stages_cfg.stages
    stages = pd.DataFrame({"stage": [s.name for s in st], "stage_index": range(len(st)),
                           "config_probability": [float(s.probability) for s in st]})
    if furthest is None:
        furthest = furthest_reached(snap, from_history, stages_cfg).fillna(-1).astype("int64")
    start = pd.Timestamp(_one_year_before(as_of) + timedelta(days=1))
    in_year = _flag(snap["is_closed"]) & _between(snap["close_date"], (start, pd.Timestamp(as_of)))
    closed = snap[["is_won"]][in_year]  # the one column needed: no copy of the snapshot's text columns
    reached = furthest[closed.index].to_numpy()
    won = _flag(closed["is_won"]).to_numpy()
    out = stages.copy()
    out["n"] = _reached_counts(reached, len(stages))
    out["won"] = _reached_counts(reached[won], len(stages))
    calibrated = (out["n"] >= min_deals) & (out["n"] > 0) & from_history
    out["probability"] = np.where(calibrated, out["won"] / out["n"].where(out["n"] > 0), out["config_probability"])
    out["source"] = np.where(calibrated, "calibrated", "config")
    return out[["stage", "stage_index", "probability", "source", "n"]].reset_index(drop=True)


def _reached_counts(furthest: np.ndarray, n_stages: int) -> np.ndarray:
    """How many deals reached each open stage, from each deal's furthest stage index (-1: none)."""
    per = np.bincount(furthest[furthest >= 0], minlength=n_stages)[:n_stages]
    return per[::-1].cumsum()[::-1].astype(int)


def _one_year_before(d: date) -> date:
    try:
        return d.replace(year=d.year - 1)
    except ValueError:  # 29 February
        return d.replace(year=d.year - 1, day=28)


# ---------------------------------------------------------------- forward look
def forward_look(ctx: CubeContext, targets: pd.DataFrame, probabilities: pd.DataFrame | None = None,
                 calibrated: pd.DataFrame | None = None) -> pd.DataFrame:
    """Forecast vs target of the forward period Q for every scope: pipeline, weighted pipeline, gap, coverage.

    `calibrated` (calibration.cube_forecast: rest, p10_rest, p90_rest per scope): the expected result is the
    bookings to date plus its `rest` (else plus the weighted pipeline), with rows of its range (dim "range").
    """
    win = ctx.windows
    q = win.forward
    label = str(q.label)
    probs = win_probabilities(ctx) if probabilities is None else probabilities
    snap = ctx.snapshot
    is_open = ~_flag(snap["is_closed"])
    cols = [c for c in ("owner_id", "amount", "stage", "close_date", "forecast_category") if c in snap]  # used
    pipe = snap.loc[is_open & _between(snap["close_date"], win.remaining), cols]
    pipe["amount"] = pipe["amount"].astype("float64").fillna(0.0)
    probability = map_values(pipe["stage"], probs.set_index("stage")["probability"])
    pipe["probability"] = probability.astype("float64").fillna(0.0)
    pipe["weighted"] = pipe["amount"] * pipe["probability"]
    won = snap.loc[_flag(snap["is_won"]) & _between(snap["close_date"], win.to_date), cols]
    won["amount"] = won["amount"].astype("float64").fillna(0.0)

    scopes = _scopes(ctx)
    ps = _scope_totals(ctx, pipe, None, [], ["amount", "weighted"]).set_index("scope_id")
    open_value = ps["amount"].reindex(scopes, fill_value=0.0)
    weighted = ps["weighted"].reindex(scopes, fill_value=0.0)
    to_date = _scope_totals(ctx, won, "close_date", [], ["amount"]).set_index("scope_id")["amount"].reindex(
        scopes, fill_value=0.0)
    expected = to_date + weighted
    if calibrated is not None:  # the calibrated forecast of what is still to come (engine/calibration)
        rest = calibrated.reindex(scopes).fillna(0.0)
        expected = to_date + rest["rest"]

    target = _q_target(targets, label).reindex(scopes)
    remaining_target = target - to_date
    months = float(getattr(win, "months_remaining", 0) or 0)
    run_rate = remaining_target.clip(lower=0) / months if months > 0 else pd.Series(np.nan, index=scopes)
    denom = remaining_target.clip(lower=0)
    coverage = open_value / denom.where(denom > 0)
    no_target = target.isna()
    absent = not ctx.data.has("targets") and (targets is None or targets.empty)  # no table: SPEC's "not available"
    no_targets = ["targets"] if absent else []
    no_target_reason = not_available(no_targets) if no_targets else f"no bookings target for {label}"
    met_reason = f"the bookings target for {label} is already met: nothing left to cover"

    stage_ok = ctx.data.has("opportunities", "stage") or ctx.data.has("opportunity_history", "stage")
    no_stage = not_available(["opportunities.stage"])

    def needs_target(values: pd.Series, kpi: str, extra_reason: pd.Series | None = None) -> pd.DataFrame:
        reason = _text_where(no_target, no_target_reason)
        if extra_reason is not None:
            reason = reason.where(no_target, extra_reason)
        return _rows(values.where(~no_target), kpi, label, available=~no_target, na_reason=reason)

    parts = [
        _rows(open_value, "pipeline_open_value", label),
        _rows(weighted, "weighted_pipeline", label) if stage_ok else _na(scopes, "weighted_pipeline", label, no_stage),
        _rows(to_date, "bookings_to_date_q", label, target=target),
        _rows(expected, "forecast_expected", label, target=target) if stage_ok
        else _na(scopes, "forecast_expected", label, no_stage),
        needs_target(target - expected, "gap_to_target") if stage_ok
        else _na(scopes, "gap_to_target", label, not_available([*no_targets, "opportunities.stage"])),
        needs_target(run_rate, "required_run_rate"),
        needs_target(coverage, "pipeline_coverage",
                     _text_where(denom <= 0, met_reason)),
        _breakdowns(ctx, pipe, label, stage_ok, ctx.data.has("opportunities", "forecast_category")),
    ]
    if calibrated is not None and stage_ok:
        parts += [_rows(to_date + rest[f"{p.lower()}_rest"], "forecast_expected", label, dim="range",
                        dim_value=p) for p in ("P10", "P90")]
    return pd.concat(parts, ignore_index=True)


def _q_target(targets: pd.DataFrame, label: str) -> pd.Series:
    """The bookings target of period `label` per owner (index owner_id)."""
    if targets is None or targets.empty:
        return pd.Series(dtype="float64")
    t = targets[(targets["metric"].astype(str) == "bookings") & (targets["period"].astype(str) == label)]
    t = t.dropna(subset=["target"])
    return t.groupby(t["owner_id"].astype(str))["target"].last().astype("float64")


def _na(scopes: pd.Index, kpi: str, period: str, reason: str) -> pd.DataFrame:
    """Not-available rows (value NaN) for every scope."""
    return _rows(pd.Series(np.nan, index=scopes), kpi, period, available=False, na_reason=reason)


def _breakdowns(ctx: CubeContext, ps: pd.DataFrame, label: str, by_stage: bool, by_category: bool
                ) -> pd.DataFrame:
    """pipeline_open_value per scope split by stage, close month and (when present) forecast category."""
    dims = {"close_month": _month_labels(ps["close_date"])}
    if by_stage:
        dims["stage"] = ps["stage"].astype("string").fillna(UNKNOWN)
    if by_category and "forecast_category" in ps.columns:
        dims["forecast_category"] = ps["forecast_category"].astype("string").str.strip().fillna(UNKNOWN)
    frames = []
    for dim, key in dims.items():
        g = _scope_totals(ctx, ps.assign(_k=key.astype(str)), None, ["_k"], ["amount"])
        frames.append(pd.DataFrame({"owner_id": g["scope_id"].astype(str), "period": label,
                                    "kpi": "pipeline_open_value", "dim": dim, "dim_value": g["_k"],
                                    "value": g["amount"].astype("float64"), "target": np.nan,
                                    "available": True, "na_reason": None}))
    return pd.concat(frames, ignore_index=True)[ROW_COLUMNS]


def _month_labels(dates: pd.Series) -> pd.Series:
    """`dt.strftime("%Y-%m")` of a date column, formatted once per distinct month."""
    month, at = np.unique(pd.to_datetime(dates).to_numpy(dtype="datetime64[M]"), return_inverse=True)
    labels = pd.DatetimeIndex(month.astype("datetime64[ns]")).strftime("%Y-%m")
    return pd.Series(labels.take(at.ravel()), index=dates.index)


# ---------------------------------------------------------------- stage conversion
def stage_conversion(ctx: CubeContext) -> pd.DataFrame:
    """Per scope and open stage, % of deals that reached the stage and went on (a later open stage or won).

    Counted over deals that reached the stage and are no longer in it as of as_of, whose close date (closed deals)
    or last activity (open deals: last history change or activity up to as_of) falls in the trend window.
    Needs opportunity_history: with only current stages the path of a deal is unknown.
    """
    label = str(ctx.windows.closed.label)
    scopes = _scopes(ctx)
    if not _has_history(ctx):
        return pd.concat([_na(scopes, kpi, label, not_available(["opportunity_history"]))
                          for kpi in ("stage_conversion", "stage_exits")], ignore_index=True)
    stages = _open_stage_table(ctx)
    idx = stages.set_index("stage")["stage_index"]
    snap = ctx.snapshot
    closed = _flag(snap["is_closed"])
    event = pd.to_datetime(snap["close_date"]).where(closed, pd.Series(last_touch_days(ctx), index=snap.index))
    window = (ctx.windows.trend[0].start, ctx.as_of)
    furthest = _furthest(ctx).to_numpy()
    keep = np.flatnonzero(_between(event, window).to_numpy() & (furthest >= 0))
    furthest = furthest[keep]
    current = map_values(snap["stage"].iloc[keep].astype("string"), idx).astype("float64").fillna(-1).to_numpy("int64")
    won = _flag(snap["is_won"]).to_numpy()[keep]
    # deals grouped by (furthest, current, won): a deal left each stage it reached but is not in, and went on from
    # it when it reached a later stage or was won
    radix = int(current.max(initial=-1)) + 2
    group, combos = pd.factorize((furthest * radix + current + 1) * 2 + won)
    f, cur, w = (combos // 2 // radix)[:, None], (combos // 2 % radix - 1)[:, None], (combos % 2 == 1)[:, None]
    k = stages["stage_index"].to_numpy()[None, :]
    left = (k <= f) & (k != cur)
    went_on = left & ((k < f) | w)
    day = day_of(pd.to_datetime(event.iloc[keep])).to_numpy(dtype="datetime64[ns]")
    fact, scope, scope_ids = _fact_scopes(ctx, snap["owner_id"].iloc[keep], day)
    n = np.bincount(scope * len(combos) + group[fact], minlength=len(scope_ids) * len(combos))
    n = n.reshape(len(scope_ids), len(combos))  # deals per scope and group
    at = scope_ids.get_indexer(scopes)
    lefts, wents = (np.where(at[:, None] >= 0, (n @ m.astype("int64"))[np.maximum(at, 0)] if len(n) else 0, 0)
                    for m in (left, went_on))
    per = pd.DataFrame({"scope_id": np.repeat(scopes.to_numpy(), len(stages)),
                        "stage": np.tile(stages["stage"].to_numpy(), len(scopes)),
                        "went_on": wents.ravel(), "left": lefts.ravel()})
    value = 100.0 * per["went_on"] / per["left"].where(per["left"] > 0)
    reason = _text_where(per["left"] == 0, "no deal left this stage in the trend window")
    out = pd.DataFrame({"owner_id": per["scope_id"].astype(str), "period": label, "kpi": "stage_conversion",
                        "dim": "stage", "dim_value": per["stage"].astype(str), "value": value.astype("float64"),
                        "target": np.nan, "available": True, "na_reason": reason})
    exits = out.assign(kpi="stage_exits", value=per["left"].astype("float64"), na_reason=None)
    return pd.concat([out, exits], ignore_index=True)[ROW_COLUMNS]


def last_touch_days(ctx: CubeContext) -> np.ndarray:
    """Per snapshot deal, the day of its last history change or logged activity up to the end of as_of (NaT: none)."""
    last = ctx.last_activity()
    h = ctx.sorted_history()
    if h is None or not len(h.code):
        return last
    row = h.rows_of(ctx.history_codes())  # each deal's last history row up to as_of: its latest change
    changed = np.where(row >= 0, h.changed_at[np.maximum(row, 0)], np.datetime64("NaT", "ns"))
    changed = changed.astype("datetime64[D]").astype("datetime64[ns]")  # the day (NaT stays NaT)
    return np.where(np.isnat(last) | (changed > last), changed, last)


def weak_stage(conv: pd.DataFrame, owner_id: str, benchmark_owner_id: str, rule: WeakStageRule,
               worth: dict[str, float] | None = None) -> dict[str, Any] | None:
    """The stage converting materially and credibly worse than the rest of the benchmark scope, or None.

    From the cube's stage_conversion and stage_exits rows (dim stage) of the owner and of the benchmark scope (the
    manager's team, which holds the owner's deals: the owner is compared with the others). A stage qualifies when
    the owner's deals leaving it number at least `rule.min_deals`, their rate is at least `rule.margin_points`
    below the others', and a one-sided two-proportion z-test says so at `rule.alpha`. `worth`: bookings one deal
    going on from each stage is worth; the stage kept is the one costing most (deals lost × worth; deals lost
    without `worth`)."""
    c = conv[conv["dim"] == "stage"]
    counts = {}
    for who in (owner_id, benchmark_owner_id):
        mine = c[c["owner_id"].astype(str) == str(who)]
        wide = mine.pivot_table(index="dim_value", columns="kpi", values="value", aggfunc="first")
        if not {"stage_conversion", "stage_exits"} <= set(wide.columns):
            return None
        counts[who] = wide
    own, bench = counts[owner_id], counts[benchmark_owner_id]
    m = own.join(bench.add_suffix("_bench"), how="inner").dropna()
    n1 = m["stage_exits"]
    went1 = m["stage_conversion"] / 100 * n1
    n0 = m["stage_exits_bench"] - n1  # the rest of the benchmark scope
    went0 = m["stage_conversion_bench"] / 100 * m["stage_exits_bench"] - went1
    m = m.assign(n=n1, p_own=went1 / n1.where(n1 > 0), n_rest=n0, p_rest=went0 / n0.where(n0 > 0))
    m = m[(m["n"] >= rule.min_deals) & (m["n_rest"] > 0)].dropna(subset=["p_own", "p_rest"])
    m = m[(m["p_rest"] - m["p_own"]) * 100 >= rule.margin_points]
    if m.empty:
        return None
    pooled = (m["p_own"] * m["n"] + m["p_rest"] * m["n_rest"]) / (m["n"] + m["n_rest"])
    se = np.sqrt(pooled * (1 - pooled) * (1 / m["n"] + 1 / m["n_rest"]))
    z = (m["p_rest"] - m["p_own"]) / se.where(se > 0)
    m = m.assign(p_value=[0.5 * math.erfc(v / math.sqrt(2)) if pd.notna(v) else 1.0 for v in z])
    m = m[m["p_value"] <= rule.alpha]
    if m.empty:
        return None
    m = m.assign(lost=(m["p_rest"] - m["p_own"]) * m["n"])
    m = m.assign(cost=m["lost"] * m.index.map(lambda s: (worth or {}).get(str(s), np.nan)))
    best = m.sort_values(["cost" if worth else "lost"], ascending=False, kind="stable").iloc[0]
    return {"stage": str(best.name), "rate": 100 * float(best["p_own"]), "benchmark_rate": 100 * float(best["p_rest"]),
            "deals": int(best["n"]), "lost_deals": float(best["lost"]),
            "cost": float(best["cost"]) if pd.notna(best["cost"]) else None, "p_value": float(best["p_value"]),
            "owner_id": str(owner_id), "benchmark_owner_id": str(benchmark_owner_id)}


def stage_worth(probabilities: pd.DataFrame, deal_size: float) -> dict[str, float]:
    """Bookings one deal going on from each open stage is worth: the next stage's win probability × `deal_size`
    (the last open stage goes on to a win: the whole deal size)."""
    p = probabilities.sort_values("stage_index")
    nxt = p["probability"].shift(-1).fillna(1.0).to_numpy(dtype="float64")
    return {str(s): float(q * deal_size) for s, q in zip(p["stage"], nxt, strict=True)}
