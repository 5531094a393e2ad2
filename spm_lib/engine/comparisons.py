"""Comparisons of the above-the-line KPIs (SPEC §8.3): the closed period against the previous period, the same
period last year and the year to date; and the direct reports' rank now against the previous period.

The cube holds the trend (ending with the closed period P, so P − 1), the fiscal year to date, and the same period
last year (added as a period of its own when the trend does not reach back a year). A comparison period that ends
before the data starts has no value ("—"), never 0.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from spm_lib.domain.periods import CadenceWindows, FiscalCalendar, Period

YEAR_BACK = {"week": 52, "month": 12, "quarter": 4, "year": 1}  # periods of each grain a year back
COMPARED = ("previous", "last_year", "ytd")


def comparison_periods(calendar: FiscalCalendar, windows: CadenceWindows) -> dict[str, Period]:
    """The periods the closed one is compared with: previous, last_year (the same period a year back) and ytd
    (the fiscal year to as_of)."""
    closed = windows.closed
    return {"previous": calendar.shift(closed, -1),
            "last_year": calendar.shift(closed, -YEAR_BACK[closed.grain]),
            "ytd": calendar.to_date("ytd", windows.as_of)}


def extra_periods(calendar: FiscalCalendar, windows: CadenceWindows) -> list[Period]:
    """The comparison periods of the closed period's grain the trend does not hold (the cube adds them)."""
    trend = {p.label for p in windows.trend}
    return [p for key, p in comparison_periods(calendar, windows).items()
            if key != "ytd" and p.label not in trend]


def comparison_meta(calendar: FiscalCalendar, windows: CadenceWindows, first_day: date | None) -> dict[str, Any]:
    """What cube.json says about the comparisons: each period's label, those added beside the trend, the first
    day of data, and the labels of the periods that end before it (shown as "—")."""
    periods = comparison_periods(calendar, windows)
    before = sorted(p.label for p in [*periods.values(), *windows.trend] if first_day is not None and p.end < first_day)
    return {**{key: p.label for key, p in periods.items()},
            "extra": [p.label for p in extra_periods(calendar, windows)],
            "first_day": first_day.isoformat() if first_day is not None else None, "no_data": before}


def first_day(opportunities: pd.DataFrame) -> date | None:
    """The first day of the data: the earliest creation or close date of any opportunity (None when none has one)."""
    days = [pd.to_datetime(opportunities[c]).min() for c in ("created_date", "close_date") if c in opportunities]
    known = [d for d in days if pd.notna(d)]
    return min(known).date() if known else None


def compare(value: float, other: float, unit: str) -> float:
    """The change of `value` against `other`: points for a percentage KPI, else a relative change (a share; NaN when
    `other` is 0 or either is missing)."""
    if np.isnan(value) or np.isnan(other):
        return float("nan")
    if unit == "pct":
        return value - other
    return (value - other) / abs(other) if other else float("nan")


def rank_movement(now: pd.Series, before: pd.Series) -> pd.DataFrame:
    """Rank (1 = best, highest value) of each owner now and before, and the places moved up (positive) or down;
    owners without a value are unranked (NaN)."""
    rank_now = now.rank(ascending=False, method="min")
    rank_before = before.reindex(now.index).rank(ascending=False, method="min")
    return pd.DataFrame({"rank": rank_now, "rank_before": rank_before, "moved": rank_before - rank_now},
                        index=now.index)


def comparison_rows(kpis: pd.DataFrame, ids: list[str], closed: str, meta: dict[str, Any],
                    units: dict[str, str]) -> pd.DataFrame:
    """Per KPI of `ids` measured for the `closed` period, its value now, in each compared period (NaN where that
    period ends before the data starts), the change against the previous period and last year, and the YTD
    attainment. `kpis`: one owner's KPI rows; `meta`: cube.json's comparisons; `units`: each KPI's unit."""
    nodim = kpis[kpis["dim"].isna()]
    cell = {(k, p): (v, a) for k, p, v, a in zip(nodim["kpi"], nodim["period"], nodim["value"], nodim["attainment"],
                                                  strict=True)}
    no_data = set(meta.get("no_data") or [])

    def value(kpi_id: str, period: str | None) -> tuple[float, float]:
        if period is None or period in no_data or (kpi_id, period) not in cell:
            return float("nan"), float("nan")
        v, a = cell[(kpi_id, period)]
        return (float("nan") if pd.isna(v) else float(v)), (float("nan") if pd.isna(a) else float(a))

    rows = []
    for kpi_id in ids:
        if (kpi_id, closed) not in cell:  # forward-looking only: nothing to compare with
            continue
        now = value(kpi_id, closed)[0]
        prev, last = value(kpi_id, meta.get("previous"))[0], value(kpi_id, meta.get("last_year"))[0]
        ytd, ytd_att = value(kpi_id, meta.get("ytd"))
        unit = units.get(kpi_id, "count")
        rows.append({"kpi": kpi_id, "now": now, "previous": prev, "last_year": last, "ytd": ytd,
                     "ytd_attainment": ytd_att, "change_previous": compare(now, prev, unit),
                     "change_last_year": compare(now, last, unit)})
    return pd.DataFrame(rows, columns=["kpi", "now", "previous", "last_year", "ytd", "ytd_attainment",
                                       "change_previous", "change_last_year"])
