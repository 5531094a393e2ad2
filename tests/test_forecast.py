"""Forward look, calibrated win probabilities and stage conversion on a tiny hand-written company.

Owners: E (executive) → M (manager, player-coach with deals of her own) → R1, R2 (reps).
Fiscal year = calendar year, stages Prospecting(0.05) < Qualification(0.10) < Needs analysis(0.20) <
Proposal(0.40) < Negotiation(0.60). Every deal walks through the stages one by one (no skipped stage).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spm_lib.config import Config, SourceConfig, Stage, StagesConfig, WeakStageRule
from spm_lib.domain.contract import CONTRACT, PANDAS_DTYPES, Dataset
from spm_lib.engine.forecast import forward_look, stage_conversion, stage_worth, weak_stage, win_probabilities

P, Q, N, PR, NG, WON, LOST = ("Prospecting", "Qualification", "Needs analysis", "Proposal", "Negotiation",
                              "Closed Won", "Closed Lost")
OPEN = [P, Q, N, PR, NG]
CONFIG_P = {P: 0.05, Q: 0.10, N: 0.20, PR: 0.40, NG: 0.60}

# id: (owner, final stage, amount, close date, forecast category, [(date entered, stage), ...])
DEALS = {
    # open on 2026-10-31
    "A1": ("R1", PR, 1000.0, "2026-11-20", "commit", [("2026-08-01", P), ("2026-08-15", Q), ("2026-09-01", N),
                                                      ("2026-10-01", PR)]),
    "A2": ("M", NG, 500.0, "2026-12-10", "best case", [("2026-07-01", P), ("2026-07-15", Q), ("2026-08-01", N),
                                                       ("2026-08-20", PR), ("2026-09-15", NG)]),
    "A3": ("R2", Q, 400.0, "2026-12-31", "pipeline", [("2026-09-01", P), ("2026-10-05", Q)]),
    "A4": ("R2", P, 300.0, "2027-01-15", "pipeline", [("2026-10-10", P)]),  # closes after Q4
    "A5": ("R1", N, 200.0, "2026-10-20", "pipeline", [("2026-06-01", P), ("2026-07-01", Q),
                                                      ("2026-08-01", N)]),  # past its close date
    # won in October 2026 (bookings to date of FY2026-Q4)
    "B1": ("R1", WON, 250.0, "2026-10-10", "closed", [("2026-08-01", P), ("2026-08-10", Q), ("2026-08-20", N),
                                                      ("2026-09-01", PR), ("2026-09-20", NG), ("2026-10-10", WON)]),
    "B2": ("M", WON, 150.0, "2026-10-25", "closed", [("2026-07-01", P), ("2026-07-10", Q), ("2026-08-01", N),
                                                     ("2026-09-01", PR), ("2026-10-01", NG), ("2026-10-25", WON)]),
    # closed earlier in the last 12 months
    "W1": ("R1", WON, 100.0, "2026-03-10", "closed", [("2026-01-05", P), ("2026-01-20", Q), ("2026-02-01", N),
                                                      ("2026-02-15", PR), ("2026-03-01", NG), ("2026-03-10", WON)]),
    "W2": ("R2", WON, 200.0, "2026-06-15", "closed", [("2026-04-01", P), ("2026-04-10", Q), ("2026-05-01", N),
                                                      ("2026-05-15", PR), ("2026-06-01", NG), ("2026-06-15", WON)]),
    "L1": ("R1", LOST, 150.0, "2026-05-20", "omitted", [("2026-03-01", P), ("2026-03-10", Q), ("2026-04-01", N),
                                                        ("2026-04-20", PR), ("2026-05-20", LOST)]),
    "L2": ("M", LOST, 80.0, "2026-04-10", "omitted", [("2026-03-05", P), ("2026-03-20", Q), ("2026-04-10", LOST)]),
    "L3": ("R2", LOST, 50.0, "2026-07-15", "omitted", [("2026-07-01", P), ("2026-07-15", LOST)]),
    # closed more than 12 months before: outside calibration and the trend window
    "O1": ("R2", WON, 120.0, "2025-06-01", "closed", [("2025-03-01", P), ("2025-03-15", Q), ("2025-06-01", WON)]),
}


def _table(name: str, rows: list[dict[str, object]]) -> pd.DataFrame:
    """A contract table from explicit rows, with contract dtypes."""
    df = pd.DataFrame(rows)
    for col in df.columns:
        df[col] = df[col].astype(PANDAS_DTYPES[CONTRACT[name].column(col).dtype])
    return df


def _dataset(*, history: bool = True, forecast_category: bool = True) -> Dataset:
    owners = _table("owners", [
        {"owner_id": "E", "manager_id": None, "name": "Eve Exec", "level": "executive"},
        {"owner_id": "M", "manager_id": "E", "name": "Max Manager", "level": "manager"},
        {"owner_id": "R1", "manager_id": "M", "name": "Rita Rep", "level": "rep"},
        {"owner_id": "R2", "manager_id": "M", "name": "Rob Rep", "level": "rep"},
    ])
    opps, hist = [], []
    for oid, (owner, stage, amount, close, category, path) in DEALS.items():
        row = {"opportunity_id": oid, "owner_id": owner, "name": f"Deal {oid}", "stage": stage, "amount": amount,
               "created_date": pd.Timestamp(path[0][0]), "close_date": pd.Timestamp(close),
               "is_closed": stage in (WON, LOST), "is_won": stage == WON,
               "last_modified_date": pd.Timestamp(path[-1][0])}
        if forecast_category:
            row["forecast_category"] = category
        opps.append(row)
        hist += [{"opportunity_id": oid, "changed_at": pd.Timestamp(when), "stage": st, "amount": amount,
                  "close_date": pd.Timestamp(close)} for when, st in path]
    tables = {"owners": owners, "opportunities": _table("opportunities", opps)}
    if history:
        tables["opportunity_history"] = _table("opportunity_history", hist)
    return Dataset(tables=tables)


def _config(tmp_path: Path) -> Config:
    stages = StagesConfig(stages=[Stage(name=s, probability=CONFIG_P[s]) for s in OPEN], won=[WON], lost=[LOST])
    return Config(root=tmp_path, source=SourceConfig(kind="folder", path="data"), stages=stages)


def _ctx(tmp_path: Path, as_of: date, **kw: bool):  # type: ignore[no-untyped-def]
    from spm_lib.engine.context import build_context

    return build_context(_config(tmp_path), _dataset(**kw), "monthly", as_of)


def _targets(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame({"owner_id": [r[0] for r in rows], "period": [r[1] for r in rows], "metric": "bookings",
                         "target": [r[2] for r in rows], "source": "data"})


def _value(df: pd.DataFrame, owner: str, kpi: str, dim: str | None = None, dim_value: str | None = None) -> float:
    sel = (df["owner_id"] == owner) & (df["kpi"] == kpi)
    sel &= df["dim"].isna() if dim is None else (df["dim"] == dim) & (df["dim_value"] == dim_value)
    rows = df[sel]
    assert len(rows) == 1, f"{owner} {kpi} {dim}={dim_value}: {len(rows)} rows"
    return float(rows["value"].iloc[0])


def _row(df: pd.DataFrame, owner: str, kpi: str) -> pd.Series:
    rows = df[(df["owner_id"] == owner) & (df["kpi"] == kpi) & df["dim"].isna()]
    assert len(rows) == 1
    return rows.iloc[0]


AS_OF = date(2026, 10, 31)  # last day of October: Q = FY2026-Q4, to date = October, remaining = Nov + Dec


# ---------------------------------------------------------------- win probabilities
def test_probabilities_calibrated_from_deals_closed_in_the_last_12_months(tmp_path: Path) -> None:
    probs = win_probabilities(_ctx(tmp_path, AS_OF), min_deals=5).set_index("stage")
    # closed 2025-11-01..2026-10-31: W1 W2 B1 B2 won, L1 L2 L3 lost (O1 closed in 2025-06 is too old)
    # Prospecting: all 7 reached it, 4 won; Qualification: all but L3 (6), 4 won;
    # Needs analysis and Proposal: W1 W2 B1 B2 L1 (5), 4 won; Negotiation: W1 W2 B1 B2 (4 < 5) -> config 0.60
    assert probs.loc[P, "probability"] == pytest.approx(4 / 7)
    assert probs.loc[Q, "probability"] == pytest.approx(4 / 6)
    assert probs.loc[N, "probability"] == pytest.approx(4 / 5)
    assert probs.loc[PR, "probability"] == pytest.approx(4 / 5)
    assert probs.loc[NG, "probability"] == pytest.approx(0.60)
    assert probs["n"].tolist() == [7, 6, 5, 5, 4]
    assert probs["source"].tolist() == ["calibrated"] * 4 + ["config"]
    assert probs["stage_index"].tolist() == [0, 1, 2, 3, 4]


def test_probabilities_fall_back_to_config_with_fewer_than_20_closed_deals(tmp_path: Path) -> None:
    probs = win_probabilities(_ctx(tmp_path, AS_OF))
    assert probs["source"].tolist() == ["config"] * 5
    assert probs["probability"].tolist() == [0.05, 0.10, 0.20, 0.40, 0.60]


def test_probabilities_without_history_are_the_configured_ones(tmp_path: Path) -> None:
    # without history a lost deal's path is unknown (it "reached" nothing), so won/reached would be 100 %
    probs = win_probabilities(_ctx(tmp_path, AS_OF, history=False), min_deals=1)
    assert probs["source"].tolist() == ["config"] * 5
    assert probs["probability"].tolist() == [0.05, 0.10, 0.20, 0.40, 0.60]


# ---------------------------------------------------------------- forward look
def _fwd(tmp_path: Path, targets: pd.DataFrame, **kw: bool) -> pd.DataFrame:
    ctx = _ctx(tmp_path, AS_OF, **kw)
    return forward_look(ctx, targets, win_probabilities(ctx, min_deals=5))


def test_forward_look_with_calibrated_probabilities_by_hand(tmp_path: Path) -> None:
    fwd = _fwd(tmp_path, _targets([("R1", "FY2026-Q4", 1250.0), ("R2", "FY2026-Q4", 200.0),
                                   ("M", "FY2026-Q4", 2400.0)]))
    assert set(fwd["period"]) == {"FY2026-Q4"}
    # open pipeline closing Nov 1 - Dec 31: A1 (R1, Proposal 1000), A2 (M, Negotiation 500), A3 (R2, Qualif. 400);
    # A4 closes in January, A5's close date (Oct 20) has passed.
    w_a1, w_a2, w_a3 = 1000 * 4 / 5, 500 * 0.60, 400 * 4 / 6
    expected = {  # owner: (open, weighted, to date, target)
        "R1": (1000.0, w_a1, 250.0, 1250.0),
        "R2": (400.0, w_a3, 0.0, 200.0),
        "M": (1900.0, w_a1 + w_a2 + w_a3, 400.0, 2400.0),  # own A2 + B2 (150) + both reps
        "E": (1900.0, w_a1 + w_a2 + w_a3, 400.0, np.nan),  # same facts as M, no target
    }
    for owner, (open_v, weighted, to_date, _target) in expected.items():
        assert _value(fwd, owner, "pipeline_open_value") == pytest.approx(open_v)
        assert _value(fwd, owner, "weighted_pipeline") == pytest.approx(weighted)
        assert _value(fwd, owner, "bookings_to_date_q") == pytest.approx(to_date)
        assert _value(fwd, owner, "forecast_expected") == pytest.approx(to_date + weighted)
    # R1: gap 1250 - (250 + 800) = 200; run-rate (1250 - 250) / 2 months = 500; coverage 1000 / 1000 = 1
    assert _value(fwd, "R1", "gap_to_target") == pytest.approx(200.0)
    assert _value(fwd, "R1", "required_run_rate") == pytest.approx(500.0)
    assert _value(fwd, "R1", "pipeline_coverage") == pytest.approx(1.0)
    # R2: gap 200 - 266.67 < 0 (ahead); run-rate 200 / 2 = 100; coverage 400 / 200 = 2
    assert _value(fwd, "R2", "gap_to_target") == pytest.approx(200 - 1600 / 6)
    assert _value(fwd, "R2", "required_run_rate") == pytest.approx(100.0)
    assert _value(fwd, "R2", "pipeline_coverage") == pytest.approx(2.0)
    # M: gap 2400 - (400 + 1366.67) = 633.33; run-rate (2400 - 400) / 2 = 1000; coverage 1900 / 2000 = 0.95
    assert _value(fwd, "M", "gap_to_target") == pytest.approx(2400 - 400 - (w_a1 + w_a2 + w_a3))
    assert _value(fwd, "M", "required_run_rate") == pytest.approx(1000.0)
    assert _value(fwd, "M", "pipeline_coverage") == pytest.approx(0.95)
    assert _row(fwd, "M", "forecast_expected")["target"] == 2400.0
    assert fwd.loc[fwd["owner_id"] != "E", "na_reason"].isna().all() and fwd["na_reason"].map(type).ne(float).all()


def test_breakdowns_of_open_pipeline_add_up(tmp_path: Path) -> None:
    fwd = _fwd(tmp_path, _targets([]))
    assert _value(fwd, "M", "pipeline_open_value", "stage", PR) == 1000.0
    assert _value(fwd, "M", "pipeline_open_value", "stage", NG) == 500.0
    assert _value(fwd, "M", "pipeline_open_value", "stage", Q) == 400.0
    assert _value(fwd, "M", "pipeline_open_value", "close_month", "2026-11") == 1000.0
    assert _value(fwd, "M", "pipeline_open_value", "close_month", "2026-12") == 900.0  # A2 + A3
    assert _value(fwd, "M", "pipeline_open_value", "forecast_category", "commit") == 1000.0
    assert _value(fwd, "M", "pipeline_open_value", "forecast_category", "best case") == 500.0
    assert _value(fwd, "R2", "pipeline_open_value", "forecast_category", "pipeline") == 400.0
    r1 = fwd[(fwd["owner_id"] == "R1") & (fwd["dim"] == "stage")]
    assert r1["dim_value"].tolist() == [PR]  # A5 (Needs analysis) closes before the remaining period


def test_no_forecast_category_column_means_no_such_breakdown(tmp_path: Path) -> None:
    fwd = _fwd(tmp_path, _targets([]), forecast_category=False)
    assert not (fwd["dim"] == "forecast_category").any()
    assert (fwd["dim"] == "stage").any()


def test_missing_target_gives_nan_with_a_reason(tmp_path: Path) -> None:
    fwd = _fwd(tmp_path, _targets([("R1", "FY2026-Q3", 999.0)]))  # a target, but for another quarter
    for kpi in ("gap_to_target", "pipeline_coverage", "required_run_rate"):
        row = _row(fwd, "R1", kpi)
        assert np.isnan(row["value"])
        assert row["na_reason"] == "no bookings target for FY2026-Q4"
        assert not row["available"]
    assert _value(fwd, "R1", "forecast_expected") == pytest.approx(250 + 800)


def test_target_already_met_has_no_coverage_and_zero_run_rate(tmp_path: Path) -> None:
    fwd = _fwd(tmp_path, _targets([("R1", "FY2026-Q4", 200.0)]))  # R1 booked 250 in October
    cov = _row(fwd, "R1", "pipeline_coverage")
    assert np.isnan(cov["value"]) and "already met" in cov["na_reason"]
    assert _value(fwd, "R1", "required_run_rate") == 0.0
    assert _value(fwd, "R1", "gap_to_target") == pytest.approx(200 - 1050)


def test_quarter_moved_on_at_its_last_day(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, date(2026, 12, 31))
    fwd = forward_look(ctx, _targets([("R2", "FY2027-Q1", 600.0)]))
    assert set(fwd["period"]) == {"FY2027-Q1"}
    # nothing booked to date in a quarter that has not started; A4 (R2, Prospecting 300, Jan 15) is the pipeline,
    # weighted at the configured 0.05 (too few closed deals to calibrate)
    assert _value(fwd, "R2", "bookings_to_date_q") == 0.0
    assert _value(fwd, "R2", "pipeline_open_value") == 300.0
    assert _value(fwd, "R1", "pipeline_open_value") == 0.0
    assert _value(fwd, "E", "pipeline_open_value") == 300.0
    assert _value(fwd, "R2", "weighted_pipeline") == pytest.approx(15.0)
    assert _value(fwd, "R2", "forecast_expected") == pytest.approx(15.0)
    assert _value(fwd, "R2", "gap_to_target") == pytest.approx(585.0)
    assert _value(fwd, "R2", "required_run_rate") == pytest.approx(200.0)  # 600 over 3 months
    assert _value(fwd, "R2", "pipeline_coverage") == pytest.approx(0.5)


# ---------------------------------------------------------------- stage conversion
def test_stage_conversion_by_hand(tmp_path: Path) -> None:
    conv = stage_conversion(_ctx(tmp_path, AS_OF))
    assert set(conv["period"]) == {"2026-10"} and set(conv["dim"]) == {"stage"}
    # R1 (W1, B1, L1, A1, A5): everyone who left Prospecting/Qualification/Needs went on (A5 still in Needs,
    # A1 still in Proposal are not counted there); Proposal: W1, B1 on, L1 lost there -> 2/3
    r1 = {P: 100.0, Q: 100.0, N: 100.0, PR: 200 / 3, NG: 100.0}
    # R2 (W2, L3, A3, A4; O1 is outside the window): Prospecting W2 and A3 on, L3 lost -> 2/3
    r2 = {P: 200 / 3, Q: 100.0, N: 100.0, PR: 100.0, NG: 100.0}
    # team M = R1 + R2 + M's own (B2 all on, L2 lost in Qualification, A2 on up to Proposal)
    m = {P: 1000 / 11, Q: 800 / 9, N: 100.0, PR: 500 / 6, NG: 100.0}
    for owner, rates in {"R1": r1, "R2": r2, "M": m, "E": m}.items():
        for stage, rate in rates.items():
            assert _value(conv, owner, "stage_conversion", "stage", stage) == pytest.approx(rate), (owner, stage)


def test_stage_exits_count_the_deals_behind_each_rate(tmp_path: Path) -> None:
    conv = stage_conversion(_ctx(tmp_path, AS_OF))
    # R1 left Proposal with W1, B1 (on) and L1 (lost there): 3; M's team: 11 left Prospecting, 9 Qualification, 6
    # Proposal (the denominators of the rates above)
    assert _value(conv, "R1", "stage_exits", "stage", PR) == 3
    for stage, n in {P: 11, Q: 9, PR: 6}.items():
        assert _value(conv, "M", "stage_exits", "stage", stage) == n


def test_weak_stage_needs_a_credible_gap_to_the_rest_of_the_team(tmp_path: Path) -> None:
    conv = stage_conversion(_ctx(tmp_path, AS_OF))
    # R1's Proposal: 2 of 3 went on; the rest of M's team: 3 of 3 (M's 5 of 6 minus R1's). Pooled 5/6,
    # se = sqrt(5/6 * 1/6 * (1/3 + 1/3)) = 0.30429, z = (1 - 2/3) / se = 1.0954, one-sided p = 0.1367
    loose = WeakStageRule(margin_points=10, min_deals=1, alpha=0.2)
    ws = weak_stage(conv, "R1", "M", loose)
    assert ws is not None and ws["stage"] == PR and ws["deals"] == 3
    assert ws["rate"] == pytest.approx(200 / 3) and ws["benchmark_rate"] == pytest.approx(100.0)
    assert ws["p_value"] == pytest.approx(0.1367, abs=1e-4) and ws["lost_deals"] == pytest.approx(1.0)
    assert weak_stage(conv, "R1", "M", WeakStageRule(margin_points=10, min_deals=1, alpha=0.1)) is None  # p > 0.1
    assert weak_stage(conv, "R1", "M", WeakStageRule()) is None  # 3 deals: fewer than the default 8
    assert weak_stage(conv, "R1", "nobody", loose) is None


def test_weak_stage_on_explicit_rows_is_material_credible_and_costed() -> None:
    # (stage, own rate %, own deals, team rate %, team deals); the team's deals include the owner's
    rows = [("X", 30.0, 20, 50.0, 60),  # rest: 24 of 40 = 60 % -> 30 points below, z = 2.191, p = 0.0142
            ("Y", 40.0, 10, 45.0, 40),  # rest: 14 of 30 = 46.7 % -> 6.7 points: not material
            ("Z", 20.0, 5, 60.0, 15),  # rest: 8 of 10 = 80 % -> 60 points, but 5 deals: fewer than 8
            ("W", 90.0, 30, 80.0, 60)]  # the owner beats the rest (70 %): never weak
    conv = pd.DataFrame([{"owner_id": who, "kpi": kpi, "dim": "stage", "dim_value": s, "value": v}
                         for s, r, n, tr, tn in rows
                         for who, kpi, v in (("a", "stage_conversion", r), ("a", "stage_exits", n),
                                             ("t", "stage_conversion", tr), ("t", "stage_exits", tn))])
    ws = weak_stage(conv, "a", "t", WeakStageRule(), worth={"X": 1000.0, "Y": 1.0, "Z": 1e6, "W": 1e6})
    assert ws is not None and ws["stage"] == "X" and ws["deals"] == 20
    assert ws["rate"] == pytest.approx(30.0) and ws["benchmark_rate"] == pytest.approx(60.0)
    assert ws["p_value"] == pytest.approx(0.01423, abs=1e-4)
    assert ws["lost_deals"] == pytest.approx(6.0) and ws["cost"] == pytest.approx(6000.0)  # 0.3 x 20 x 1000
    assert weak_stage(conv, "a", "t", WeakStageRule(margin_points=40)) is None


def test_stage_worth_is_the_next_stage_win_probability_times_the_deal_size() -> None:
    probs = pd.DataFrame({"stage": ["B", "A", "C"], "stage_index": [1, 0, 2], "probability": [0.5, 0.2, 0.8]})
    assert stage_worth(probs, 100.0) == {"A": pytest.approx(50.0), "B": pytest.approx(80.0), "C": pytest.approx(100.0)}


def test_stage_conversion_needs_history(tmp_path: Path) -> None:
    conv = stage_conversion(_ctx(tmp_path, AS_OF, history=False))
    assert set(conv["owner_id"]) == {"E", "M", "R1", "R2"}
    assert not conv["available"].any() and conv["value"].isna().all()
    assert set(conv["na_reason"]) == {"not available — needs opportunity_history"}
    assert weak_stage(conv, "R1", "M", WeakStageRule(min_deals=1, alpha=0.5)) is None
