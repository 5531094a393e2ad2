"""The calibrated forecast on a tiny hand-written company, every number computed by hand.

Owners: E (executive) → M (manager) → R (rep). Monthly periods (grain "month"); default stages. Every deal is R's:
  D0  Prospecting, created 2025-11-01, lost 2025-12-15 (the first close: January 2026 is the first whole period)
  D1  Proposal 100, close 2026-01-15, won then
  D2  Proposal 200, close 2026-01-20, lost then
  D3  Proposal 100, close 2026-01-25, pushed on 2026-01-24 to 2026-02-10, won then (slipped out of January)
  D5  Negotiation 300, close 2026-01-28, won then for 330 (amount raised when signed)
  D4  Proposal 50, created 2026-01-05 (after January's start), won 2026-01-25: a new deal of the period
  D6  Negotiation 1000, created 2026-01-20, close 2026-02-20, lost then
  D7  Prospecting 10, created 2026-03-02 (the data reaches March)
D1, D2, D3, D5 were created 2025-12-01 in their stage.
"""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pandas as pd
import pytest

from spm_lib.config import StagesConfig
from spm_lib.domain.contract import CONTRACT, PANDAS_DTYPES
from spm_lib.domain.org import Org
from spm_lib.domain.periods import FiscalCalendar
from spm_lib.engine.calibration import (
    CALIBRATED,
    STAGE,
    Z90,
    DealHistory,
    Settings,
    WinModel,
    calibrate,
    fit_win_model,
    out_of_period,
    scope_forecast,
    shared_error,
)

PR, NG, P = "Proposal", "Negotiation", "Prospecting"
CONFIG_P = {"Prospecting": 0.05, "Qualification": 0.10, "Needs analysis": 0.20, "Proposal": 0.40,
            "Negotiation": 0.60}
STAGES = StagesConfig()
CAL = FiscalCalendar(start_month=1)
ONLY_STAGE = Settings(prior=2.0, new_prior=2.0, min_periods=1, min_won=2, step_days=1000, features=("stage",))

# id: (created, stage, amount, close date, [(changed_at, stage, amount, close date), ...] after creation)
DEALS = {
    "D0": ("2025-11-01", P, 20.0, "2025-12-20", [("2025-12-15", "Closed Lost", None, "2025-12-15")]),
    "D1": ("2025-12-01", PR, 100.0, "2026-01-15", [("2026-01-15", "Closed Won", None, None)]),
    "D2": ("2025-12-01", PR, 200.0, "2026-01-20", [("2026-01-20", "Closed Lost", None, None)]),
    "D3": ("2025-12-01", PR, 100.0, "2026-01-25", [("2026-01-24", None, None, "2026-02-10"),
                                                   ("2026-02-10", "Closed Won", None, None)]),
    "D5": ("2025-12-01", NG, 300.0, "2026-01-28", [("2026-01-28", "Closed Won", 330.0, None)]),
    "D4": ("2026-01-05", PR, 50.0, "2026-01-25", [("2026-01-25", "Closed Won", None, None)]),
    "D6": ("2026-01-20", NG, 1000.0, "2026-02-20", [("2026-02-20", "Closed Lost", None, None)]),
    "D7": ("2026-03-02", P, 10.0, "2026-04-30", []),
}


def table(name: str, rows: list[dict[str, object]]) -> pd.DataFrame:
    """A contract table from explicit rows, with contract dtypes."""
    df = pd.DataFrame(rows)
    for col in df.columns:
        df[col] = df[col].astype(PANDAS_DTYPES[CONTRACT[name].column(col).dtype])
    return df


def owners() -> pd.DataFrame:
    return table("owners", [{"owner_id": "E", "manager_id": None, "name": "E", "level": "executive"},
                            {"owner_id": "M", "manager_id": "E", "name": "M", "level": "manager"},
                            {"owner_id": "R", "manager_id": "M", "name": "R", "level": "rep"}])


def opportunities_and_history() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The current opportunities (their last state) and one history row per change."""
    opps, hist = [], []
    for oid, (created, stage, amount, close, changes) in DEALS.items():
        state = {"stage": stage, "amount": amount, "close_date": close}
        hist.append({"opportunity_id": oid, "changed_at": pd.Timestamp(created), **state})
        for when, st, amt, cl in changes:
            hist.append({"opportunity_id": oid, "changed_at": pd.Timestamp(when), "stage": st, "amount": amt,
                         "close_date": cl})
            state = {k: v if v is not None else state[k] for k, v in
                     (("stage", st), ("amount", amt), ("close_date", cl))}
        opps.append({"opportunity_id": oid, "owner_id": "R", "stage": state["stage"], "amount": state["amount"],
                     "created_date": pd.Timestamp(created), "close_date": pd.Timestamp(state["close_date"]),
                     "is_closed": str(state["stage"]).startswith("Closed"),
                     "is_won": state["stage"] == "Closed Won"})
    h = table("opportunity_history", hist)
    return table("opportunities", opps), h


def deal_history(*, history: bool = True) -> DealHistory:
    opps, hist = opportunities_and_history()
    return DealHistory(opps, hist if history else None, None, STAGES)


# ---------------------------------------------------------------- the shrunk rates
def test_rates_shrink_toward_the_parent_cell() -> None:
    # 8 deals: stage A dated in the period 2 won of 4, A dated next period 0 of 2, B in the period 2 of 2
    rows = pd.DataFrame({"stage": ["A"] * 6 + ["B"] * 2, "close": ["in"] * 4 + ["next"] * 2 + ["in"] * 2,
                         "won": [1, 1, 0, 0, 0, 0, 1, 1]})
    model = fit_win_model(rows, ["stage", "close"], prior=2.0, amount_edges=())
    assert model.base == pytest.approx(0.5)
    # level 1: A (2 + 2 x 0.5) / (6 + 2) = 0.375; B (2 + 1) / (2 + 2) = 0.75
    # level 2: (A, in) (2 + 2 x 0.375) / (4 + 2); (A, next) (0 + 0.75) / (2 + 2); (B, in) (2 + 1.5) / (2 + 2)
    new = pd.DataFrame({"stage": ["A", "A", "B", "A", "C"], "close": ["in", "next", "in", "later", "in"]})
    np.testing.assert_allclose(model.predict(new), [2.75 / 6, 0.1875, 0.875, 0.375, 0.5])


# ---------------------------------------------------------------- calibrated forecast by hand
def test_calibrated_forecast_by_hand() -> None:
    deals = deal_history()
    cal = calibrate(deals, CAL, "month", date(2026, 1, 31), CONFIG_P, ONLY_STAGE)
    assert cal.method == CALIBRATED and cal.periods == 1 and cal.won == 2
    # January, as of 2025-12-31: D1 (won), D2 (lost), D3 (slipped: not won in January) in Proposal, D5 won in
    # Negotiation; base 2/4; Proposal (1 + 2 x 0.5) / (3 + 2) = 0.4, Negotiation (1 + 1) / (1 + 2) = 2/3
    assert cal.win is not None and cal.win.cells[0] == pytest.approx(
        {0: 2 / 3, 1: 0.4})  # values sorted by name: Negotiation, Proposal
    assert cal.win.drift == pytest.approx((100 + 330) / (100 + 300))
    # new deals: R booked 50 (D4) in the band of 31 days left; the company's per-seller mean is that too
    assert cal.new is not None and cal.new.per_seller == {("R", "<=45"): pytest.approx(50.0)}

    # February as of 2026-01-31: D3 (Proposal 100) and D6 (Negotiation 1000) open; 28 days left: band <=45
    anc = Org.from_owners(owners()).ancestors(as_of=date(2026, 1, 31))
    fc = scope_forecast(cal, deals, date(2026, 1, 31), date(2026, 2, 1), date(2026, 2, 28), anc)
    drift = 430 / 400
    open_expected = 100 * 0.4 * drift + 1000 * (2 / 3) * drift
    expected = 0 + open_expected + 50
    variance = (100 * drift) ** 2 * 0.4 * 0.6 + (1000 * drift) ** 2 * (2 / 3) * (1 / 3) + 50 * (50 ** 2 / 50)
    for scope in ("R", "M", "E"):  # R's scope is everyone's
        row = fc.loc[scope]
        assert row["to_date"] == 0 and row["new_expected"] == pytest.approx(50.0)
        assert row["expected"] == pytest.approx(expected)
        assert row["p10"] == pytest.approx(max(expected - Z90 * math.sqrt(variance), 0.0))
        assert row["p90"] == pytest.approx(expected + Z90 * math.sqrt(variance))
        assert row["method"] == CALIBRATED


def test_shared_error_is_the_spread_the_deals_own_variance_leaves() -> None:
    # two training points of 4 deals of 100 in one cell: none won at point 0, all 4 at point 1; rate 0.5
    rows = pd.DataFrame({"stage": ["A"] * 8, "won": [0] * 4 + [1] * 4, "amount": [100.0] * 8,
                         "booked": [0.0] * 4 + [100.0] * 4, "point": [0] * 4 + [1] * 4})
    model = fit_win_model(rows, ["stage"], prior=0.0, amount_edges=())
    # expected 200 at each point, booked 0 and 400: squared errors 2 x 200^2 = 80,000; the deals' own variance
    # 2 x 4 x 100^2 x 0.5 x 0.5 = 20,000; e^2 = (80,000 - 20,000) / (2 x 200^2) = 0.75
    assert shared_error(rows, model.predict(rows)) == pytest.approx(math.sqrt(0.75))
    # 1 won of 4 at point 0, 3 of 4 at point 1: errors of 100 each (20,000) are within the deals' own variance
    rows["won"] = [1, 0, 0, 0, 1, 1, 1, 0]
    rows["booked"] = rows["won"] * 100.0
    assert shared_error(rows, fit_win_model(rows, ["stage"], prior=0.0, amount_edges=()).predict(rows)) == 0.0
    # drift scales the expected amounts: with drift 2 the expected is 400 at each point (p = 0.5), errors 300 and
    # 100 (100,000), the deals' variance 2 x 4 x 200^2 x 0.25 = 80,000: e^2 = 20,000 / (2 x 400^2)
    assert shared_error(rows, np.full(8, 0.5), drift=2.0) == pytest.approx(math.sqrt(20_000 / 320_000))


def test_shared_error_is_measured_out_of_period() -> None:
    # the same deals as above, 1 of 4 won in period X (point 0) and 3 of 4 in period Y (point 1)
    rows = pd.DataFrame({"stage": ["A"] * 8, "won": [1, 0, 0, 0, 1, 1, 1, 0], "amount": [100.0] * 8,
                         "point": [0] * 4 + [1] * 4, "period": ["X"] * 4 + ["Y"] * 4})
    rows["booked"] = rows["won"] * 100.0

    def fit(r: pd.DataFrame) -> WinModel:
        return fit_win_model(r, ["stage"], prior=0.0, amount_edges=())

    # X's deals get the rate learnt on Y alone (3/4) and Y's the rate learnt on X (1/4)
    p = out_of_period(rows, fit)
    assert p.tolist() == [0.75] * 4 + [0.25] * 4
    # expected 300 and 100, booked 100 and 300: squared errors 2 x 200^2 = 80,000; the deals' own variance
    # 2 x 4 x 100^2 x 0.75 x 0.25 = 15,000; e^2 = (80,000 - 15,000) / (300^2 + 100^2) = 0.65
    assert shared_error(rows, p) == pytest.approx(math.sqrt(0.65))
    # in sample (one rate of 1/2 for both) the spread is all the deals' own variance: no shared error
    assert shared_error(rows, fit(rows).predict(rows)) == 0.0
    # a single period has nothing to leave out: in-sample rates
    assert out_of_period(rows.assign(period="X"), fit).tolist() == [0.5] * 8


# ---------------------------------------------------------------- without enough history
def test_without_history_stage_weighting_and_why() -> None:
    deals = deal_history(history=False)
    cal = calibrate(deals, CAL, "month", date(2026, 1, 31), CONFIG_P, ONLY_STAGE)
    assert cal.method == STAGE and "no opportunity history" in cal.reason
    anc = Org.from_owners(owners()).ancestors()
    fc = scope_forecast(cal, deals, date(2026, 3, 31), date(2026, 4, 1), date(2026, 4, 30), anc)
    # without history each deal's current state stands: D7 (Prospecting 10, dated April 30) is the one open deal
    assert fc.loc["E", "expected"] == pytest.approx(10 * 0.05)
    assert fc.loc["E", "new_expected"] == 0.0 and fc.loc["E", "method"] == STAGE


def test_too_short_history_falls_back_and_says_so() -> None:
    deals = deal_history()
    cal = calibrate(deals, CAL, "month", date(2026, 1, 31), CONFIG_P, Settings(min_periods=4))
    assert cal.method == STAGE
    assert "1 past periods" in cal.reason and "needs 4 periods" in cal.reason
    anc = Org.from_owners(owners()).ancestors()
    fc = scope_forecast(cal, deals, date(2026, 1, 31), date(2026, 2, 1), date(2026, 2, 28), anc)
    # today's stage weighting: the deals dated in February, amount x configured stage probability
    assert fc.loc["M", "expected"] == pytest.approx(100 * 0.4 + 1000 * 0.6)
    assert fc.loc["M", "new_expected"] == 0.0


# ---------------------------------------------------------------- optional columns absent
def test_absent_optional_columns_drop_their_features() -> None:
    opps, hist = opportunities_and_history()
    deals = DealHistory(opps.drop(columns=["created_date"]), hist.drop(columns=["close_date"]), None, STAGES)
    assert deals.available == {"stage", "close", "horizon", "recency", "age", "size"}  # no pushes
    cal = calibrate(deals, CAL, "month", date(2026, 1, 31), CONFIG_P,
                    Settings(min_periods=1, min_won=1, step_days=1000))
    assert cal.method == CALIBRATED and cal.win is not None
    assert cal.win.features == ["stage", "close", "horizon", "recency", "age", "size"]
    anc = Org.from_owners(owners()).ancestors()
    fc = scope_forecast(cal, deals, date(2026, 1, 31), date(2026, 2, 1), date(2026, 2, 28), anc)
    assert np.isfinite(fc["expected"]).all() and (fc["p90"] >= fc["expected"]).all()


# ---------------------------------------------------------------- the cube's forward period
def test_cube_forecast_of_the_forward_period(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    from spm_lib.config import Config, SourceConfig
    from spm_lib.domain.contract import Dataset
    from spm_lib.engine.calibration import cube_forecast
    from spm_lib.engine.context import build_context
    from spm_lib.engine.forecast import win_probabilities

    opps, hist = opportunities_and_history()
    data = Dataset(tables={"owners": owners(), "opportunities": opps, "opportunity_history": hist})
    cfg = Config(root=tmp_path, source=SourceConfig(kind="duckdb", path="unused.duckdb", tables={}))
    # weekly on 2026-01-31: the forward period (the month) moves on to February
    ctx = build_context(cfg, data, "weekly", date(2026, 1, 31))
    never = np.full(len(ctx.snapshot), np.datetime64("NaT", "ns"))
    rest, cal = cube_forecast(ctx, win_probabilities(ctx), never, ONLY_STAGE)
    assert cal.method == CALIBRATED and cal.grain == "month"
    expected = (100 * 0.4 + 1000 * (2 / 3)) * 430 / 400 + 50  # as in test_calibrated_forecast_by_hand
    assert rest.loc["E", "rest"] == pytest.approx(expected) and rest.loc["R", "rest"] == pytest.approx(expected)
    assert rest.loc["M", "p10_rest"] < expected < rest.loc["M", "p90_rest"]


# ---------------------------------------------------------------- the cube uses it
def test_the_cube_says_which_forecast_it_used(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    from spm_lib.config import Config, SourceConfig
    from spm_lib.domain.contract import Dataset
    from spm_lib.engine.cube import compute_cube

    opps, hist = opportunities_and_history()
    data = Dataset(tables={"owners": owners(), "opportunities": opps, "opportunity_history": hist})
    cfg = Config(root=tmp_path, source=SourceConfig(kind="duckdb", path="unused.duckdb", tables={}))
    cube = compute_cube(cfg, data, "weekly", date(2026, 1, 31))  # forward period: February
    info = cube.meta["forecast"]
    # one whole month of history: too short for calibration (4 periods): stage weighting, and the cube says so
    assert info["method"] == STAGE and "needs 4 periods" in info["reason"]
    assert info["cadence"] == "monthly" and info["track_record"] == {}
    k = cube.kpis[(cube.kpis["owner_id"] == "E") & (cube.kpis["kpi"] == "forecast_expected")
                  & (cube.kpis["period"] == "2026-02")]
    assert k[k["dim"].isna()]["value"].item() == pytest.approx(100 * 0.4 + 1000 * 0.6)
    rng = k[k["dim"] == "range"].set_index("dim_value")["value"]
    sigma = math.sqrt(100 ** 2 * 0.4 * 0.6 + 1000 ** 2 * 0.6 * 0.4)
    assert rng["P10"] == pytest.approx(640 - Z90 * sigma) and rng["P90"] == pytest.approx(640 + Z90 * sigma)
