"""Pipeline movement since the start of the closed period, on a small company whose every step is worked out by hand.

Monthly run on 2026-10-31: closed period October, forward period FY2026-Q4 (Oct-Dec). The start is the end of
2026-09-30, when the window is close dates 2026-10-01..2026-12-31; now it is 2026-11-01..2026-12-31.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from spm_lib.config import load_config
from spm_lib.domain.contract import Dataset, typed
from spm_lib.engine.cube import compute_cube, read_cube, write_cube
from spm_lib.engine.movement import STEPS, reconciles
from spm_lib.report.core import Report, load_cube

ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-10-31"


def company(with_history: bool = True) -> Dataset:
    """manager M <- reps R1, R2; every deal has a history row from its creation on."""
    owners = typed("owners", pd.DataFrame({"owner_id": ["M", "R1", "R2"], "manager_id": [None, "M", "M"],
                                           "name": ["Max", "Rita", "Rob"], "level": ["manager", "rep", "rep"]}))
    o = pd.DataFrame([
        # id, owner, stage now, amount now, created, close now
        ("d1", "R1", "Proposal", 120.0, "2026-09-01", "2026-11-15"),       # in the window throughout, 100 -> 120
        ("d2", "R1", "Closed Won", 80.0, "2026-08-01", "2026-10-20"),      # in the window at start, won at 80
        ("d3", "R1", "Closed Lost", 50.0, "2026-08-10", "2026-10-12"),     # in the window at start, lost
        ("d4", "R2", "Negotiation", 200.0, "2026-09-05", "2027-02-15"),    # in at start, pushed to February
        ("d5", "R2", "Qualification", 60.0, "2026-10-05", "2026-12-01"),   # created in October, in the window now
        ("d6", "R2", "Proposal", 90.0, "2026-07-01", "2026-11-30"),        # was closing in January: pulled in
        ("d7", "M", "Closed Won", 40.0, "2026-10-03", "2026-10-25"),       # created and won in October
        ("d8", "R1", "Proposal", 70.0, "2026-09-12", "2026-12-20"),        # in throughout, 100 -> 70
        ("d9", "R2", "Proposal", 30.0, "2026-06-01", "2026-10-28"),        # in at start, still open past its date
        ("d10", "R1", "Prospecting", 500.0, "2026-09-01", "2027-03-31"),   # outside the window throughout
    ], columns=["opportunity_id", "owner_id", "stage", "amount", "created_date", "close_date"])
    o["account_id"] = "a" + o.index.astype(str)
    tables = {"owners": owners, "opportunities": typed("opportunities", o)}
    if with_history:
        h = pd.DataFrame([
            ("d1", "2026-09-01", "Prospecting", 100.0, "2026-11-15"),
            ("d1", "2026-10-10", "Proposal", 120.0, None),
            ("d2", "2026-08-01", "Qualification", 80.0, "2026-10-30"),
            ("d2", "2026-10-20", "Closed Won", None, "2026-10-20"),
            ("d3", "2026-08-10", "Qualification", 50.0, "2026-11-10"),
            ("d3", "2026-10-12", "Closed Lost", None, "2026-10-12"),
            ("d4", "2026-09-05", "Proposal", 200.0, "2026-12-15"),
            ("d4", "2026-10-18", "Negotiation", None, "2027-02-15"),
            ("d5", "2026-10-05", "Qualification", 60.0, "2026-12-01"),
            ("d6", "2026-07-01", "Qualification", 90.0, "2027-01-20"),
            ("d6", "2026-10-08", "Proposal", None, "2026-11-30"),
            ("d7", "2026-10-03", "Qualification", 40.0, "2026-10-25"),
            ("d7", "2026-10-25", "Closed Won", None, None),
            ("d8", "2026-09-12", "Proposal", 100.0, "2026-12-20"),
            ("d8", "2026-10-22", None, 70.0, None),
            ("d9", "2026-06-01", "Proposal", 30.0, "2026-10-28"),
            ("d10", "2026-09-01", "Prospecting", 500.0, "2027-03-31"),
        ], columns=["opportunity_id", "changed_at", "stage", "amount", "close_date"])
        tables["opportunity_history"] = typed("opportunity_history", h)
    return Dataset(tables=tables)


def steps(cube, owner: str) -> dict[str, float]:
    m = cube.movement
    return dict(zip(m.loc[m.owner_id == owner, "step"], m.loc[m.owner_id == owner, "value"], strict=True))


def deals(cube, owner: str) -> dict[str, int]:
    m = cube.movement
    return dict(zip(m.loc[m.owner_id == owner, "step"], m.loc[m.owner_id == owner, "deals"], strict=True))


@pytest.fixture(scope="module")
def cube():
    return compute_cube(load_config(ROOT), company(), "monthly", AS_OF)


def test_each_step_of_a_rep_by_hand(cube):
    # R1 at the start: d1 100, d2 80, d3 50, d8 100 (d10 closes in March: outside) = 330
    # now: d1 120, d8 70 = 190. d1 +20 up, d8 -30 down, d2 won 80, d3 lost 50: 330 + 20 - 30 - 80 - 50 = 190
    assert steps(cube, "R1") == {"start": 330.0, "created": 0.0, "pulled_in": 0.0, "amount_up": 20.0,
                                 "amount_down": -30.0, "pushed_out": 0.0, "won": -80.0, "lost": -50.0, "now": 190.0}
    assert deals(cube, "R1")["start"] == 4 and deals(cube, "R1")["now"] == 2


def test_created_pulled_in_and_pushed_out(cube):
    # R2 at the start: d4 200, d9 30 (d6 then closed in January: outside) = 230
    # created d5 60; pulled in d6 90; pushed out d4 200 (to February) and d9 30 (its date passed, still open)
    # now: d5 60 + d6 90 = 150 = 230 + 60 + 90 - 230
    assert steps(cube, "R2") == {"start": 230.0, "created": 60.0, "pulled_in": 90.0, "amount_up": 0.0,
                                 "amount_down": 0.0, "pushed_out": -230.0, "won": 0.0, "lost": 0.0, "now": 150.0}
    assert deals(cube, "R2")["pushed_out"] == 2


def test_the_manager_is_own_plus_reports_and_created_then_won_counts_both_ways(cube):
    # M's own d7: created 40 and won 40 in October
    m = steps(cube, "M")
    assert m["start"] == 330 + 230
    assert m["created"] == 60 + 40 and m["won"] == -80 - 40
    assert m["now"] == 190 + 150
    assert deals(cube, "M")["created"] == 2


def test_every_scope_reconciles_and_now_is_the_forward_looks_open_pipeline(cube):
    k = cube.kpis
    for owner in ("M", "R1", "R2"):
        mine = cube.movement[cube.movement.owner_id == owner]
        assert list(mine["step"]) == list(STEPS)
        assert reconciles(mine)
        s = steps(cube, owner)
        assert s["start"] + s["created"] + s["pulled_in"] + s["pushed_out"] + s["won"] + s["lost"] + \
            s["amount_up"] + s["amount_down"] == pytest.approx(s["now"])
        open_now = k[(k.owner_id == owner) & (k.kpi == "pipeline_open_value") & (k.period == "FY2026-Q4")
                     & k.dim.isna()]["value"].iloc[0]
        assert s["now"] == pytest.approx(open_now)


def test_reconciles_spots_a_step_that_does_not_add_up():
    df = pd.DataFrame({"step": ["start", "won", "now"], "value": [100.0, -30.0, 60.0]})
    assert not reconciles(df)
    assert reconciles(df.assign(value=[100.0, -30.0, 70.0]))


def test_without_history_the_movement_is_not_available():
    c = compute_cube(load_config(ROOT), company(with_history=False), "monthly", AS_OF)
    assert c.movement.empty
    assert c.meta["movement"]["available"] is False
    assert "opportunity_history" in c.meta["movement"]["reason"]


def test_written_and_read_back(cube, tmp_path):
    write_cube(cube, tmp_path)
    back = read_cube(tmp_path)
    pd.testing.assert_frame_equal(back.movement.reset_index(drop=True), cube.movement.reset_index(drop=True))
    assert back.meta["movement"]["from"] == "2026-09-30"
    (tmp_path / "movement.parquet").unlink()  # a run folder from before the movement
    assert read_cube(tmp_path).movement.empty


def test_the_forward_look_draws_the_waterfall_of_a_scope(cube, tmp_path):
    write_cube(cube, tmp_path)
    rpt = Report(load_cube(tmp_path), "R2", tmp_path)
    html = str(rpt.forward_look())
    assert "How the pipeline moved since the last session" in html and "2026-09-30" in html
    fig = rpt.figures()["movement"]
    # R2: start 230, created +60, pulled in +90, pushed out -230, now 150; the steps that moved nothing left out
    assert list(fig.data[0].x) == [230, 60, 90, -230, 150] and fig.data[0].orientation == "h"
    assert list(fig.data[0].measure) == ["absolute", "relative", "relative", "relative", "total"]
    assert list(fig.data[0].text)[1:4] == ["+60", "+90", "−230"]  # no currency in this run's meta
