"""`spm backtest`: the replayed forecast, its errors and bias by hand on the tiny company of test_calibration, the
summary by hand on explicit rows, and the command on a small demo project."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from spm_lib.config import Config, SourceConfig
from spm_lib.domain.contract import Dataset
from spm_lib.domain.periods import Period
from spm_lib.engine.backtest import point_days, read_backtest, run_backtest, summarise, with_errors
from spm_lib.engine.calibration import CALIBRATED
from tests.test_calibration import ONLY_STAGE, opportunities_and_history, owners


def test_points_are_the_days_before_start_and_middle() -> None:
    q3 = Period("quarter", "FY2026-Q3", date(2026, 7, 1), date(2026, 9, 30))  # 92 days: the middle is Aug 16
    assert point_days(q3) == {"start": date(2026, 6, 30), "middle": date(2026, 8, 15)}


def test_replayed_forecast_by_hand(tmp_path: Path) -> None:
    opps, hist = opportunities_and_history()
    data = Dataset(tables={"owners": owners(), "opportunities": opps, "opportunity_history": hist})
    cfg = Config(root=tmp_path, source=SourceConfig(kind="duckdb", path="unused.duckdb", tables={}))
    bt = run_backtest(cfg, data, "monthly", date(2026, 2, 1), date(2026, 2, 28), ONLY_STAGE)
    rows = bt.rows.set_index(["owner_id", "point"])
    assert list(bt.rows["period"].unique()) == ["2026-02"]
    drift, negotiation, proposal = 430 / 400, 2 / 3, 0.4  # learnt from January (test_calibration)
    # start (as of 2026-01-31): D3 and D6 open, R's new deals 50; booked in February: D3 (100)
    start = rows.loc[("M", "start")]
    assert start["method"] == CALIBRATED and start["actual"] == 100.0 and start["to_date"] == 0.0
    assert start["forecast"] == pytest.approx((100 * proposal + 1000 * negotiation) * drift + 50)
    assert start["stage"] == pytest.approx(100 * 0.4 + 1000 * 0.6)  # configured: fewer than 20 closed deals
    assert np.isnan(start["run_rate"])
    # middle (as of 2026-02-14): D3 won on Feb 10 (to date 100), D6 open; 14 days left: no new-deal history
    middle = rows.loc[("E", "middle")]
    assert middle["to_date"] == 100.0
    assert middle["forecast"] == pytest.approx(100 + 1000 * negotiation * drift)
    assert middle["stage"] == pytest.approx(100 + 1000 * 0.6)
    assert middle["run_rate"] == pytest.approx(100 / 14 * 28)
    assert middle["forecast_error"] == pytest.approx(1000 * negotiation * drift)
    assert middle["forecast_pct_error"] == pytest.approx(100 * 1000 * negotiation * drift / 100)
    assert middle["run_rate_pct_error"] == pytest.approx(100.0)


def test_summary_by_hand() -> None:
    rows = pd.DataFrame({
        "owner_id": ["m1", "m2", "m3", "d1"], "level": ["manager", "manager", "manager", "director"],
        "period": "FY2026-Q1", "point": "middle", "actual": [100.0, 100.0, 0.0, 200.0],
        "forecast": [110.0, 80.0, 5.0, 190.0], "p10": [90.0, 85.0, 0.0, 150.0], "p90": [120.0, 95.0, 10.0, 250.0],
        "stage": [130.0, 130.0, 5.0, 260.0], "run_rate": [90.0, np.nan, 0.0, 180.0]})
    s = summarise(with_errors(rows)).set_index("level")
    m = s.loc["manager"]  # m3 booked nothing: no % error, left out
    assert m["n"] == 2
    assert m["forecast_mdape"] == pytest.approx(15.0)  # median of 10 % and 20 %
    assert m["forecast_bias"] == pytest.approx(100 * (10 - 20) / 200)
    assert m["stage_mdape"] == pytest.approx(30.0) and m["stage_bias"] == pytest.approx(30.0)
    assert m["run_rate_mdape"] == pytest.approx(10.0) and m["run_rate_bias"] == pytest.approx(-10.0)  # m1 only
    assert m["in_range_pct"] == pytest.approx(50.0)  # 100 in [90, 120]; 100 not in [85, 95]
    assert s.loc["director", "forecast_bias"] == pytest.approx(-5.0)


def test_cli_on_the_demo(small_project: Path, tmp_path: Path) -> None:
    from spm_lib.cli import cli

    proj = tmp_path / "project"
    shutil.copytree(small_project / "config", proj / "config")
    shutil.copytree(small_project / "data", proj / "data")
    result = CliRunner().invoke(cli, ["--project", str(proj), "backtest", "--cadence", "quarterly",
                                      "--from", "2026-04-01", "--to", "2026-09-30"])
    assert result.exit_code == 0, result.output
    assert "FY2026-Q2 to FY2026-Q3" in result.output
    folder = proj / "runs" / "backtest" / "quarterly"
    rows = read_backtest(folder)
    assert rows is not None and set(rows["period"]) == {"FY2026-Q2", "FY2026-Q3"}
    assert set(rows["point"]) == {"start", "middle"}
    for name in ("backtest.csv", "summary.csv", "backtest.json"):
        assert (folder / name).is_file()
    html = (folder / "backtest.html").read_text()
    assert "Plotly.newPlot" in html and "<script src=" not in html  # the chart carries its own plotly.js
    # the printed executive line at mid-period is the median of the stored rows' absolute % errors
    top = rows[(rows["level"] == "executive") & (rows["point"] == "middle")]
    mdape = top["forecast_pct_error"].abs().median()
    line = next(x for x in result.output.splitlines() if x.startswith("middle executive"))
    assert f"{mdape:.1f}%" in line


def test_track_record_of_the_periods_ended(tmp_path: Path) -> None:
    from spm_lib.domain.periods import FiscalCalendar
    from spm_lib.engine.backtest import backtest_folder, track_record, write_backtest

    opps, hist = opportunities_and_history()
    data = Dataset(tables={"owners": owners(), "opportunities": opps, "opportunity_history": hist})
    cfg = Config(root=tmp_path, source=SourceConfig(kind="duckdb", path="unused.duckdb", tables={}))
    bt = run_backtest(cfg, data, "monthly", date(2026, 2, 1), date(2026, 2, 28), ONLY_STAGE)
    write_backtest(bt, backtest_folder(tmp_path, "monthly"), {})
    cal = FiscalCalendar(start_month=1)
    record, folder = track_record(tmp_path, cal, "month", date(2026, 3, 31))
    assert folder == tmp_path / "runs" / "backtest" / "monthly"
    # February at mid-month: forecast 100 + 1000 x 2/3 x 430/400 against 100 booked
    error = 1000 * (2 / 3) * 430 / 400
    assert record.loc["M", "periods"] == 1
    assert record.loc["M", "mdape"] == pytest.approx(100 * error / 100)
    assert record.loc["M", "bias"] == pytest.approx(100 * error / 100)
    assert track_record(tmp_path, cal, "month", date(2026, 2, 27))[0].empty  # February had not ended yet
    assert track_record(tmp_path / "elsewhere", cal, "month", date(2026, 3, 31))[0].empty  # no backtest


def test_forecast_meta_names_method_and_track_record(tmp_path: Path) -> None:
    from spm_lib.domain.periods import FiscalCalendar
    from spm_lib.engine.backtest import backtest_folder, forecast_meta, write_backtest
    from spm_lib.engine.calibration import STAGE, Calibration

    cal = FiscalCalendar(start_month=1)
    stage = Calibration(method=STAGE, reason="no opportunity history: stage probabilities only", grain="month",
                        cutoff=date(2026, 3, 31), periods=0, won=0)
    assert forecast_meta(stage, tmp_path, cal, date(2026, 3, 31)) == {
        "method": STAGE, "reason": "no opportunity history: stage probabilities only", "grain": "month",
        "cadence": "monthly", "backtest": None, "track_record": {}}
    opps, hist = opportunities_and_history()
    data = Dataset(tables={"owners": owners(), "opportunities": opps, "opportunity_history": hist})
    config = Config(root=tmp_path, source=SourceConfig(kind="duckdb", path="unused.duckdb", tables={}))
    write_backtest(run_backtest(config, data, "monthly", date(2026, 2, 1), date(2026, 2, 28), ONLY_STAGE),
                   backtest_folder(tmp_path, "monthly"), {})
    meta = forecast_meta(stage, tmp_path, cal, date(2026, 3, 31))
    assert meta["backtest"] == "runs/backtest/monthly"
    error = round(100 * 1000 * (2 / 3) * 430 / 400 / 100, 2)
    assert meta["track_record"]["E"] == {"periods": 1, "mdape": error, "bias": error, "in_range_pct": 0.0}
