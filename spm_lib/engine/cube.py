"""The cube: every KPI, trust check, forecast and target for every owner scope of one as-of and cadence, in one pass.

Facts are attributed to scopes by joining the ancestor map (an owner's scope is their own facts plus their direct
reports' scopes, recursively), and aggregated per scope in DuckDB: additive KPIs of a manager are the sum of their
parts by construction, ratios are recomputed from the scope's own numerator and denominator.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from spm_lib.config import Config
from spm_lib.data.asof import created_by
from spm_lib.data.quality import FINDING_COLUMNS
from spm_lib.domain.contract import Dataset
from spm_lib.domain.periods import Period
from spm_lib.domain.stages import Stages
from spm_lib.engine import backtest, calibration, comparisons, decomposition, forecast, movement, targets, trust
from spm_lib.engine.context import (
    KPI_COLUMNS,
    CubeContext,
    all_columns,
    as_of_date,
    build_context,
)
from spm_lib.engine.targets import attainment, status
from spm_lib.engine.trust import last_full_month
from spm_lib.metrics import kpis as registry
from spm_lib.util.frames import ascending_text, distinct_text_order, map_values, one_chunk, positions, value_ranks
from spm_lib.util.tasks import in_background


@dataclass
class Cube:
    """The numbers of one run: KPI rows, trust results and offending rows, decomposition, facts."""

    kpis: pd.DataFrame
    trust: pd.DataFrame
    trust_rows: pd.DataFrame
    decomposition: pd.DataFrame
    facts: pd.DataFrame
    probabilities: pd.DataFrame
    owners: pd.DataFrame
    quality: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)  # cube.json: JSON values
    # per scope, the steps of the pipeline's movement since the start of the closed period (engine.movement)
    movement: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=movement.COLUMNS))
    # Parquet bytes of a part, encoded on a background thread while the rest was computed: part -> (the frame it
    # was encoded from, its bytes); write_cube uses them while that frame is still the cube's part
    encoded: dict[str, tuple[pd.DataFrame, Future[bytes]]] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------- periods of the run
def measure_periods(ctx: CubeContext) -> pd.DataFrame:
    """The periods lagging/leading measures are computed for: the trend (ending with P), TTM, YTD and the same
    period last year (when the trend does not reach it)."""
    win = ctx.windows
    rows = []
    for p in win.trend:
        rows.append((p.label, p.grain, p.start, p.end, min(p.end, ctx.as_of), "trend"))
    ttm_start = _add_years(ctx.as_of, -1) + timedelta(days=1)
    rows.append(("TTM", "ttm", ttm_start, ctx.as_of, ctx.as_of, "ttm"))
    fy = ctx.calendar.period("year", ctx.as_of)
    rows.append((f"{fy.label}-YTD", "ytd", fy.start, ctx.as_of, ctx.as_of, "ytd"))
    for p in comparisons.extra_periods(ctx.calendar, win):  # the same period last year, beyond the trend
        rows.append((p.label, p.grain, p.start, p.end, min(p.end, ctx.as_of), "compare"))
    df = pd.DataFrame(rows, columns=["label", "grain", "start", "end", "asof_end", "role"])
    for c in ("start", "end", "asof_end"):
        df[c] = pd.to_datetime(df[c])
    return df


def _add_years(d: date, n: int) -> date:
    try:
        return d.replace(year=d.year + n)
    except ValueError:  # 29 February
        return d.replace(year=d.year + n, day=28)


# ---------------------------------------------------------------- facts: deals as they stood at each period's end
def _won_lost(ctx: CubeContext) -> None:
    """Create table `won_lost`: each closed deal as it stood at a period's end, with close date in that period."""
    ctx.con.register("_closed_periods", _closed_periods(ctx, _closed_states(ctx)))
    try:
        ctx.con.execute("""
            CREATE OR REPLACE TEMP TABLE won_lost AS
            SELECT CAST(t.period AS VARCHAR) AS period, o.opportunity_id, o.owner_id, o.account_id, o.created_date,
                   o.product, o.lead_source, o.margin, o.cost, o.list_amount, o.segment, o.is_expansion,
                   CAST(t.stage AS VARCHAR) AS stage, t.amount, t.close_date, t.is_won, t.is_closed
            FROM _closed_periods t JOIN opp o ON o.snapshot_row = t.snapshot_row
              AND (o.created_date IS NULL OR o.created_date <= t.asof_end)""")
    finally:
        ctx.con.unregister("_closed_periods")


def _closed_periods(ctx: CubeContext, states: pd.DataFrame) -> pd.DataFrame:
    """The closed `states` each with the periods (table `periods`) whose end they stand at and whose dates hold
    their close date: one row per state and period, with the period's label (a category) and asof_end."""
    periods = ctx.con.execute("SELECT label, start, asof_end FROM periods").df()
    start, asof_end = (periods[c].to_numpy(dtype="datetime64[ns]") for c in ("start", "asof_end"))
    after = asof_end + np.timedelta64(1, "D")
    close, valid_from, valid_to = (states[c].to_numpy(dtype="datetime64[ns]")
                                   for c in ("close_date", "valid_from", "valid_to"))
    rows = []
    for j in range(len(periods)):  # NaT compares False, like NULL
        at = np.flatnonzero((close >= start[j]) & (close <= asof_end[j]))
        rows.append(at[(np.isnat(valid_from[at]) | (valid_from[at] < after[j]))
                       & (np.isnat(valid_to[at]) | (valid_to[at] >= after[j]))])
    row = np.concatenate([np.empty(0, dtype=np.int64), *rows])
    period = np.repeat(np.arange(len(periods)), [len(r) for r in rows])
    out = pd.DataFrame({c: states[c].array.take(row) for c in states.columns if c not in ("valid_from", "valid_to")})
    labels = pd.Index(periods["label"].astype(str))
    out["period"] = pd.Categorical.from_codes(labels.unique().get_indexer(labels)[period], labels.unique())
    out["asof_end"] = asof_end[period]
    return out


def _closed_states(ctx: CubeContext) -> pd.DataFrame:
    """The closed states of the snapshot deals up to as_of: one row per history row (valid from its changed_at to
    the deal's next change), or per deal without history (its current state, always valid).

    Columns: snapshot_row (the deal's row in ctx.snapshot and in table opp), valid_from, valid_to, stage (as a
    category), amount, close_date, is_won, is_closed. Values a history row does not carry yet are the deal's
    current ones; is_won / is_closed follow the stage (stages.won / stages.lost), else the table's own flags
    (a history row has none). Closedness is decided on integer codes first: only closed rows gather values.
    """
    cur = created_by(ctx.data.table("opportunities"), ctx.as_of).reset_index(drop=True)  # rows as in the snapshot
    nat = np.datetime64("NaT", "ns")
    amount = cur["amount"].to_numpy(dtype="float64", na_value=np.nan) if "amount" in cur else np.full(len(cur),
                                                                                                     np.nan)
    close = (cur["close_date"].to_numpy(dtype="datetime64[ns]", na_value=nat) if "close_date" in cur
             else np.full(len(cur), nat))
    stage_text = cur["stage"] if "stage" in cur else pd.Series(pd.NA, index=cur.index, dtype="string")
    h = ctx.sorted_history()
    text_code, texts = pd.factorize(stage_text)  # each distinct stage text looked up once, not every deal's
    cats = pd.Index(texts).append(pd.Index([] if h is None else h.stages)).unique()
    cur_stage = np.append(cats.get_indexer(texts), -1)[text_code]  # -1: no stage
    rule = Stages.of(ctx.cfg.stages)
    closed_cat, won_cat = np.r_[rule.is_closed(cats), False], np.r_[rule.is_won(cats), False]  # index -1: False

    def flag(col: str, rows: np.ndarray) -> np.ndarray:  # the table's flag: 1 true, 0 false, -1 none
        values = cur[col].astype("boolean") if col in cur else pd.Series(pd.NA, index=cur.index, dtype="boolean")
        return np.where(values.isna(), -1, values.fillna(False).astype(bool)).astype(np.int8)[rows]

    def states(rows: np.ndarray, valid_from: np.ndarray, valid_to: np.ndarray, stage: np.ndarray,
               amt: np.ndarray, close_date: np.ndarray, is_won: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"snapshot_row": rows, "valid_from": valid_from, "valid_to": valid_to,
                             "stage": pd.Categorical.from_codes(stage, categories=cats), "amount": amt,
                             "close_date": close_date, "is_won": is_won, "is_closed": True})

    code = ctx.history_codes() if h is not None else np.full(len(cur), -1)  # cur has the snapshot's rows
    parts = []
    if h is not None:  # history rows of the snapshot deals: their stage decides (no stage yet: the current one)
        row_of_code = np.full(len(h.ids), -1, dtype=np.int64)
        row_of_code[code[code >= 0]] = np.flatnonzero(code >= 0)
        at = np.flatnonzero(row_of_code[h.code] >= 0)
        rows = row_of_code[h.code[at]]
        hist_stage = cats.get_indexer(h.stages) if len(h.stages) else np.zeros(1, dtype=np.int64)
        stage_ff = h.stage_ff[at]
        stage = np.where(stage_ff >= 0, hist_stage[stage_ff], cur_stage[rows])
        closed = np.flatnonzero(closed_cat[stage])  # positions: cheaper to take than a mask, thrice
        at, rows, stage = at[closed], rows[closed], stage[closed]
        nxt = np.minimum(at + 1, max(len(h.code) - 1, 0))
        same_deal = (at + 1 < len(h.code)) & (h.code[nxt] == h.code[at])
        amt, close_date = h.amount_ff[at], h.close_ff[at]
        parts.append(states(rows, h.changed_at[at], np.where(same_deal, h.changed_at[nxt], nat), stage,
                            np.where(np.isnan(amt), amount[rows], amt),
                            np.where(np.isnat(close_date), close[rows], close_date), won_cat[stage]))
    none = np.flatnonzero(code < 0)  # deals without any history row: their current state, always valid
    stage, closed_flag, won_flag = cur_stage[none], flag("is_closed", none), flag("is_won", none)
    closed = np.where(closed_flag >= 0, closed_flag == 1, closed_cat[stage])
    is_won = np.where(closed_cat[stage], won_cat[stage], won_flag == 1)
    rows = none[closed]
    parts.append(states(rows, np.full(len(rows), nat), np.full(len(rows), nat), stage[closed], amount[rows],
                        close[rows], is_won[closed]))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- measures
def _view_available(ctx: CubeContext, kpi: registry.Kpi) -> list[str]:
    return ctx.data.missing(list(kpi.needs))


def compute_measures(ctx: CubeContext, periods: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """Every measure KPI in `ids`, per scope owner and period, and per dim value (every period of the trend too)."""
    groups: dict[tuple[str, str | None], list[registry.Kpi]] = {}
    for kpi_id in ids:
        k = registry.REGISTRY[kpi_id]
        if k.measure is None or _view_available(ctx, k):
            continue
        groups.setdefault((k.measure.view, k.measure.date), []).append(k)
    frames = []
    for (view, date_col), ks in groups.items():
        if view == "won_lost":
            period_join = "JOIN periods p ON p.label = f.period"
            when = "f.close_date"
            pre = _PreSum("close_date", _day_buckets(ctx, view, "close_date", periods), keys=("period",))
        elif date_col is None:
            period_join = "CROSS JOIN periods p"
            when = f"DATE '{ctx.as_of.isoformat()}'"
            pre = _PreSum(None, None)
        else:
            period_join = f"JOIN periods p ON f.{date_col} BETWEEN p.start AND p.asof_end"
            when = f"f.{date_col}"
            pre = _PreSum(date_col, _day_buckets(ctx, view, date_col, periods))
        frames.append(_measure_query(ctx, view, ks, period_join, when, None, None, pre_by=pre))
        dims = sorted({d for k in ks for d in k.sql_measure.dims})
        for dim in dims:
            with_dim = [k for k in ks if dim in k.sql_measure.dims]
            expr = with_dim[0].sql_measure.dims[dim]
            if not ctx.con.execute(f"SELECT EXISTS (SELECT 1 FROM {view} f WHERE f.{expr} IS NOT NULL)"
                                   ).fetchall()[0][0]:  # fetch all: no unfinished result left on con
                continue
            frames.append(_measure_query(ctx, view, with_dim, period_join, when, dim, f"f.{expr}", pre_by=pre))
    if not frames:
        return pd.DataFrame(columns=["owner_id", "period", "kpi", "dim", "dim_value", "value"])
    return pd.concat(frames, ignore_index=True)


def _measure_query(ctx: CubeContext, view: str, ks: list[registry.Kpi], period_join: str, when: str,
                   dim: str | None, dim_expr: str | None, pre_by: _PreSum | None = None) -> pd.DataFrame:
    """Measures of `ks` per scope, period (and dim value). `pre_by`: how the facts may first be summed (per
    owner and day, bucket of days, or period) before they are joined to scopes (and periods) (far fewer rows to
    join), done only when every aggregate adds up."""
    cols = []
    for k in ks:
        m = k.measure
        assert m is not None
        num, den = registry.sql_agg(m.agg, f"f.{m.expr}" if m.expr.isidentifier() else m.expr)
        where = m.where
        cols.append(f'{num} FILTER (WHERE {where}) AS "{k.id}__n"')
        cols.append(f'{den} FILTER (WHERE {where}) AS "{k.id}__d"' if den else f'NULL AS "{k.id}__d"')
    dim_sel = f", CAST({dim_expr} AS VARCHAR) AS dim_value" if dim_expr else ", NULL AS dim_value"
    dim_group = ", dim_value" if dim_expr else ""
    source = f"{view} f"
    if pre_by is not None and all(k.sql_measure.agg != "count_distinct" for k in ks):
        each_period = "CROSS JOIN periods p" if pre_by.column is None else ""
        source = (f"(SELECT f.owner_id, {pre_by.select()}{dim_sel if dim_expr else ''}, {', '.join(cols)} "
                  f"FROM {view} f {each_period} {pre_by.where()} GROUP BY ALL) f")
        period_join = "JOIN periods p ON p.label = f.period" if pre_by.column is None else period_join
        dim_sel = ", f.dim_value" if dim_expr else dim_sel
        cols = [_sum_partial(k, part) for k in ks for part in ("n", "d")]
    sql = f"""
        SELECT a.scope_id AS owner_id, p.label AS period{dim_sel}, {', '.join(cols)}
        FROM {source} {period_join}
        {ctx.scope_join('f', when)}
        GROUP BY a.scope_id, p.label{dim_group}"""
    wide = ctx.con.execute(sql).df()
    out = []
    for k in ks:
        n = wide[f"{k.id}__n"].astype("float64")
        d = wide[f"{k.id}__d"]
        value = n / d.astype("float64").where(d != 0) if k.sql_measure.agg == "mean" else n
        out.append(pd.DataFrame({"owner_id": wide["owner_id"], "period": wide["period"], "kpi": k.id,
                                 "dim": dim, "dim_value": wide["dim_value"], "value": value}))
    return pd.concat(out, ignore_index=True)


@dataclass(frozen=True)
class _PreSum:
    """How facts are pre-summed before the period and scope joins: by owner and `column` (a day), or, with
    `edges`, by owner and the bucket of days between two edges that holds `column` (dropping facts outside);
    without `column` (facts without a date, whose filters may name the period): joined to every period first, and
    summed by owner and period."""

    column: str | None
    edges: list[pd.Timestamp] | None
    keys: tuple[str, ...] = ()  # other columns of the view the facts are summed by

    def select(self) -> str:
        """The SELECT items standing for the fact's keys and date (the date itself, its bucket's first day, or
        the period's label)."""
        keys = "".join(f"f.{k}, " for k in self.keys)
        if self.column is None:
            return f"{keys}p.label AS period"
        if not self.edges:
            return f"{keys}f.{self.column}"
        return f"{keys}{_bucket_sql(f'f.{self.column}', self.edges, 0, len(self.edges) - 1)} AS {self.column}"

    def where(self) -> str:
        """The WHERE clause keeping the facts inside the buckets."""
        if not self.edges:
            return ""
        return (f"WHERE f.{self.column} >= {_ts_sql(self.edges[0])} AND f.{self.column} < "
                f"{_ts_sql(self.edges[-1])}")


MAX_EDGES = 512


def _day_buckets(ctx: CubeContext, view: str, column: str, periods: pd.DataFrame) -> list[pd.Timestamp] | None:
    """The days where a period starts or ends (the day after) or a hierarchy link starts or ends (the day after):
    two facts dated between two such edges are in the same periods and scopes, so they may be summed together.
    None (sum per day) when the column or an edge has a time of day, or there are too many edges."""
    days = [periods["start"], periods["asof_end"] + pd.Timedelta(days=1)]
    for col, shift in (("valid_from", 0), ("valid_to", 1)):
        if col in ctx.ancestors:
            days.append(pd.to_datetime(ctx.ancestors[col]).dropna() + pd.Timedelta(days=shift))
    edges = pd.to_datetime(pd.concat(days, ignore_index=True)).astype("datetime64[ns]")
    edges = edges[(edges >= periods["start"].min()) & (edges <= periods["asof_end"].max() + pd.Timedelta(days=1))]
    days_sorted: list[pd.Timestamp] = sorted(edges.drop_duplicates())
    if len(days_sorted) < 2 or len(days_sorted) > MAX_EDGES or any(e != e.normalize() for e in days_sorted):
        return None
    midnight = ctx.con.execute(f"SELECT coalesce(bool_and(f.{column} = date_trunc('day', f.{column})), TRUE) "
                               f"FROM {view} f").fetchall()[0][0]
    return days_sorted if midnight else None


def _bucket_sql(expr: str, edges: list[pd.Timestamp], lo: int, hi: int) -> str:
    """SQL for the first day of the bucket [edges[i], edges[i + 1]) holding `expr`, known to be within
    [edges[lo], edges[hi]) (a binary search: nested CASEs of depth log2 of the number of edges)."""
    if hi - lo == 1:
        return _ts_sql(edges[lo])
    mid = (lo + hi) // 2
    return (f"CASE WHEN {expr} < {_ts_sql(edges[mid])} THEN {_bucket_sql(expr, edges, lo, mid)} "
            f"ELSE {_bucket_sql(expr, edges, mid, hi)} END")


def _ts_sql(day: pd.Timestamp) -> str:
    return f"TIMESTAMP '{day.strftime('%Y-%m-%d')}'"


def _sum_partial(k: registry.Kpi, part: str) -> str:
    """SQL adding up a pre-summed numerator ("n") or denominator ("d") of KPI `k` (counts stay integers)."""
    col = f'"{k.id}__{part}"'
    agg = k.sql_measure.agg
    if part == "d" and agg != "mean":
        return f"NULL AS {col}"
    counted = agg == "count" or part == "d"
    return f"CAST(sum(f.{col}) AS BIGINT) AS {col}" if counted else f"sum(f.{col}) AS {col}"


# ---------------------------------------------------------------- assembling the cube
def compute_cube(cfg: Config, data: Dataset, cadence: str, as_of: date | str) -> Cube:
    """Compute every KPI, trust check, forecast, target and decomposition for every scope: one vectorised pass."""
    registry.load_custom(cfg)
    ctx = build_context(cfg, data, cadence, as_of_date(as_of))
    periods = measure_periods(ctx)
    ctx.con.register("periods_df", periods)
    ctx.con.execute("CREATE OR REPLACE TEMP TABLE periods AS SELECT * FROM periods_df")
    _won_lost(ctx)
    ids = list(registry.REGISTRY)
    long = compute_measures(ctx, periods, ids)
    facts = _facts(ctx)  # encoded (the biggest file) while the single-threaded rest runs, DuckDB's work done
    encoded = {"facts": (facts, in_background(_parquet_bytes, facts))}
    scopes = ctx.owners["owner_id"].astype(str).tolist()
    base = _complete_grid(long, scopes, periods["label"].tolist(), ids, ctx)
    del long  # in `base` now: each large intermediate is let go as soon as it is used (peak memory at scale)

    period_objs = _period_objects(ctx, periods)
    target_metrics = _target_metrics(ctx, ids)
    tgt = pd.concat([targets.resolve_targets(ctx, m, period_objs) for m in target_metrics], ignore_index=True) \
        if target_metrics else pd.DataFrame(columns=["owner_id", "period", "metric", "target", "source"])
    base = _attach_targets(base, tgt)
    base = _apply_formulas(base, ids, ctx)

    probs = forecast.win_probabilities(ctx)
    calibrated, calibrated_by = calibration.cube_forecast(ctx, probs, forecast.last_touch_days(ctx))
    q = ctx.windows.forward
    q_targets = targets.resolve_targets(ctx, "bookings", [q]) if "bookings" in target_metrics else tgt.iloc[0:0]
    fwd = forecast.forward_look(ctx, q_targets, probs, calibrated)
    conv = forecast.stage_conversion(ctx)
    bookings_by_month = _month_bookings(ctx, periods, base)
    allk = _top_only_unattributed(_finish(base, [fwd, conv], ctx), ctx)
    del base

    trust_df, trust_rows = trust.compute_trust(ctx, bookings_by_month=bookings_by_month)
    decomp = decomposition.decompose(ctx, allk, pd.concat([tgt, q_targets], ignore_index=True))
    moved, moved_info = movement.pipeline_movement(ctx)
    win = ctx.windows
    meta = {"run_id": uuid.uuid4().hex[:12], "computed_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "as_of": ctx.as_of.isoformat(), "cadence": cadence,
            "closed_period": win.closed.label,
            "forward_period": q.label, "forward_start": q.start.isoformat(), "forward_end": q.end.isoformat(),
            "forecast": backtest.forecast_meta(calibrated_by, cfg.root, ctx.calendar, ctx.as_of),
            "notes": ctx.notes, "owners": len(scopes), "opportunities": int(len(ctx.snapshot)),
            "above_the_line": cfg.kpis.above_the_line, "weak_stage_rule": cfg.kpis.weak_stage.model_dump(),
            "findings": cfg.findings.model_dump(),
            "comparisons": comparisons.comparison_meta(ctx.calendar, win, comparisons.first_day(ctx.snapshot)),
            "movement": moved_info,
            "kpi_meta": {k.id: {"label": k.label, "unit": k.unit, "direction": k.direction, "kind": k.kind,
                                "definition": k.definition} for k in registry.REGISTRY.values() if not k.hidden}}
    owners = ctx.owners.copy()
    owners["scope"] = [ctx.org.scope_kind(o) for o in owners["owner_id"]]
    return Cube(kpis=allk, trust=trust_df, trust_rows=trust_rows, decomposition=decomp, facts=facts,
                probabilities=probs, owners=owners, quality=_quality(data), meta=meta, encoded=encoded,
                movement=moved)


def _month_bookings(ctx: CubeContext, periods: pd.DataFrame, rows: _Rows) -> pd.DataFrame | None:
    """The cube's bookings of the last full month per scope (owner_id, period, value), as they stood at its end;
    None when that month is not a period of this cube (trust then computes them itself)."""
    label, start, end = last_full_month(ctx.as_of)
    month = periods[(periods["label"] == label) & (periods["start"] == pd.Timestamp(start))
                    & (periods["end"] == pd.Timestamp(end)) & (periods["asof_end"] == pd.Timestamp(end))]
    if month.empty:
        return None
    labels = rows.labels.tolist()
    if "bookings" not in rows.values or label not in labels:
        return pd.DataFrame({"owner_id": rows.scopes.iloc[0:0], "period": rows.labels.iloc[0:0],
                             "value": np.empty(0)})
    value = rows.values["bookings"].reshape(len(rows.scopes), len(labels))[:, labels.index(label)]
    return pd.DataFrame({"owner_id": rows.scopes, "period": pd.Series(label, index=rows.scopes.index, dtype="str"),
                         "value": value})


def _quality(data: Dataset) -> pd.DataFrame:
    """The data-quality findings of the load, ids as text (for the report's data-quality section)."""
    if data.findings.empty:
        return pd.DataFrame(columns=FINDING_COLUMNS)
    q = data.findings.copy()
    q["ids"] = q["ids"].map(lambda ids: ", ".join(map(str, list(ids)[:50])))
    return q


def _period_objects(ctx: CubeContext, periods: pd.DataFrame) -> list[Period]:
    """The rows of `periods` (measure_periods) as Period objects."""
    return [Period(grain=str(grain), label=str(label), start=start.date(), end=end.date())
            for grain, label, start, end in zip(periods["grain"], periods["label"], periods["start"].dt.to_pydatetime(),
                                                periods["end"].dt.to_pydatetime(), strict=True)]


def _target_metrics(ctx: CubeContext, ids: list[str]) -> list[str]:
    if not ctx.data.has("targets"):
        return []
    present = set(ctx.data.table("targets")["metric"].astype(str).unique())
    wanted = {registry.REGISTRY[i].target_id for i in ids if registry.REGISTRY[i].fixed_target is None}
    return sorted(present & wanted)


@dataclass
class _Rows:
    """The KPI rows of every scope before `_finish`. Rows without dim are dense: one array per KPI over every
    (scope, period), scope-major then period (`values`, `targets`, and per KPI `reasons`: why it is not
    available, None when it is); rows per dim value are a long frame (`dims`)."""

    scopes: pd.Series  # distinct owner ids
    labels: pd.Series  # distinct period labels
    dims: pd.DataFrame
    values: dict[str, np.ndarray] = field(default_factory=dict)
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    reasons: dict[str, str | None] = field(default_factory=dict)


def _complete_grid(long: pd.DataFrame, scopes: list[str], labels: list[str], ids: list[str],
                   ctx: CubeContext) -> _Rows:
    """The measured KPIs of every scope and period: absent ones 0 for sums and counts, NaN for means; NaN (with the
    reason) for KPIs whose data is missing; rows per dim value as measured."""
    measure_ids = [i for i in ids if registry.REGISTRY[i].measure is not None]
    nodim = long["dim"].isna().to_numpy()
    rows = _Rows(pd.Series(scopes, dtype="str"), pd.Series(labels, dtype="str"),
                 dims=long[~nodim].assign(available=True, na_reason=None))
    # each measured row's place in the grid (scope-major, then period, then KPI), instead of a merge on text keys
    at = [positions(long[col], keys) for keys, col in
          ((rows.scopes, "owner_id"), (rows.labels, "period"), (pd.Series(measure_ids, dtype="str"), "kpi"))]
    found = nodim & (at[0] >= 0) & (at[1] >= 0) & (at[2] >= 0)
    n = len(scopes) * len(labels)
    flat = np.full(n * len(measure_ids), np.nan)
    flat[((at[0] * len(labels) + at[1]) * len(measure_ids) + at[2])[found]] = long["value"].to_numpy(
        dtype="float64")[found]
    value = flat.reshape(n, len(measure_ids))
    for j, kpi_id in enumerate(measure_ids):
        k = registry.REGISTRY[kpi_id]
        reason = _reason(ctx.data.missing(list(k.needs)))
        col = value[:, j].copy()
        if reason is None and k.sql_measure.agg in ("sum", "count", "count_distinct"):
            col[np.isnan(col)] = 0.0
        rows.values[kpi_id], rows.targets[kpi_id], rows.reasons[kpi_id] = col, np.full(n, np.nan), reason
    return rows


def _reason(missing: list[str]) -> str | None:
    return registry.not_available(missing) if missing else None


def _attach_targets(rows: _Rows, tgt: pd.DataFrame) -> _Rows:
    """Give each measured KPI without dim the resolved target of its metric, scope and period (`tgt`)."""
    if tgt.empty:
        return rows
    s, p = positions(tgt["owner_id"], rows.scopes), positions(tgt["period"], rows.labels)
    found = (s >= 0) & (p >= 0)
    at = (s * len(rows.labels) + p)[found]
    metric = tgt["metric"].to_numpy(dtype=object)[found]
    target = tgt["target"].to_numpy(dtype="float64")[found]
    for kpi_id, t in rows.targets.items():
        mine = metric == registry.REGISTRY[kpi_id].target_id
        t[at[mine]] = target[mine]
    return rows


def _apply_formulas(rows: _Rows, ids: list[str], ctx: CubeContext) -> _Rows:
    """Compute formula KPIs from their inputs of the same scope, period and dim value."""
    order = registry.formula_order(ids)
    if not order:
        return rows
    dense = pd.DataFrame(rows.values | {f"{i}__target": t for i, t in rows.targets.items()})
    key = ["owner_id", "period", "dim", "dim_value"]
    keyed = rows.dims.assign(dim=rows.dims["dim"].fillna(""), dim_value=rows.dims["dim_value"].fillna(""))
    # one row per (scope, period, dim, dim value) present: a pivot with dropna=False would build every combination
    per_dim = keyed.groupby(key + ["kpi"], sort=True)["value"].first().unstack("kpi")  # first non-null, like pivot's
    parts = [rows.dims]
    for kpi_id in order:
        k = registry.REGISTRY[kpi_id]
        missing = ctx.data.missing(list(k.needs))
        value, target = _formula(dense, k, missing)
        rows.values[kpi_id] = value.to_numpy(dtype="float64")
        rows.targets[kpi_id] = np.broadcast_to(target, value.shape).astype("float64")
        rows.reasons[kpi_id] = _reason(missing)
        value, target = _formula(per_dim, k, missing)
        part = value.rename("value").reset_index().assign(kpi=kpi_id, available=not missing,
                                                           na_reason=_reason(missing), target=target)
        parts.append(part[part["value"].notna()])
    dims = pd.concat(parts, ignore_index=True)
    n = len(rows.dims)
    dims.loc[n:, "dim"] = dims["dim"].iloc[n:].replace("", None)
    dims.loc[n:, "dim_value"] = dims["dim_value"].iloc[n:].replace("", None)
    rows.dims = dims
    return rows


def _formula(w: pd.DataFrame, k: registry.Kpi, missing: list[str]) -> tuple[pd.Series, float | np.ndarray]:
    """Formula KPI `k` over the wide frame `w` (one column per KPI and `<id>__target`, missing inputs added as NaN;
    the result is added as column `k.id`): its values (NaN when `missing` data) and targets."""
    for i in k.inputs:
        for c in (i, f"{i}__target"):
            if c not in w.columns:
                w[c] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        value = k.formula(w) if k.formula is not None and not missing else pd.Series(np.nan, index=w.index)
    w[k.id] = value
    if k.fixed_target is not None:  # no value, no target: a fixed 100 % beside "not available" would read as a goal
        return value, np.where(value.isna().to_numpy(), np.nan, k.fixed_target)
    return value, w[f"{k.id}__target"].to_numpy() if f"{k.id}__target" in w.columns else np.nan


def _finish(rows: _Rows, extra: list[pd.DataFrame], ctx: CubeContext) -> pd.DataFrame:
    """The KPI table of `rows` and the `extra` rows (forecasts, stage conversion): hidden KPIs dropped, sorted by
    owner, KPI, period, dim and dim value (missing first), with scope, level, kind, attainment and status."""
    reg = registry.REGISTRY
    sparse = pd.concat([rows.dims, *extra], ignore_index=True)
    for c in ("target", "available", "na_reason", "dim", "dim_value"):
        if c not in sparse.columns:
            sparse = sparse.assign(**{c: np.nan if c == "target" else None})
    ids = [i for i in rows.values if not reg[i].hidden]
    shown = np.flatnonzero(~map_values(sparse["kpi"], {i: k.hidden for i, k in reg.items()}).fillna(False)
                           .astype(bool).to_numpy())
    # each key column: the dense rows' distinct values (scopes, KPIs, periods), then the sparse rows' values
    heads = (("owner_id", rows.scopes), ("kpi", pd.Series(ids, dtype="str")), ("period", rows.labels))
    owner, kpi, period = (pd.concat([head, sparse[c]], ignore_index=True) for c, head in heads)
    at = _table_order([owner, kpi, period], [len(h) for _, h in heads], sparse, shown)

    def cells(dense: dict[str, np.ndarray], column: str) -> np.ndarray:
        return np.concatenate([*(dense[i] for i in ids), sparse[column].to_numpy(dtype="float64")])[at.cell]

    def per_kpi(dense: Sequence[object], column: str) -> pd.Series:  # dense rows: one value per KPI
        return pd.Series(np.concatenate([np.asarray(dense, dtype=object), sparse[column].to_numpy(dtype=object)]
                                        )[at.kpi], dtype=object)

    def of_kpi(attr: str, default: str) -> pd.Series:
        return map_values(kpi, {i: getattr(k, attr) for i, k in reg.items()}).fillna(default)

    value, target = cells(rows.values, "value"), cells(rows.targets, "target")
    lower = of_kpi("direction", "higher").eq("lower").to_numpy(dtype=bool)[at.kpi]
    has = np.flatnonzero(~np.isnan(target))  # no target, no attainment
    att = np.full(len(value), np.nan)
    att[has] = attainment(pd.Series(value[has]), pd.Series(target[has]),
                          pd.Series(np.where(lower[has], "lower", "higher"))).to_numpy()
    owners = ctx.owners.set_index("owner_id")
    scope_of = {o: ctx.org.scope_kind(o) for o in owners.index}
    none = [None] * len(ids)
    cols = {"scope": _take(map_values(owner, scope_of), at.owner), "owner_id": _take(owner, at.owner),
            "level": _take(map_values(owner, owners["level"]), at.owner), "period": _take(period, at.period),
            "kpi": _take(kpi, at.kpi), "dim": per_kpi(none, "dim"), "dim_value": per_kpi(none, "dim_value"),
            "value": value, "target": target, "attainment": att,
            "status": pd.Series(status(pd.Series(att), ctx.cfg.kpis.status).to_numpy(), dtype=object),
            "kind": _take(of_kpi("kind", "leading"), at.kpi),
            "available": np.concatenate([[rows.reasons[i] is None for i in ids],
                                         sparse["available"].fillna(True).astype(bool).to_numpy()]).astype(bool)[at.kpi],
            "na_reason": per_kpi([rows.reasons[i] for i in ids], "na_reason")}
    out = pd.DataFrame(index=pd.RangeIndex(len(value)))
    for c in KPI_COLUMNS:  # one column at a time: no copy into blocks of several columns
        out[c] = cols[c]
    return out


def _top_only_unattributed(allk: pd.DataFrame, ctx: CubeContext) -> pd.DataFrame:
    """KPIs over a table that cannot credit its rows to owners (e.g. leads without owner_id) made "not available"
    below the top, where they would read 0 (every row is counted at the top, which stays available)."""
    reasons = {}
    for kpi_id in allk["kpi"].unique():
        missing = ctx.data.missing(registry.attribution_needs(kpi_id)) if kpi_id in registry.REGISTRY else []
        if missing:
            reasons[kpi_id] = registry.not_available(missing)
    if not reasons:
        return allk
    top = ctx.org.top_ids()[0]  # where _register_views counts unattributed rows
    hit = allk["kpi"].isin(list(reasons)).to_numpy() & allk["owner_id"].ne(top).to_numpy() & \
        allk["available"].to_numpy(dtype=bool)  # a KPI already not available keeps its own reason
    allk.loc[hit, ["value", "target", "attainment"]] = np.nan
    allk.loc[hit, "status"] = "none"
    allk.loc[hit, "available"] = False
    allk.loc[hit, "na_reason"] = allk.loc[hit, "kpi"].map(reasons)
    return allk


class _Order(NamedTuple):
    """Where each row of the KPI table comes from: its position in the owner, KPI and period columns of `_finish`
    (the dense rows' distinct values, then the sparse rows), and in its values (every dense KPI's values over
    scopes and periods one after the other, then the sparse rows')."""

    owner: np.ndarray
    kpi: np.ndarray
    period: np.ndarray
    cell: np.ndarray


def _table_order(text: list[pd.Series], sizes: list[int], sparse: pd.DataFrame, shown: np.ndarray) -> _Order:
    """The order of the KPI table, by owner, KPI, period, dim and dim value (missing first): the dense rows (every
    scope x KPI x period, without dim: the first `sizes` values of the owner, KPI and period columns `text`), and
    the `shown` rows of `sparse` (the rest of `text`), each after the dense row of equal key (a stable sort)."""
    n_s, n_k, n_p = sizes
    ranks = [value_ranks(t) for t in text]
    bases = [int(r.max(initial=-1)) + 2 for r in ranks]
    # the dense rows in order, scopes then KPIs then periods by rank: a computed permutation, not a sort
    s, k, p = (np.argsort(r[:n], kind="stable") for r, n in zip(ranks, sizes))
    dense_key = _sort_key([ranks[0][s][:, None, None], ranks[1][k][None, :, None], ranks[2][p][None, None, :]],
                          bases).ravel()
    sparse_key = _sort_key([r[n:][shown] for r, n in zip(ranks, sizes)], bases)
    by = np.lexsort((value_ranks(sparse["dim_value"])[shown], value_ranks(sparse["dim"])[shown], sparse_key))
    sp = shown[by]
    at_sparse = np.searchsorted(dense_key, sparse_key[by], side="right") + np.arange(len(sp))
    in_sparse = np.zeros(len(dense_key) + len(sp), dtype=bool)
    in_sparse[at_sparse] = True
    at_dense = np.flatnonzero(~in_sparse)

    def place(dense_part: np.ndarray, sparse_part: np.ndarray) -> np.ndarray:
        out = np.empty(len(in_sparse), dtype=np.int64)
        out[at_dense], out[at_sparse] = dense_part, sparse_part
        return out

    row_s, row_k, row_p = np.repeat(s, n_k * n_p), np.tile(np.repeat(k, n_p), n_s), np.tile(p, n_s * n_k)
    return _Order(place(row_s, sp + n_s), place(row_k, sp + n_k), place(row_p, sp + n_p),
                  place((row_k * n_s + row_s) * n_p + row_p, sp + n_k * n_s * n_p))


def _sort_key(ranks: list[np.ndarray], bases: list[int]) -> np.ndarray:
    """One integer per row ordering like its ranks (each in -1 .. base - 2) compared one after the other."""
    key: np.ndarray = np.zeros((), dtype=np.int64)
    for r, base in zip(ranks, bases):
        key = key * base + (r + 1)
    return key


def _take(s: pd.Series, at: np.ndarray) -> pd.Series:
    """The values of `s` at positions `at`, with a fresh index (taken by pyarrow for pyarrow-backed text: pandas
    checks the positions first, slower than the take itself)."""
    if isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow":
        return pd.Series(pd.array(pa.array(s.array).take(at), dtype=s.dtype), name=s.name)
    return s.take(at).reset_index(drop=True)


def _facts(ctx: CubeContext) -> pd.DataFrame:
    """The as-of snapshot with each deal's ancestor owner ids (for drill-down), sorted by owner then opportunity."""
    snap = ctx.snapshot
    anc = ctx.ancestors.assign(scope_id=ctx.ancestors["scope_id"].astype(object)).groupby("owner_id")["scope_id"].agg(
        list)
    # a few thousand owners: ranked and mapped once each; their small ranks sort by radix (up to 65,535 owners)
    owner, owners = pd.factorize(snap["owner_id"])
    rank = np.append(value_ranks(pd.Series(owners)) + 1, 0)[owner]  # 0: no owner, sorted first (code -1: last)
    ids_sorted = ascending_text(snap["opportunity_id"])  # often exported in id order: no sort needed
    by_id = np.arange(len(snap)) if ids_sorted else distinct_text_order(snap, ["opportunity_id"])
    order = by_id[np.argsort(rank.astype(np.min_scalar_type(len(owners)))[by_id], kind="stable")]  # stable
    in_order = bool((order == np.arange(len(order))).all())
    facts = (snap if in_order else snap.take(order)).reset_index(drop=True)  # a new frame: snap keeps its columns
    lists = pd.Series(owners, dtype=object).map(anc)  # like frames.map_values: NaN for an owner without ancestors
    per_code = np.append(lists.to_numpy(), np.nan)  # code -1 (no owner) picks the NaN at the end
    facts["scope_ids"] = pd.Series(per_code[owner[order]], index=facts.index, dtype=lists.dtype)
    facts = all_columns("opportunities", facts)  # every contract column: absent ones empty, never a KeyError
    facts["name"] = facts["name"].fillna(facts["opportunity_id"])  # a deal without a name is shown by its id
    return facts


# ---------------------------------------------------------------- the run folder
CUBE_FILES = ("kpis", "trust", "trust_rows", "decomposition", "probabilities", "owners", "quality")
OPTIONAL_FILES = ("movement",)  # a run folder from before it reads it as empty


def write_cube(cube: Cube, run_dir: Path) -> None:
    """Write the cube's Parquet files and cube.json into `run_dir`, each atomically (temp file, then rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "facts").mkdir(exist_ok=True)
    files = [("facts", run_dir / "facts" / "opportunities.parquet")]
    files += [(name, run_dir / f"{name}.parquet") for name in CUBE_FILES + OPTIONAL_FILES]
    with ThreadPoolExecutor(max_workers=2) as pool:  # Parquet encoding releases the GIL: two files at a time
        for done in [pool.submit(_atomic_parquet, getattr(cube, name), path, _encoded(cube, name))
                     for name, path in files]:
            done.result()  # re-raises a failed write
    _atomic_text(json.dumps(cube.meta, indent=2, default=str), run_dir / "cube.json")


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    """`df` as the bytes of the Parquet file `df.to_parquet(path, index=False)` writes."""
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _encoded(cube: Cube, name: str) -> Future[bytes] | None:
    """The bytes of part `name` encoded in the background, if they are of the frame the cube holds now."""
    frame, data = cube.encoded.get(name, (None, None))
    return data if frame is not None and frame is getattr(cube, name) else None


def read_cube_meta(run_dir: Path) -> dict[str, Any]:
    """A run folder's cube.json (Cube.meta: run id, periods, notes, KPI declarations): the one reader of it."""
    meta: dict[str, Any] = json.loads((run_dir / "cube.json").read_text())
    return meta


def read_cube(run_dir: Path) -> Cube:
    """Read a cube written by `write_cube` (each text column in one chunk: reports take small selections)."""
    parts = {name: one_chunk(pd.read_parquet(run_dir / f"{name}.parquet")) for name in CUBE_FILES}
    facts = one_chunk(pd.read_parquet(run_dir / "facts" / "opportunities.parquet"))
    meta = read_cube_meta(run_dir)
    optional = {name: one_chunk(pd.read_parquet(run_dir / f"{name}.parquet")) for name in OPTIONAL_FILES
                if (run_dir / f"{name}.parquet").is_file()}
    cube = Cube(kpis=parts["kpis"], trust=parts["trust"], trust_rows=parts["trust_rows"],
                decomposition=parts["decomposition"], facts=facts, probabilities=parts["probabilities"],
                owners=parts["owners"], quality=parts["quality"], meta=meta)
    for name, frame in optional.items():
        setattr(cube, name, frame)
    return cube


def _atomic_parquet(df: pd.DataFrame, path: Path, encoded: Future[bytes] | None = None) -> None:
    """Write `df` to `path` as Parquet (or the bytes `encoded` from it already), atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        if encoded is None:
            df.to_parquet(tmp, index=False)
        else:
            Path(tmp).write_bytes(encoded.result())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
