"""The cube: every KPI, trust check, forecast and target for every owner scope of one as-of and cadence, in one pass.

Facts are attributed to scopes by joining the ancestor map (an owner's scope is their own facts plus their direct
reports' scopes, recursively), and aggregated per scope in DuckDB: additive KPIs of a manager are the sum of their
parts by construction, ratios are recomputed from the scope's own numerator and denominator.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from spm_lib import kpis as registry
from spm_lib.config import Config
from spm_lib.context import KPI_COLUMNS, CubeContext, build_context
from spm_lib.contract import Dataset

NOT_AVAILABLE = "not available — needs "


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
    meta: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------- periods of the run
def measure_periods(ctx: CubeContext) -> pd.DataFrame:
    """The periods lagging/leading measures are computed for: the trend (ending with P), TTM and YTD."""
    win = ctx.windows
    rows = []
    for p in win.trend:  # type: ignore[attr-defined]
        rows.append((p.label, p.grain, p.start, p.end, min(p.end, ctx.as_of), "trend"))
    ttm_start = _add_years(ctx.as_of, -1) + timedelta(days=1)
    rows.append(("TTM", "ttm", ttm_start, ctx.as_of, ctx.as_of, "ttm"))
    fy = ctx.calendar.period("year", ctx.as_of)  # type: ignore[attr-defined]
    rows.append((f"{fy.label}-YTD", "ytd", fy.start, ctx.as_of, ctx.as_of, "ytd"))
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
    won = ", ".join(_sql_str(s) for s in ctx.cfg.stages.won) or "NULL"
    closed = ", ".join(_sql_str(s) for s in ctx.cfg.stages.won + ctx.cfg.stages.lost) or "NULL"
    con = ctx.con
    has_history = ctx.data.has("opportunity_history")
    if has_history:
        con.execute("""
            CREATE OR REPLACE TEMP TABLE states AS
            WITH h AS (
              SELECT opportunity_id, changed_at,
                row_number() OVER (PARTITION BY opportunity_id ORDER BY changed_at) AS seq,
                stage, amount, close_date
              FROM opportunity_history),
            f AS (
              SELECT opportunity_id, changed_at AS valid_from,
                lead(changed_at) OVER (PARTITION BY opportunity_id ORDER BY seq) AS valid_to,
                last_value(stage IGNORE NULLS) OVER w AS stage,
                last_value(amount IGNORE NULLS) OVER w AS amount,
                last_value(close_date IGNORE NULLS) OVER w AS close_date
              FROM h WINDOW w AS (PARTITION BY opportunity_id ORDER BY seq
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
            SELECT * FROM f""")
        state_src = """
            SELECT s.opportunity_id, s.valid_from, s.valid_to,
                   coalesce(s.stage, o.stage) AS stage, coalesce(s.amount, o.amount) AS amount,
                   coalesce(s.close_date, o.close_date) AS close_date, NULL::BOOLEAN AS won_flag,
                   NULL::BOOLEAN AS closed_flag
            FROM states s JOIN opportunities o USING (opportunity_id)
            UNION ALL
            SELECT o.opportunity_id, NULL, NULL, o.stage, o.amount, o.close_date, o.is_won, o.is_closed
            FROM opportunities o ANTI JOIN states s USING (opportunity_id)"""
    else:
        state_src = """
            SELECT opportunity_id, NULL::TIMESTAMP AS valid_from, NULL::TIMESTAMP AS valid_to, stage, amount,
                   close_date, is_won AS won_flag, is_closed AS closed_flag
            FROM opportunities"""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE won_lost AS
        WITH s AS ({state_src}),
        t AS (
          SELECT s.*,
            CASE WHEN s.stage IS NOT NULL AND s.stage IN ({closed}) THEN s.stage IN ({won})
                 WHEN s.stage IS NOT NULL AND s.won_flag IS NULL THEN FALSE
                 ELSE coalesce(s.won_flag, FALSE) END AS is_won,
            CASE WHEN s.stage IS NOT NULL AND s.closed_flag IS NULL THEN s.stage IN ({closed})
                 ELSE coalesce(s.closed_flag, s.stage IN ({closed}), FALSE) END AS is_closed
          FROM s)
        SELECT p.label AS period, o.opportunity_id, o.owner_id, o.account_id, o.created_date, o.product,
               o.lead_source, o.margin, o.cost, o.list_amount, o.segment, o.is_expansion,
               t.stage, t.amount, t.close_date, t.is_won, t.is_closed
        FROM t JOIN opp_static o USING (opportunity_id)
        JOIN periods p ON t.close_date BETWEEN p.start AND p.asof_end
          AND (t.valid_from IS NULL OR t.valid_from < p.asof_end + INTERVAL 1 DAY)
          AND (t.valid_to IS NULL OR t.valid_to >= p.asof_end + INTERVAL 1 DAY)
          AND (o.created_date IS NULL OR o.created_date <= p.asof_end)
        WHERE t.is_closed""")
    con.execute("DROP TABLE IF EXISTS states")  # only needed to build won_lost: free its memory


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


# ---------------------------------------------------------------- measures
def _view_available(ctx: CubeContext, kpi: registry.Kpi) -> list[str]:
    return ctx.data.missing(list(kpi.needs))


def compute_measures(ctx: CubeContext, periods: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """Every measure KPI in `ids`, per scope owner and period (and per dim value for the closed period P)."""
    groups: dict[tuple[str, str | None], list[registry.Kpi]] = {}
    for kpi_id in ids:
        k = registry.REGISTRY[kpi_id]
        if k.measure is None or _view_available(ctx, k):
            continue
        groups.setdefault((k.measure.view, k.measure.date), []).append(k)
    frames = []
    p_label = ctx.windows.closed.label  # type: ignore[attr-defined]
    for (view, date_col), ks in groups.items():
        pre = None
        if view == "won_lost":
            period_join = "JOIN periods p ON p.label = f.period"
            when = "f.close_date"
        elif date_col is None:
            period_join = "CROSS JOIN periods p"
            when = f"DATE '{ctx.as_of.isoformat()}'"
        else:
            period_join = f"JOIN periods p ON f.{date_col} BETWEEN p.start AND p.asof_end"
            when = f"f.{date_col}"
            pre = date_col
        frames.append(_measure_query(ctx, view, ks, period_join, when, None, None, pre_by=pre))
        dims = sorted({d for k in ks for d in k.measure.dims})  # type: ignore[union-attr]
        for dim in dims:
            with_dim = [k for k in ks if dim in k.measure.dims]  # type: ignore[union-attr]
            expr = with_dim[0].measure.dims[dim]  # type: ignore[union-attr]
            if not ctx.con.execute(f"SELECT EXISTS (SELECT 1 FROM {view} f WHERE f.{expr} IS NOT NULL)"
                                   ).fetchall()[0][0]:  # fetch all: no unfinished result left on con
                continue
            frames.append(_measure_query(ctx, view, with_dim, period_join, when, dim, f"f.{expr}",
                                         only_period=p_label))
    if not frames:
        return pd.DataFrame(columns=["owner_id", "period", "kpi", "dim", "dim_value", "value"])
    return pd.concat(frames, ignore_index=True)


def _measure_query(ctx: CubeContext, view: str, ks: list[registry.Kpi], period_join: str, when: str,
                   dim: str | None, dim_expr: str | None, only_period: str | None = None,
                   pre_by: str | None = None) -> pd.DataFrame:
    """Measures of `ks` per scope, period (and dim value). `pre_by`: the date column the facts may first be
    summed by (per owner and date) before they are joined to periods and scopes (far fewer rows to join; worth it
    for all periods, not one), done only when every aggregate adds up."""
    cols = []
    for k in ks:
        m = k.measure
        assert m is not None
        num, den = registry._sql_agg(m.agg, f"f.{m.expr}" if m.expr.isidentifier() else m.expr)
        where = m.where
        cols.append(f'{num} FILTER (WHERE {where}) AS "{k.id}__n"')
        cols.append(f'{den} FILTER (WHERE {where}) AS "{k.id}__d"' if den else f'NULL AS "{k.id}__d"')
    dim_sel = f", CAST({dim_expr} AS VARCHAR) AS dim_value" if dim_expr else ", NULL AS dim_value"
    dim_group = ", dim_value" if dim_expr else ""
    where_period = f"WHERE p.label = {_sql_str(only_period)}" if only_period else ""
    source = f"{view} f"
    if pre_by is not None and all(k.measure.agg != "count_distinct" for k in ks):  # type: ignore[union-attr]
        source = (f"(SELECT f.owner_id, f.{pre_by}{dim_sel if dim_expr else ''}, {', '.join(cols)} "
                  f"FROM {view} f GROUP BY ALL) f")
        dim_sel = ", f.dim_value" if dim_expr else dim_sel
        cols = [_sum_partial(k, part) for k in ks for part in ("n", "d")]
    sql = f"""
        SELECT a.scope_id AS owner_id, p.label AS period{dim_sel}, {', '.join(cols)}
        FROM {source} {period_join}
        {ctx.scope_join('f', when)}
        {where_period}
        GROUP BY a.scope_id, p.label{dim_group}"""
    wide = ctx.con.execute(sql).df()
    out = []
    for k in ks:
        n = wide[f"{k.id}__n"].astype("float64")
        d = wide[f"{k.id}__d"]
        value = n / d.astype("float64").where(d != 0) if k.measure.agg == "mean" else n  # type: ignore[union-attr]
        out.append(pd.DataFrame({"owner_id": wide["owner_id"], "period": wide["period"], "kpi": k.id,
                                 "dim": dim, "dim_value": wide["dim_value"], "value": value}))
    return pd.concat(out, ignore_index=True)


def _sum_partial(k: registry.Kpi, part: str) -> str:
    """SQL adding up a pre-summed numerator ("n") or denominator ("d") of KPI `k` (counts stay integers)."""
    col = f'"{k.id}__{part}"'
    agg = k.measure.agg  # type: ignore[union-attr]
    if part == "d" and agg != "mean":
        return f"NULL AS {col}"
    counted = agg == "count" or part == "d"
    return f"CAST(sum(f.{col}) AS BIGINT) AS {col}" if counted else f"sum(f.{col}) AS {col}"


# ---------------------------------------------------------------- assembling the cube
def compute_cube(cfg: Config, data: Dataset, cadence: str, as_of: date | str) -> Cube:
    """Compute every KPI, trust check, forecast, target and decomposition for every scope: one vectorised pass."""
    from spm_lib import decomposition, forecast, targets, trust
    from spm_lib.context import as_of_date

    registry.load_custom(cfg)
    ctx = build_context(cfg, data, cadence, as_of_date(as_of))
    periods = measure_periods(ctx)
    ctx.con.register("periods_df", periods)
    ctx.con.execute("CREATE OR REPLACE TEMP TABLE periods AS SELECT * FROM periods_df")
    _won_lost(ctx)
    ids = list(registry.REGISTRY)
    long = compute_measures(ctx, periods, ids)
    scopes = ctx.owners["owner_id"].astype(str).tolist()
    base = _complete_grid(long, scopes, periods["label"].tolist(), ids, ctx)

    period_objs = _period_objects(ctx, periods)
    target_metrics = _target_metrics(ctx, ids)
    tgt = pd.concat([targets.resolve_targets(ctx, m, period_objs) for m in target_metrics], ignore_index=True) \
        if target_metrics else pd.DataFrame(columns=["owner_id", "period", "metric", "target", "source"])
    base = _attach_targets(base, tgt)
    base = _apply_formulas(base, ids, ctx)

    probs = forecast.win_probabilities(ctx)
    q = ctx.windows.forward  # type: ignore[attr-defined]
    q_targets = targets.resolve_targets(ctx, "bookings", [q]) if "bookings" in target_metrics else tgt.iloc[0:0]
    fwd = forecast.forward_look(ctx, q_targets, probs)
    conv = forecast.stage_conversion(ctx)
    allk = pd.concat([base, fwd, conv], ignore_index=True)
    allk = _finish(allk, ctx)

    trust_df, trust_rows = trust.compute_trust(ctx, bookings_by_month=_month_bookings(ctx, periods, base))
    decomp = decomposition.decompose(ctx, allk, pd.concat([tgt, q_targets], ignore_index=True))
    facts = _facts(ctx)
    import uuid

    win = ctx.windows
    meta = {"run_id": uuid.uuid4().hex[:12], "computed_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "as_of": ctx.as_of.isoformat(), "cadence": cadence,
            "closed_period": win.closed.label,  # type: ignore[attr-defined]
            "forward_period": q.label, "forward_start": q.start.isoformat(), "forward_end": q.end.isoformat(),
            "notes": ctx.notes, "owners": len(scopes), "opportunities": int(len(ctx.snapshot)),
            "above_the_line": cfg.kpis.above_the_line,
            "kpi_meta": {k.id: {"label": k.label, "unit": k.unit, "direction": k.direction, "kind": k.kind,
                                "definition": k.definition} for k in registry.REGISTRY.values() if not k.hidden}}
    owners = ctx.owners.copy()
    owners["scope"] = [ctx.org.scope_kind(o) for o in owners["owner_id"]]  # type: ignore[attr-defined]
    return Cube(kpis=allk, trust=trust_df, trust_rows=trust_rows, decomposition=decomp, facts=facts,
                probabilities=probs, owners=owners, quality=_quality(data), meta=meta)


def _month_bookings(ctx: CubeContext, periods: pd.DataFrame, kpis: pd.DataFrame) -> pd.DataFrame | None:
    """The cube's bookings of the last full month per scope (owner_id, period, value), as they stood at its end;
    None when that month is not a period of this cube (trust then computes them itself)."""
    from spm_lib.trust import last_full_month

    label, start, end = last_full_month(ctx.as_of)
    month = periods[(periods["label"] == label) & (periods["start"] == pd.Timestamp(start))
                    & (periods["end"] == pd.Timestamp(end)) & (periods["asof_end"] == pd.Timestamp(end))]
    if month.empty:
        return None
    rows = kpis[(kpis["kpi"] == "bookings") & kpis["dim"].isna() & (kpis["period"] == label)]
    return rows[["owner_id", "period", "value"]].reset_index(drop=True)


def _quality(data: Dataset) -> pd.DataFrame:
    """The data-quality findings of the load, ids as text (for the report's data-quality section)."""
    from spm_lib.quality import FINDING_COLUMNS

    if data.findings.empty:
        return pd.DataFrame(columns=FINDING_COLUMNS)
    q = data.findings.copy()
    q["ids"] = q["ids"].map(lambda ids: ", ".join(map(str, list(ids)[:50])))
    return q


def _period_objects(ctx: CubeContext, periods: pd.DataFrame) -> list[object]:
    from spm_lib.periods import Period

    out: list[object] = []
    for r in periods.itertuples():
        grain = {"ttm": "ttm", "ytd": "ytd"}.get(str(r.grain), str(r.grain))
        out.append(Period(grain=grain, label=str(r.label), start=r.start.date(), end=r.end.date()))
    return out


def _target_metrics(ctx: CubeContext, ids: list[str]) -> list[str]:
    if not ctx.data.has("targets"):
        return []
    present = set(ctx.data.table("targets")["metric"].astype(str).unique())
    wanted = {registry.REGISTRY[i].target_id for i in ids if registry.REGISTRY[i].fixed_target is None}
    return sorted(present & wanted)


def _complete_grid(long: pd.DataFrame, scopes: list[str], labels: list[str], ids: list[str],
                   ctx: CubeContext) -> pd.DataFrame:
    """Fill absent (scope, period) rows: 0 for sums and counts, NaN for means; NA rows for missing data."""
    measure_ids = [i for i in ids if registry.REGISTRY[i].measure is not None]
    grid = pd.MultiIndex.from_product([scopes, labels, measure_ids], names=["owner_id", "period", "kpi"]).to_frame(
        index=False)
    nodim = long[long["dim"].isna()].drop(columns=["dim", "dim_value"])
    full = grid.merge(nodim, on=["owner_id", "period", "kpi"], how="left")
    agg = full["kpi"].map({i: registry.REGISTRY[i].measure.agg for i in measure_ids})  # type: ignore[union-attr]
    missing = full["kpi"].map({i: _reason(ctx.data.missing(list(registry.REGISTRY[i].needs))) for i in measure_ids})
    full["available"] = missing.isna()
    full["na_reason"] = missing
    zero_ok = agg.isin(["sum", "count", "count_distinct"]) & full["available"]
    full["value"] = full["value"].where(~(full["value"].isna() & zero_ok), 0.0)
    full["dim"] = None
    full["dim_value"] = None
    dims = long[long["dim"].notna()].assign(available=True, na_reason=None)
    return pd.concat([full, dims], ignore_index=True)


def _reason(missing: list[str]) -> str | None:
    return NOT_AVAILABLE + ", ".join(missing) if missing else None


def _attach_targets(df: pd.DataFrame, tgt: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["target"] = np.nan
    if tgt.empty:
        return df
    metric_of = {i: k.target_id for i, k in registry.REGISTRY.items()}
    df["_metric"] = df["kpi"].map(metric_of)
    t = tgt.rename(columns={"metric": "_metric", "target": "_t"})[["owner_id", "period", "_metric", "_t"]]
    df = df.merge(t, on=["owner_id", "period", "_metric"], how="left")
    nodim = df["dim"].isna()
    df.loc[nodim, "target"] = df.loc[nodim, "_t"]
    return df.drop(columns=["_metric", "_t"])


def _apply_formulas(df: pd.DataFrame, ids: list[str], ctx: CubeContext) -> pd.DataFrame:
    """Compute formula KPIs from their inputs of the same scope, period and dim value."""
    order = registry.formula_order(ids)
    if not order:
        return df
    key = ["owner_id", "period", "dim", "dim_value"]
    keyed = df.assign(dim=df["dim"].fillna(""), dim_value=df["dim_value"].fillna(""))
    # one row per (scope, period, dim, dim value) present: a pivot with dropna=False would build every combination
    # (2,000 owners x 15 periods x every dim value of any dim) and give rows of dim NaN with a dim_value, value NaN
    first = keyed.groupby(key + ["kpi"], sort=True)[["value", "target"]].first()  # first non-null, like pivot's
    vals = first["value"].unstack("kpi")
    tgts = first["target"].unstack("kpi")
    w = vals.copy()
    for c in tgts.columns:
        w[f"{c}__target"] = tgts[c]
    out = []
    for kpi_id in order:
        k = registry.REGISTRY[kpi_id]
        missing = ctx.data.missing(list(k.needs))
        if any(i not in w.columns for i in k.inputs):
            for i in k.inputs:
                if i not in w.columns:
                    w[i] = np.nan
        for i in k.inputs:
            if f"{i}__target" not in w.columns:
                w[f"{i}__target"] = np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            value = k.formula(w) if not missing else pd.Series(np.nan, index=w.index)  # type: ignore[misc]
        w[kpi_id] = value
        part = value.rename("value").reset_index()
        part["kpi"] = kpi_id
        part["available"] = not missing
        part["na_reason"] = _reason(missing)
        part["target"] = k.fixed_target if k.fixed_target is not None else np.nan
        if f"{kpi_id}__target" in w.columns and k.fixed_target is None:
            part["target"] = w[f"{kpi_id}__target"].to_numpy()
        dim_rows = part["dim"] != ""
        part = part[~dim_rows | part["value"].notna()]
        out.append(part)
    res = pd.concat(out, ignore_index=True)
    res["dim"] = res["dim"].replace("", None)
    res["dim_value"] = res["dim_value"].replace("", None)
    return pd.concat([df, res], ignore_index=True)


def _finish(df: pd.DataFrame, ctx: CubeContext) -> pd.DataFrame:
    """Add scope, level, kind, attainment and status; drop hidden KPIs; order columns."""
    from spm_lib.targets import attainment, status

    reg = registry.REGISTRY
    df = df[~df["kpi"].map({i: k.hidden for i, k in reg.items()}).fillna(False).astype(bool)].copy()
    owners = ctx.owners.set_index("owner_id")
    df["level"] = df["owner_id"].map(owners["level"])
    scope_of = {o: ctx.org.scope_kind(o) for o in owners.index}  # type: ignore[attr-defined]
    df["scope"] = df["owner_id"].map(scope_of)
    df["kind"] = df["kpi"].map({i: k.kind for i, k in reg.items()}).fillna("leading")
    direction = df["kpi"].map({i: k.direction for i, k in reg.items()}).fillna("higher")
    for c in ("target", "available", "na_reason", "dim", "dim_value"):
        if c not in df.columns:
            df[c] = np.nan if c == "target" else None
    df["available"] = df["available"].fillna(True).astype(bool)
    df["attainment"] = attainment(df["value"], df["target"], direction)
    df["status"] = status(df["attainment"], ctx.cfg.kpis.status)
    return df[KPI_COLUMNS].sort_values(["owner_id", "kpi", "period", "dim", "dim_value"],
                                       na_position="first").reset_index(drop=True)


def _facts(ctx: CubeContext) -> pd.DataFrame:
    """The as-of snapshot with each deal's ancestor owner ids (for drill-down), sorted by owner."""
    anc = ctx.ancestors.assign(scope_id=ctx.ancestors["scope_id"].astype(object))
    anc = anc.groupby("owner_id")["scope_id"].agg(list).rename("scope_ids")
    facts = ctx.snapshot.merge(anc, left_on="owner_id", right_index=True, how="left")
    return facts.sort_values(["owner_id", "opportunity_id"]).reset_index(drop=True)


# ---------------------------------------------------------------- the run folder
CUBE_FILES = ("kpis", "trust", "trust_rows", "decomposition", "probabilities", "owners", "quality")


def write_cube(cube: Cube, run_dir: Path) -> None:
    """Write the cube's Parquet files and cube.json into `run_dir`, each atomically (temp file, then rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "facts").mkdir(exist_ok=True)
    for name in CUBE_FILES:
        _atomic_parquet(getattr(cube, name), run_dir / f"{name}.parquet")
    _atomic_parquet(cube.facts, run_dir / "facts" / "opportunities.parquet")
    _atomic_text(json.dumps(cube.meta, indent=2, default=str), run_dir / "cube.json")


def read_cube(run_dir: Path) -> Cube:
    """Read a cube written by `write_cube`."""
    parts = {name: pd.read_parquet(run_dir / f"{name}.parquet") for name in CUBE_FILES}
    facts = pd.read_parquet(run_dir / "facts" / "opportunities.parquet")
    meta = json.loads((run_dir / "cube.json").read_text())
    return Cube(facts=facts, meta=meta, **parts)


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
