"""data.replay gives, on any day, the same values as asof.snapshot (the one definition of "as it stood")."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spm_lib.config import StagesConfig
from spm_lib.data.asof import snapshot
from spm_lib.data.replay import COLUMNS, Replay
from tests.test_calibration import opportunities_and_history


def _same(replayed: pd.DataFrame, asof: pd.DataFrame) -> None:
    assert len(replayed) == len(asof)
    for col in COLUMNS:
        a, b = replayed[col].reset_index(drop=True), asof[col].reset_index(drop=True)
        if col in ("amount", "pushes", "days_in_stage", "max_stage_index"):
            np.testing.assert_array_equal(a.astype("float64").fillna(-1e18).to_numpy(),
                                          b.astype("Float64").astype("float64").fillna(-1e18).to_numpy(), err_msg=col)
        elif col in ("close_date", "created_date"):
            np.testing.assert_array_equal(pd.to_datetime(a).to_numpy(), pd.to_datetime(b).to_numpy(), err_msg=col)
        elif col in ("is_closed", "is_won"):
            np.testing.assert_array_equal(a.astype(bool).to_numpy(), b.astype(bool).to_numpy(), err_msg=col)
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist(), col


@pytest.mark.parametrize("day", [date(2025, 12, 31), date(2026, 1, 24), date(2026, 2, 14), date(2026, 3, 31)])
def test_the_tiny_company_as_asof_sees_it(day: date) -> None:
    opps, hist = opportunities_and_history()
    stages = StagesConfig()
    got = Replay(opps, hist, stages).snapshot(day)
    _same(got, snapshot(opps, hist, day, stages))
    if day == date(2026, 1, 24):  # D3 was pushed that day (to February 10)
        d3 = got[got["opportunity_id"] == "D3"].iloc[0]
        assert d3["pushes"] == 1 and d3["close_date"] == pd.Timestamp("2026-02-10")


def test_the_demo_company_as_asof_sees_it(small_project: Path) -> None:
    import duckdb

    with duckdb.connect(str(small_project / "data" / "demo.duckdb"), read_only=True) as con:
        opps = con.execute("SELECT * FROM opportunities").df()
        hist = con.execute("SELECT * FROM opportunity_history").df()
    stages = StagesConfig()
    replay = Replay(opps, hist, stages)
    for day in (date(2024, 6, 30), date(2025, 8, 15), date(2026, 10, 31)):
        _same(replay.snapshot(day), snapshot(opps, hist, day, stages))
