"""`spm backtest` (SPEC §5-6 forecast accuracy): the forecast replayed at each past period's start and middle with
only the data known then, against what was booked, beside two baselines measured on the same points.

For cadence C the period is C's own grain (quarterly: the fiscal quarter); a report's forward period is the grain
of the next cadence up, so the monthly report's quarter forecast has the quarterly backtest as its track record.
The forecast at day t is made "as of the end of t": the start point is the day before the period starts (nothing
booked yet), the middle point the day before its middle day. Baselines: `stage` (today's stage weighting: booked to
date + Σ amount x stage win rate over the open deals dated in the rest of the period) and `run_rate` (booked to
date / elapsed days x period days; none at the start). Actual: the bookings of the period as the data stands at
its last day. Scopes are those of the hierarchy valid at t.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spm_lib.config import Config
from spm_lib.domain.contract import Dataset
from spm_lib.domain.org import Org
from spm_lib.domain.periods import CADENCE_GRAIN, FiscalCalendar
from spm_lib.engine.calibration import (
    DEFAULTS,
    STAGE,
    Calibration,
    DealHistory,
    Settings,
    booked_between,
    calibrate,
    first_whole_period,
    per_scope,
    scope_forecast,
)
from spm_lib.engine.forecast import stage_win_probabilities
from spm_lib.errors import PeriodError
from spm_lib.util.atomic import write_atomic

POINTS = ("start", "middle")
METHODS = ("forecast", "stage", "run_rate")
ROW_COLUMNS = ["owner_id", "level", "period", "point", "as_of", "method", "actual", "to_date", "forecast", "p10",
               "p90", "stage", "run_rate"]


@dataclass
class Backtest:
    """The replayed forecasts (one row per scope x period x point) and the per-level summary."""

    cadence: str
    rows: pd.DataFrame
    summary: pd.DataFrame


def point_days(period: Any) -> dict[str, date]:
    """The as-of day of each forecast point of a period: the day before its start, the day before its middle."""
    middle = period.start + timedelta(days=period.days // 2)
    return {"start": period.start - timedelta(days=1), "middle": middle - timedelta(days=1)}


def periods_between(calendar: FiscalCalendar, grain: str, first: date, last: date) -> list[Any]:
    """The `grain` periods starting on or after `first` and ending on or before `last`."""
    out = []
    p = first_whole_period(calendar, grain, first)
    while p.end <= last:
        out.append(p)
        p = calendar.shift(p, 1)
    return out


def run_backtest(cfg: Config, data: Dataset, cadence: str, start: date | None = None, end: date | None = None,
                 settings: Settings = DEFAULTS) -> Backtest:
    """Replay the forecast of every `cadence` period between `start` and `end` (default: every period whose
    points have history to learn from and whose end the data reaches)."""
    grain = CADENCE_GRAIN[cadence]
    calendar = FiscalCalendar.from_config(cfg)
    deals = DealHistory.from_dataset(data, cfg.stages)
    if deals.first_close is None:
        raise PeriodError("spm backtest needs closed deals (opportunities with is_closed and close_date): none found")
    data_end = _data_end(data)
    first = start or _first_calibrated(calendar, grain, deals.first_close, settings)
    periods = periods_between(calendar, grain, first, min(end or data_end, data_end))
    if not periods:
        raise PeriodError(f"no whole {grain} between {first} and {min(end or data_end, data_end)} (the data ends on "
                          f"{data_end}): widen --from/--to")
    org = Org.from_owners(data.table("owners"))
    owners = data.table("owners").drop_duplicates("owner_id", keep="last")
    levels = dict(zip(owners["owner_id"].astype(str), owners["level"].astype(str), strict=True))
    final = deals.snapshot(data_end)
    parts = []
    for period in periods:
        actual_by_owner = booked_between(final, period.start, period.end)
        for point, day in point_days(period).items():
            anc = org.ancestors(as_of=day)
            snap = deals.snapshot(day)
            probs = stage_win_probabilities(snap, deals.history is not None, cfg.stages, day)
            stage_p = dict(zip(probs["stage"], probs["probability"], strict=True))
            cal = calibrate(deals, calendar, grain, day, stage_p, settings)
            fc = scope_forecast(cal, deals, day, period.start, period.end, anc)
            base = scope_forecast(_stage_only(cal), deals, day, period.start, period.end, anc)
            actual = per_scope(actual_by_owner.to_frame("actual"), anc)["actual"]
            elapsed = (day - period.start).days + 1
            run_rate = base["to_date"] / elapsed * period.days if elapsed > 0 else np.nan
            parts.append(pd.DataFrame({
                "owner_id": fc.index.astype(str), "level": [levels.get(o, "") for o in fc.index.astype(str)],
                "period": period.label,
                "point": point, "as_of": day.isoformat(), "method": cal.method,
                "actual": actual.reindex(fc.index, fill_value=0.0).to_numpy(), "to_date": fc["to_date"].to_numpy(),
                "forecast": fc["expected"].to_numpy(), "p10": fc["p10"].to_numpy(), "p90": fc["p90"].to_numpy(),
                "stage": base["expected"].reindex(fc.index).to_numpy(),
                "run_rate": (run_rate.reindex(fc.index).to_numpy() if isinstance(run_rate, pd.Series)
                             else np.full(len(fc), np.nan))}))
    rows = pd.concat(parts, ignore_index=True)[ROW_COLUMNS]
    rows = with_errors(rows)
    return Backtest(cadence=cadence, rows=rows, summary=summarise(rows))


def _first_calibrated(calendar: FiscalCalendar, grain: str, first_close: date, settings: Settings) -> date:
    """The start of the first period whose start point has `settings.min_periods` whole periods of history."""
    return calendar.shift(first_whole_period(calendar, grain, first_close), settings.min_periods).start


def _stage_only(cal: Calibration) -> Calibration:
    """The same cut-off's stage weighting (today's forecast)."""
    return Calibration(method=STAGE, reason="baseline", grain=cal.grain, cutoff=cal.cutoff, periods=cal.periods,
                       won=cal.won, stage_probabilities=cal.stage_probabilities)


def _data_end(data: Dataset) -> date:
    """The last day the data covers (the latest change of any deal)."""
    from spm_lib.engine.context import latest_change

    last = latest_change(data.table("opportunities"), data.tables.get("opportunity_history"))
    if last is None:
        raise PeriodError("spm backtest: the opportunities carry no dates (created_date, close_date)")
    return last


def with_errors(rows: pd.DataFrame) -> pd.DataFrame:
    """Add per method its error (forecast - actual) and % error (error / actual; NaN when nothing was booked)."""
    out = rows.copy()
    actual = out["actual"].where(out["actual"] > 0)
    for m in METHODS:
        out[f"{m}_error"] = out[m] - out["actual"]
        out[f"{m}_pct_error"] = 100.0 * out[f"{m}_error"] / actual
    out["in_range"] = (out["actual"] >= out["p10"]) & (out["actual"] <= out["p90"])
    return out


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per level and point, per method: MdAPE (median of |% error|) and bias (Σ error / Σ actual, in %), over the
    scopes and periods with bookings; plus the share of actuals inside the P10-P90 range."""
    r = rows[rows["actual"] > 0]
    out = []
    for (level, point), g in r.groupby(["level", "point"], sort=False):
        row: dict[str, Any] = {"level": level, "point": point, "n": len(g)}
        for m in METHODS:
            ok = g[g[m].notna()]
            row[f"{m}_mdape"] = float(ok[f"{m}_pct_error"].abs().median()) if len(ok) else np.nan
            row[f"{m}_bias"] = float(100.0 * ok[f"{m}_error"].sum() / ok["actual"].sum()) if len(ok) else np.nan
        row["in_range_pct"] = float(100.0 * g["in_range"].mean())
        out.append(row)
    order = {"executive": 0, "director": 1, "manager": 2, "rep": 3}
    df = pd.DataFrame(out)
    if df.empty:
        return df
    return df.sort_values(["point", "level"], key=lambda s: s.map(order).fillna(9) if s.name == "level" else s,
                          kind="stable").reset_index(drop=True)


def owner_track_record(rows: pd.DataFrame, point: str = "middle") -> pd.DataFrame:
    """Per owner: periods replayed, MdAPE and bias of the forecast at `point` (the report's track record)."""
    r = rows[(rows["point"] == point) & (rows["actual"] > 0)]
    g = r.groupby("owner_id")
    return pd.DataFrame({"periods": g.size(), "mdape": g["forecast_pct_error"].apply(lambda s: s.abs().median()),
                         "bias": 100.0 * g["forecast_error"].sum() / g["actual"].sum(),
                         "in_range_pct": 100.0 * g["in_range"].mean()})


BACKTEST_CADENCE = {"week": "weekly", "month": "monthly", "quarter": "quarterly", "year": "annual"}


def track_record(root: Path, calendar: FiscalCalendar, grain: str, as_of: date) -> tuple[pd.DataFrame, Path]:
    """Per owner, the mid-period track record (`owner_track_record`) in the latest backtest of `grain` periods
    (runs/backtest/<its cadence>/), over the periods that ended by as_of; empty without one; and that folder."""
    folder = backtest_folder(root, BACKTEST_CADENCE[grain])
    rows = read_backtest(folder)
    if rows is None or rows.empty:
        return owner_track_record(pd.DataFrame(columns=ROW_COLUMNS + ["forecast_pct_error", "forecast_error",
                                                                      "in_range"])), folder
    ends = {label: calendar.parse(str(label)).end for label in rows["period"].unique()}
    return owner_track_record(rows[rows["period"].map(ends) <= as_of]), folder


def forecast_meta(cal: Calibration, root: Path, calendar: FiscalCalendar, as_of: date) -> dict[str, Any]:
    """What a report says about its forecast: the method and why, the grain of its period and the cadence whose
    backtest replays that grain, the backtest it reads (None without one), and
    per owner the track record there (periods, mdape, bias, in_range_pct: % figures of the mid-period forecast)."""
    record, folder = track_record(root, calendar, cal.grain, as_of)
    periods = record["periods"].astype("int64")
    per_owner = {str(o): {"periods": int(periods[o]), "mdape": _number(record.at[o, "mdape"]),
                          "bias": _number(record.at[o, "bias"]), "in_range_pct": _number(record.at[o, "in_range_pct"])}
                 for o in record.index}
    return {"method": cal.method, "reason": cal.reason, "grain": cal.grain, "cadence": BACKTEST_CADENCE[cal.grain],
            "backtest": f"runs/backtest/{BACKTEST_CADENCE[cal.grain]}" if per_owner else None,
            "track_record": per_owner}


def _number(value: Any) -> float | None:
    """A float for JSON (None for NaN)."""
    return None if pd.isna(value) else round(float(value), 2)


def format_summary(bt: Backtest) -> str:
    """The per-level table `spm backtest` prints."""
    head = (f"{'point':<7}{'level':<10}{'n':>4}  {'forecast MdAPE':>14}{'bias':>8}  {'stage MdAPE':>11}{'bias':>8}"
            f"  {'run-rate MdAPE':>14}{'bias':>8}  {'in P10-P90':>10}")
    lines = [head]
    for r in bt.summary.itertuples():
        def pct(v: Any) -> str:
            return "n/a" if pd.isna(v) else f"{v:.1f}%"
        lines.append(f"{r.point:<7}{r.level:<10}{r.n:>4}  {pct(r.forecast_mdape):>14}{pct(r.forecast_bias):>8}  "
                     f"{pct(r.stage_mdape):>11}{pct(r.stage_bias):>8}  {pct(r.run_rate_mdape):>14}"
                     f"{pct(r.run_rate_bias):>8}  {pct(r.in_range_pct):>10}")
    return "\n".join(lines)


def backtest_folder(root: Path, cadence: str) -> Path:
    """Where `spm backtest` writes: runs/backtest/<cadence>/ (the latest backtest of that cadence)."""
    return root / "runs" / "backtest" / cadence


def backtest_and_write(cfg: Config, cadence: str, start: date | None, end: date | None) -> tuple[str, Path]:
    """`spm backtest`: load the data, replay, write into runs/backtest/<cadence>/; the printed table and folder."""
    from spm_lib.data.load import load_dataset

    bt = run_backtest(cfg, load_dataset(cfg), cadence, start, end)
    folder = backtest_folder(cfg.root, cadence)
    periods = bt.rows["period"].unique().tolist()
    write_backtest(bt, folder, {"cadence": cadence, "periods": periods, "computed_at": pd.Timestamp.now(tz="UTC")})
    head = (f"Backtest of the {CADENCE_GRAIN[cadence]} forecast, {len(periods)} periods ({periods[0]} to "
            f"{periods[-1]}), at each period's start and middle; MdAPE = median |forecast - booked| / booked, "
            f"bias = Σ(forecast - booked) / Σ booked")
    return head + "\n" + format_summary(bt), folder


def write_backtest(bt: Backtest, folder: Path, meta: dict[str, Any]) -> list[Path]:
    """Write the rows (backtest.parquet, backtest.csv), the summary (summary.csv), the chart (backtest.html) and
    `meta` (backtest.json) into `folder`, each atomically; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    parquet = folder / "backtest.parquet"
    fd, tmp = tempfile.mkstemp(prefix=".backtest.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        bt.rows.to_parquet(tmp, index=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, parquet)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return [parquet, write_atomic(folder / "backtest.csv", bt.rows.to_csv(index=False)),
            write_atomic(folder / "summary.csv", bt.summary.to_csv(index=False)),
            write_atomic(folder / "backtest.html", chart_html(bt)),
            write_atomic(folder / "backtest.json", json.dumps(meta, indent=2, default=str))]


def read_backtest(folder: Path) -> pd.DataFrame | None:
    """The rows of the backtest in `folder` (None when there is none)."""
    path = folder / "backtest.parquet"
    return pd.read_parquet(path) if path.is_file() else None


LABELS = {"forecast": "calibrated forecast", "stage": "stage weighting (today's)", "run_rate": "naive run-rate"}
COLOURS = {"forecast": "#1f5fa8", "stage": "#9aa5b1", "run_rate": "#e3a33b"}


def chart_html(bt: Backtest) -> str:
    """A self-contained page (its own plotly.js) holding `chart_figure`."""
    fig = chart_figure(bt)
    bundle = resources.files("spm_lib.static").joinpath("plotly-finance.min.js").read_text(encoding="utf-8")
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"backtest-{bt.cadence}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>spm backtest — {bt.cadence}</title>"
            f"<script>{bundle}</script></head><body>{body}</body></html>")


def chart_figure(bt: Backtest) -> Any:
    """MdAPE and bias per level and method at each point, and the top scope's forecast (with its P10-P90 range)
    against what was booked, period by period (a plotly Figure)."""
    import plotly.graph_objects as go  # optional at import time: only the chart needs plotly
    from plotly.subplots import make_subplots

    s = bt.summary[bt.summary["level"] != "rep"]
    fig = make_subplots(rows=3, cols=1, vertical_spacing=0.12, subplot_titles=(
        "Median absolute % error (manager level and up)", "Bias: Σ(forecast − actual) / Σ actual, %",
        "The whole company at mid-period: forecast with P10–P90 vs booked"))
    x = s["point"] + " · " + s["level"]
    for m in METHODS:
        fig.add_trace(go.Bar(x=x, y=s[f"{m}_mdape"], name=LABELS[m], legendgroup=m, marker_color=COLOURS[m]),
                      row=1, col=1)
        fig.add_trace(go.Bar(x=x, y=s[f"{m}_bias"], name=LABELS[m], legendgroup=m, showlegend=False,
                             marker_color=COLOURS[m]), row=2, col=1)
    mid = bt.rows[bt.rows["point"] == "middle"]
    top = mid[mid["owner_id"] == mid.groupby("owner_id")["actual"].sum().idxmax()] if len(mid) else mid
    fig.add_trace(go.Scatter(x=top["period"], y=top["forecast"], mode="markers", name="forecast (P10–P90)",
                             marker_color=COLOURS["forecast"],
                             error_y={"type": "data", "symmetric": False, "array": top["p90"] - top["forecast"],
                                      "arrayminus": top["forecast"] - top["p10"]}), row=3, col=1)
    fig.add_trace(go.Scatter(x=top["period"], y=top["actual"], mode="lines+markers", name="booked",
                             line_color="#222222"), row=3, col=1)
    fig.add_trace(go.Scatter(x=top["period"], y=top["stage"], mode="markers", name="stage weighting",
                             marker={"symbol": "x", "color": COLOURS["stage"], "size": 9}), row=3, col=1)
    fig.update_layout(height=1000, barmode="group", title=f"spm backtest — {bt.cadence}", template="plotly_white")
    return fig
