"""Comparisons above the line (previous period, same period last year, year to date) and the leaderboard's rank
movement, on a small company whose numbers are worked out by hand. Monthly run on 2026-10-31 (FY = calendar year)."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from spm_lib.config import load_config
from spm_lib.domain.contract import Dataset, typed
from spm_lib.domain.periods import FiscalCalendar
from spm_lib.engine.comparisons import compare, comparison_meta, comparison_rows, rank_movement
from spm_lib.engine.cube import compute_cube, write_cube
from spm_lib.report.core import Report, load_cube

ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-10-31"
UNITS = {"bookings": "currency", "win_rate": "pct", "deals_won": "count"}


def company(*, last_year: bool = True, with_targets: bool = True) -> Dataset:
    """manager M <- reps R1, R2; no opportunity history."""
    owners = typed("owners", pd.DataFrame({"owner_id": ["M", "R1", "R2"], "manager_id": [None, "M", "M"],
                                           "name": ["Max", "Rita", "Rob"], "level": ["manager", "rep", "rep"]}))
    rows = [
        # id, owner, stage, amount, created, close
        ("w1", "R1", "Closed Won", 100.0, "2025-09-01", "2025-10-15"),  # October last year
        ("w2", "R1", "Closed Won", 200.0, "2026-08-01", "2026-09-10"),  # September (the previous period)
        ("w3", "R1", "Closed Won", 300.0, "2026-09-01", "2026-10-05"),  # October
        ("w4", "R2", "Closed Won", 400.0, "2026-08-01", "2026-09-20"),  # September
        ("w5", "R2", "Closed Won", 50.0, "2026-09-15", "2026-10-20"),   # October
        ("l1", "R2", "Closed Lost", 80.0, "2026-09-01", "2026-10-25"),  # October, lost
        ("w6", "R1", "Closed Won", 150.0, "2026-01-05", "2026-02-10"),  # February: in the year to date only
    ]
    o = pd.DataFrame([r for r in rows if last_year or r[0] != "w1"],
                     columns=["opportunity_id", "owner_id", "stage", "amount", "created_date", "close_date"])
    o["account_id"] = "a-" + o["opportunity_id"]
    tables = {"owners": owners, "opportunities": typed("opportunities", o)}
    if with_targets:
        months = [f"2026-{m:02d}" for m in range(1, 11)]
        t = pd.DataFrame({"owner_id": "M", "period": months, "metric": "bookings",
                          "value": [100.0] * 9 + [500.0]})  # Jan..Sep 100 each, Oct 500: YTD 1,400
        t = pd.concat([t, pd.DataFrame({"owner_id": ["R1", "R2", "R1", "R2"],
                                        "period": ["2026-09", "2026-09", "2026-10", "2026-10"],
                                        "metric": "bookings", "value": [100.0, 200.0, 200.0, 100.0]})])
        tables["targets"] = typed("targets", t)
    return Dataset(tables=tables)


@pytest.fixture(scope="module")
def cube():
    return compute_cube(load_config(ROOT), company(), "monthly", AS_OF)


def _rows(cube, owner: str, ids: list[str]) -> pd.DataFrame:
    k = cube.kpis
    return comparison_rows(k[k.owner_id == owner], ids, "2026-10", cube.meta["comparisons"], UNITS).set_index("kpi")


def test_the_cube_holds_last_years_period_beside_the_trend(cube):
    meta = cube.meta["comparisons"]
    assert (meta["previous"], meta["last_year"], meta["ytd"]) == ("2026-09", "2025-10", "FY2026-YTD")
    assert meta["extra"] == ["2025-10"]  # the 12-month trend starts at 2025-11
    assert meta["first_day"] == "2025-09-01" and meta["no_data"] == []


def test_each_kpi_against_previous_last_year_and_ytd(cube):
    r = _rows(cube, "M", ["bookings", "win_rate", "deals_won"])
    # bookings: Oct 300 + 50 = 350; Sep 200 + 400 = 600; Oct last year 100; YTD 150 + 200 + 300 + 400 + 50 = 1,100
    b = r.loc["bookings"]
    assert (b.now, b.previous, b.last_year, b.ytd) == (350, 600, 100, 1100)
    assert b.change_previous == pytest.approx((350 - 600) / 600)
    assert b.change_last_year == pytest.approx(2.5)
    assert b.ytd_attainment == pytest.approx(1100 / 1400)  # the months' targets Jan..Oct add up to 1,400
    # win rate: Oct 2 won, 1 lost = 66.7 %; Sep 2 won = 100 %; a change in points, not a ratio
    w = r.loc["win_rate"]
    assert w.now == pytest.approx(200 / 3) and w.previous == 100
    assert w.change_previous == pytest.approx(200 / 3 - 100)
    assert w.ytd == pytest.approx(500 / 6)  # 5 won, 1 lost
    assert r.loc["deals_won"].change_previous == 0


def test_a_rep_and_a_forward_kpi(cube):
    r = _rows(cube, "R2", ["bookings", "pipeline_coverage"])
    assert list(r.index) == ["bookings"]  # coverage is of the forward period only: nothing to compare
    assert (r.loc["bookings"].now, r.loc["bookings"].previous, r.loc["bookings"].last_year) == (50, 400, 0)
    assert math.isnan(r.loc["bookings"].change_last_year)  # from 0: no ratio


def test_a_period_before_the_data_starts_is_missing_not_zero():
    c = compute_cube(load_config(ROOT), company(last_year=False, with_targets=False), "monthly", AS_OF)
    meta = c.meta["comparisons"]
    assert meta["first_day"] == "2026-01-05" and "2025-10" in meta["no_data"]
    r = _rows(c, "M", ["bookings"]).loc["bookings"]
    assert r.now == 350 and r.previous == 600 and r.ytd == 1100  # without targets the values still show
    assert math.isnan(r.last_year) and math.isnan(r.change_last_year) and math.isnan(r.ytd_attainment)


def test_quarterly_last_year_is_in_the_trend():
    cal = FiscalCalendar.from_config(load_config(ROOT))
    meta = comparison_meta(cal, cal.windows("quarterly", date(2026, 9, 30)), date(2026, 1, 1))
    assert (meta["previous"], meta["last_year"], meta["extra"]) == ("FY2026-Q2", "FY2025-Q3", [])
    assert meta["no_data"][-1] == "FY2025-Q4"  # trend quarters ending before 2026-01-01


def test_compare_in_points_or_relative():
    assert compare(40.0, 30.0, "pct") == pytest.approx(10.0)
    assert compare(120.0, 100.0, "currency") == pytest.approx(0.2)
    assert math.isnan(compare(5.0, 0.0, "count")) and math.isnan(compare(float("nan"), 1.0, "count"))


def test_rank_movement_by_hand():
    now = pd.Series({"A": 90.0, "B": 120.0, "C": 60.0, "D": 10.0})
    before = pd.Series({"A": 100.0, "B": 50.0, "C": 80.0})  # D had no value
    m = rank_movement(now, before)
    # now B 1, A 2, C 3, D 4; before A 1, C 2, B 3
    assert m["rank"].to_dict() == {"A": 2, "B": 1, "C": 3, "D": 4}
    assert m["moved"].to_dict()["B"] == 2 and m["moved"]["A"] == -1 and m["moved"]["C"] == -1
    assert math.isnan(m.loc["D", "moved"])


def test_the_report_shows_comparisons_leaderboard_and_no_movement_without_history(cube, tmp_path):
    write_cube(cube, tmp_path)
    rpt = Report(load_cube(tmp_path), "M", tmp_path)
    atl = str(rpt.above_the_line())
    assert "Previous (2026-09)" in atl and "Last year (2025-10)" in atl and "Year to date (FY2026-YTD)" in atl
    assert "▼&nbsp;42 %" in atl  # bookings 350 against 600
    assert "79 % of target" in atl  # YTD 1,100 of 1,400
    # quota attainment is bookings against their target: its bar would repeat the bookings bar
    assert Report._same_bar(rpt.kpi_rows(rpt.above_the_line_ids())) == ["quota_attainment"]
    if "attainment" in rpt.figures():
        assert "Quota attainment" not in list(rpt.figures()["attainment"].data[0].y)
    assert "2025-10" not in list(rpt.trend_rows("bookings")["period"])  # last year is no trend point
    # leaderboard on attainment: Oct R1 300/200 = 150 %, R2 50/100 = 50 %; Sep R1 200/100 = 200 %, R2 400/200
    # = 200 %: both first then (tied), so R1 keeps 1st (=) and R2 drops to 2nd
    team = rpt.team_ranking_html()
    assert team.index("Rita") < team.index("Rob")
    assert 'title="same place as the previous period">=' in team and "down 1 since the previous period" in team
    assert "Cannot show how the pipeline moved" in str(rpt.forward_look())


def test_an_annual_report_compares_with_last_year_only(tmp_path):
    c = compute_cube(load_config(ROOT), company(with_targets=False), "annual", "2026-12-31")
    write_cube(c, tmp_path)
    rpt = Report(load_cube(tmp_path), "M", tmp_path)
    atl = str(rpt.above_the_line())
    # the previous year is last year, and the year closed is the year to date: one column
    assert "Compared with last year</h4>" in atl and "Last year (FY2025)" in atl
    assert "Previous (" not in atl and "Year to date (" not in atl
    assert "▲&nbsp;1,000 %" in atl  # FY2026 1,100 against FY2025's 100


def test_weekly_last_year_is_52_weeks_back_beside_the_trend():
    cal = FiscalCalendar.from_config(load_config(ROOT))
    meta = comparison_meta(cal, cal.windows("weekly", date(2026, 10, 28)), None)
    # 2026-10-28 is in ISO week 44; the 13-week trend reaches back to week 32
    assert (meta["previous"], meta["last_year"], meta["ytd"]) == ("2026-W43", "2025-W44", "FY2026-YTD")
    assert meta["extra"] == ["2025-W44"] and meta["first_day"] is None and meta["no_data"] == []
