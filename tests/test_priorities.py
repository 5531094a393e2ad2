"""engine.priorities: the quarterly and annual sections' numbers, on hand-made rows."""

from __future__ import annotations

import math

import pandas as pd

from spm_lib.engine.priorities import bookings_shift, resource_needs, team_year


def test_bookings_shift_against_the_trailing_year() -> None:
    now = pd.DataFrame({"dim_value": ["A", "B"], "value": [300.0, 100.0]})
    ttm = pd.DataFrame({"dim_value": ["A", "C"], "value": [500.0, 500.0]})
    df = bookings_shift(now, ttm).set_index("dim_value")
    assert df.index.tolist() == ["C", "A", "B"]  # largest loss of share first
    assert df.loc["A", "share"] == 75.0 and df.loc["A", "share_ttm"] == 50.0 and df.loc["A", "shift"] == 25.0
    assert df.loc["C", "value"] == 0.0 and df.loc["C", "shift"] == -50.0


def test_resource_needs_reads_attainment_against_coverage() -> None:
    att = pd.DataFrame({"owner_id": ["a", "b", "c", "d"], "name": ["A", "B", "C", "D"],
                        "value": [80.0, 85.0, 95.0, math.nan]})
    cov = pd.DataFrame({"owner_id": ["a", "b", "c"], "value": [1.5, 2.5, 0.5]})
    assert resource_needs(att, cov)["need"].tolist() == [
        "support: behind with thin pipeline", "protect: behind, pipeline there", "on track", "no target"]


def test_team_year_counts_the_sales_executives_below_each_team() -> None:
    owners = pd.DataFrame({"owner_id": ["E", "M1", "M2", "R1", "R2", "R3"],
                           "manager_id": [None, "E", "E", "M1", "M1", "M2"],
                           "name": ["Eve", "Max", "Mia", "Rob", "Ria", "Ray"],
                           "level": ["executive", "manager", "manager", "rep", "rep", "rep"]})
    bookings = {"M1": pd.Series({"value": 900.0, "attainment": 0.9}), "M2": None}
    df = team_year(owners, bookings, [("M1", "Max"), ("M2", "Mia")]).set_index("name")
    assert df.loc["Max", "reps"] == 2 and df.loc["Max", "per_rep"] == 450.0 and df.loc["Max", "attainment"] == 90.0
    assert df.loc["Mia", "reps"] == 1 and math.isnan(df.loc["Mia", "bookings"])
    assert team_year(owners, {}, [("R1", "Rob")]).loc[0, "reps"] == 1  # a rep alone still counts as one head
