"""A public CRM export mapped by config only (Maven Analytics' CRM Sales Opportunities sample) gives, per rep,
manager and region and month, the same bookings, deals won and lost, win rate, average deal size and sales cycle
as an independent SQL computation straight over the export's CSV files (issue 3's acceptance check, in small)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from spm_lib.data.load import load_dataset
from spm_lib.engine.cube import compute_cube
from tests.test_sources import FIXTURES, example_project

CRM = FIXTURES / "maven_crm"
KPIS = ["bookings", "deals_won", "deals_lost", "win_rate", "avg_deal_size", "sales_cycle_days"]
LEVELS = {"rep": "t.sales_agent", "manager": "t.manager", "region": "t.regional_office", "company": "'CEO'"}


def sql_truth() -> pd.DataFrame:
    """The KPIs per owner (rep, manager, regional office, the synthetic CEO) and close month, in plain SQL."""
    parts = []
    with duckdb.connect() as con:
        for key in LEVELS.values():
            parts.append(con.execute(f"""
                WITH deals AS (
                    SELECT p.*, strftime(CAST(p.close_date AS DATE), '%Y-%m') AS month
                    FROM read_csv('{CRM / "sales_pipeline.csv"}', header = true, all_varchar = true) p
                    WHERE p.deal_stage IN ('Won', 'Lost'))
                SELECT {key} AS owner_id, month,
                       coalesce(sum(CAST(close_value AS DECIMAL(18, 2))) FILTER (WHERE deal_stage = 'Won'), 0)
                           AS bookings,
                       count(*) FILTER (WHERE deal_stage = 'Won') AS deals_won,
                       count(*) FILTER (WHERE deal_stage = 'Lost') AS deals_lost,
                       100.0 * count(*) FILTER (WHERE deal_stage = 'Won') / count(*) AS win_rate,
                       sum(CAST(close_value AS DECIMAL(18, 2))) FILTER (WHERE deal_stage = 'Won')
                           / nullif(count(*) FILTER (WHERE deal_stage = 'Won'), 0) AS avg_deal_size,
                       avg(date_diff('day', CAST(engage_date AS DATE), CAST(close_date AS DATE)))
                           FILTER (WHERE deal_stage = 'Won' AND engage_date IS NOT NULL) AS sales_cycle_days
                FROM deals d JOIN read_csv('{CRM / "sales_teams.csv"}', header = true) t
                  ON t.sales_agent = d.sales_agent
                GROUP BY ALL""").df())
    truth = pd.concat(parts, ignore_index=True)
    return truth.astype({k: "float64" for k in KPIS})


@pytest.mark.parametrize("as_of", [date(2017, 6, 30), date(2017, 12, 31)])
def test_cube_matches_sql_per_rep_manager_region_and_month(tmp_path: Path, as_of: date) -> None:
    cfg = example_project(tmp_path, "maven_crm")
    cube = compute_cube(cfg, load_dataset(cfg), "monthly", as_of)
    last_year = cube.meta["comparisons"]["extra"]  # the same month last year, for the comparisons
    months = [p for p in cube.kpis["period"].unique() if len(p) == 7 and p[4] == "-" and p not in last_year]
    assert len(months) == 12 and max(months) == as_of.strftime("%Y-%m")
    truth = sql_truth()
    truth = truth[truth["month"].isin(months)].set_index(["owner_id", "month"])
    got = cube.kpis[cube.kpis["kpi"].isin(KPIS) & cube.kpis["dim"].isna() & cube.kpis["period"].isin(months)]
    got = got.pivot_table(index=["owner_id", "period"], columns="kpi", values="value", dropna=False)
    assert len(truth) > 20  # a dozen months with closes, at four levels
    for (owner, month), row in truth.iterrows():
        for kpi in KPIS:
            expected, actual = row[kpi], got.loc[(owner, month), kpi]
            if np.isnan(expected):
                assert np.isnan(actual), (owner, month, kpi)
            else:
                assert actual == pytest.approx(expected, rel=1e-12, abs=0.005), (owner, month, kpi)
    # every other owner-month has nothing closed: zero bookings and deals, no ratio
    idle = got[~got.index.isin(truth.index)]
    assert (idle[["bookings", "deals_won", "deals_lost"]] == 0).all().all()
    assert idle[["win_rate", "avg_deal_size", "sales_cycle_days"]].isna().all().all()
    # spot check by hand: Central (Dustin Brinkmann's and Rocco Neubert's reps) in September 2017
    if as_of.month == 12:
        central = got.loc[("Central", "2017-09")]
        hand = truth.loc[("Central", "2017-09")]
        assert central["deals_won"] == hand["deals_won"] and central["bookings"] == hand["bookings"]
