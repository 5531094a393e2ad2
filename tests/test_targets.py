"""Target resolution (explicit, phased, summed, rolled up), attainment and status on a tiny hand-written company.

Owners: E (executive) → M (manager, player-coach with deals of her own) → R1, R2 (reps).
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spm_lib.config import CompanyConfig, Config, SourceConfig, StatusBands, TargetsConfig
from spm_lib.domain.contract import CONTRACT, PANDAS_DTYPES, Dataset
from spm_lib.engine.targets import attainment, resolve_targets, status

AS_OF = date(2026, 5, 15)


def _table(name: str, rows: list[dict[str, object]]) -> pd.DataFrame:
    """A contract table from explicit rows, with contract dtypes."""
    df = pd.DataFrame(rows)
    for col in df.columns:
        df[col] = df[col].astype(PANDAS_DTYPES[CONTRACT[name].column(col).dtype])
    return df


def _ctx(tmp_path: Path, targets: list[tuple[str, str, str, float]], *, fy_start: int = 1,
         phasing: str = "flat", profiles: dict[str, list[float]] | None = None, as_of: date = AS_OF):  # type: ignore[no-untyped-def]
    """A cube context over 4 owners, one deal each, and the given (owner, period, metric, value) target rows."""
    from spm_lib.engine.context import build_context

    owners = _table("owners", [
        {"owner_id": "E", "manager_id": None, "name": "Eve Exec", "level": "executive"},
        {"owner_id": "M", "manager_id": "E", "name": "Max Manager", "level": "manager"},
        {"owner_id": "R1", "manager_id": "M", "name": "Rita Rep", "level": "rep"},
        {"owner_id": "R2", "manager_id": "M", "name": "Rob Rep", "level": "rep"},
    ])
    opps = _table("opportunities", [
        {"opportunity_id": f"O{o}", "owner_id": o, "stage": "Closed Won", "amount": 100.0,
         "created_date": pd.Timestamp("2026-01-10"), "close_date": pd.Timestamp("2026-02-10"),
         "is_closed": True, "is_won": True} for o in ("M", "R1", "R2")])
    tables = {"owners": owners, "opportunities": opps}
    if targets:
        tables["targets"] = _table("targets", [{"owner_id": o, "period": p, "metric": m, "value": v}
                                               for o, p, m, v in targets])
    cfg = Config(root=tmp_path, source=SourceConfig(kind="folder", path="data"),
                 company=CompanyConfig(fiscal_year_start_month=fy_start),
                 targets=TargetsConfig(phasing=phasing, profiles=profiles or {}))
    return build_context(cfg, Dataset(tables=tables), "monthly", as_of)


def _p(grain: str, label: str, start: str, end: str):  # type: ignore[no-untyped-def]
    from spm_lib.domain.periods import Period

    return Period(grain=grain, label=label, start=date.fromisoformat(start), end=date.fromisoformat(end))


APR = ("month", "2026-04", "2026-04-01", "2026-04-30")
MAY = ("month", "2026-05", "2026-05-01", "2026-05-31")
Q1 = ("quarter", "FY2026-Q1", "2026-01-01", "2026-03-31")
Q2 = ("quarter", "FY2026-Q2", "2026-04-01", "2026-06-30")
FY = ("year", "FY2026", "2026-01-01", "2026-12-31")
YTD = ("ytd", "FY2026-YTD", "2026-01-01", "2026-05-15")


def _resolve(ctx, metric: str, *periods: tuple[str, str, str, str]) -> dict[tuple[str, str], tuple[float, str]]:  # type: ignore[no-untyped-def]
    df = resolve_targets(ctx, metric, [_p(*p) for p in periods])
    assert list(df.columns) == ["owner_id", "period", "metric", "target", "source"]
    assert (df["metric"] == metric).all()
    return {(r.owner_id, r.period): (r.target, r.source) for r in df.itertuples()}


# ---------------------------------------------------------------- explicit, summed, phased
def test_explicit_monthly_targets_and_roll_up_of_owners_without_targets(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [("R1", "2026-04", "bookings", 100.0), ("R1", "2026-05", "bookings", 120.0),
                          ("R2", "2026-05", "bookings", 30.0)])
    got = _resolve(ctx, "bookings", APR, MAY)
    assert got == {
        ("R1", "2026-04"): (100.0, "explicit"), ("R1", "2026-05"): (120.0, "explicit"),
        ("R2", "2026-05"): (30.0, "explicit"),
        # M and E have no target of their own: the sum of their direct reports (R2 has none for April)
        ("M", "2026-04"): (100.0, "rolled_up"), ("M", "2026-05"): (150.0, "rolled_up"),
        ("E", "2026-04"): (100.0, "rolled_up"), ("E", "2026-05"): (150.0, "rolled_up"),
    }


def test_quarter_is_the_sum_of_its_months_only_when_all_three_are_present(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [("R1", "2026-01", "bookings", 10.0), ("R1", "2026-02", "bookings", 20.0),
                          ("R1", "2026-03", "bookings", 30.0),
                          ("R2", "2026-04", "bookings", 40.0), ("R2", "2026-05", "bookings", 50.0)])
    got = _resolve(ctx, "bookings", Q1, Q2)
    assert got[("R1", "FY2026-Q1")] == (60.0, "sum_of_months")
    assert ("R2", "FY2026-Q2") not in got  # June is missing and there is no year to phase: no target, not 90
    assert ("R1", "FY2026-Q2") not in got
    assert got[("M", "FY2026-Q1")] == (60.0, "rolled_up")


def test_year_phased_flat_into_months_quarters_and_ytd(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [("R1", "FY2026", "bookings", 1200.0)])
    got = _resolve(ctx, "bookings", MAY, Q2, FY, YTD)
    assert got[("R1", "2026-05")][0] == pytest.approx(100.0)  # 1200 / 12
    assert got[("R1", "2026-05")][1] == "phased"
    assert got[("R1", "FY2026-Q2")][0] == pytest.approx(300.0)
    assert got[("R1", "FY2026")] == (1200.0, "explicit")
    assert got[("R1", "FY2026-YTD")][0] == pytest.approx(500.0)  # January .. May (as_of's month)
    assert got[("R1", "FY2026-YTD")][1] == "phased"


def test_year_phased_by_profile_with_fiscal_year_starting_in_february(tmp_path: Path) -> None:
    # FY2027 runs February 2026 .. January 2027; weights 4,2,2 | 1,1,1 | 1,1,1 | 1,1,0 sum to 16
    profile = [4, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    ctx = _ctx(tmp_path, [("R1", "FY2027", "bookings", 1600.0)], fy_start=2, phasing="season",
               profiles={"season": profile}, as_of=date(2026, 3, 20))
    got = _resolve(ctx, "bookings",
                   ("month", "2026-02", "2026-02-01", "2026-02-28"),
                   ("month", "2026-03", "2026-03-01", "2026-03-31"),
                   ("month", "2027-01", "2027-01-01", "2027-01-31"),
                   ("quarter", "FY2027-Q1", "2026-02-01", "2026-04-30"),
                   ("quarter", "FY2027-Q4", "2026-11-01", "2027-01-31"),
                   ("ytd", "FY2027-YTD", "2026-02-01", "2026-03-20"))
    assert got[("R1", "2026-02")][0] == pytest.approx(400.0)  # 1600 × 4/16
    assert got[("R1", "2026-03")][0] == pytest.approx(200.0)  # 1600 × 2/16
    assert got[("R1", "2027-01")][0] == pytest.approx(0.0)  # a weight of 0 phases a target of 0 (it exists)
    assert got[("R1", "FY2027-Q1")][0] == pytest.approx(800.0)  # 400 + 200 + 200
    assert got[("R1", "FY2027-Q4")][0] == pytest.approx(200.0)  # 100 + 100 + 0
    assert got[("R1", "FY2027-YTD")][0] == pytest.approx(600.0)  # February + March
    assert {s for (o, _), (_, s) in got.items() if o == "R1"} == {"phased"}


def test_ytd_from_explicit_months(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [("R1", f"2026-{m:02d}", "bookings", 10.0 * m) for m in range(1, 13)])
    got = _resolve(ctx, "bookings", YTD, FY)
    assert got[("R1", "FY2026-YTD")] == (150.0, "sum_of_months")  # 10 + 20 + 30 + 40 + 50
    assert got[("R1", "FY2026")] == (780.0, "sum_of_months")  # 10 × (1 + … + 12)


# ---------------------------------------------------------------- roll-up
def test_player_coach_with_own_target_keeps_it_and_counts_once_above(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [("R1", "FY2026-Q2", "bookings", 100.0), ("R2", "FY2026-Q2", "bookings", 50.0),
                          ("M", "FY2026-Q2", "bookings", 180.0)])
    got = _resolve(ctx, "bookings", Q2)
    assert got[("M", "FY2026-Q2")] == (180.0, "explicit")  # her team target, not 100 + 50
    assert got[("E", "FY2026-Q2")] == (180.0, "rolled_up")  # E's only direct report is M


def test_manager_without_targets_gets_the_sum_of_reps(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [("R1", "FY2026-Q2", "bookings", 100.0), ("R2", "FY2026-Q2", "bookings", 50.0)])
    got = _resolve(ctx, "bookings", Q2)
    assert got[("M", "FY2026-Q2")] == (150.0, "rolled_up")
    assert got[("E", "FY2026-Q2")] == (150.0, "rolled_up")


def test_no_target_anywhere_gives_no_row_never_zero(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [("R1", "FY2026-Q2", "bookings", 100.0)])
    assert _resolve(ctx, "deals_won", Q2) == {}
    got = _resolve(ctx, "bookings", Q1, Q2)
    assert ("R2", "FY2026-Q2") not in got
    assert not any(p == "FY2026-Q1" for _, p in got)  # nobody has a Q1 target
    assert resolve_targets(_ctx(tmp_path, []), "bookings", [_p(*Q2)]).empty  # no targets table at all


def test_ratio_targets_are_inherited_not_summed_or_rolled_up(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, [("R1", "FY2026", "win_rate", 30.0), ("R2", "FY2026", "win_rate", 20.0)])
    got = _resolve(ctx, "win_rate", MAY, Q2, FY)
    assert got[("R1", "2026-05")] == (30.0, "inherited")
    assert got[("R1", "FY2026-Q2")] == (30.0, "inherited")
    assert got[("R2", "FY2026")] == (20.0, "explicit")
    assert not any(o in ("M", "E") for o, _ in got)  # a team's win rate target is not 30 + 20


# ---------------------------------------------------------------- attainment and status
def test_attainment_higher_and_lower_is_better() -> None:
    assert attainment(90.0, 100.0, "higher") == pytest.approx(0.9)
    assert attainment(120.0, 100.0, "lower") == pytest.approx(100 / 120)  # costs 20 % over a cap
    assert math.isnan(attainment(50.0, 0.0, "higher"))  # zero target: not computable
    assert math.isnan(attainment(0.0, 10.0, "lower"))
    assert math.isnan(attainment(float("nan"), 10.0, "higher"))


def test_attainment_and_status_vectorised_over_series() -> None:
    value = pd.Series([95.0, 100.0, 80.0, 110.0, 5.0], index=list("abcde"))
    target = pd.Series([100.0, 100.0, 100.0, 100.0, 0.0], index=list("abcde"))
    direction = pd.Series(["higher", "higher", "higher", "lower", "higher"], index=list("abcde"))
    att = attainment(value, target, direction)
    assert list(att.index) == list("abcde")
    np.testing.assert_allclose(att.to_numpy()[:4], [0.95, 1.0, 0.8, 100 / 110])
    assert np.isnan(att["e"])
    st = status(att, StatusBands(green=1.0, amber=0.9))
    assert st.tolist() == ["amber", "green", "red", "amber", "none"]
    assert status(0.89, StatusBands(green=1.0, amber=0.9)) == "red"
    assert status(float("nan"), StatusBands()) == "none"


def test_session_status_is_the_worst_against_target_and_provisional_data_is_at_best_at_risk() -> None:
    from spm_lib.engine.targets import session_status

    assert session_status(["green", "green"], "pass") == "green"
    assert session_status(["green", "amber"], "warn") == "amber"  # a warning does not change the word
    assert session_status(["red", "green"], "pass") == "red"
    assert session_status(["green", "none"], "fail") == "amber"  # on track, but on data failing a check
    assert session_status(["red"], "fail") == "red"
    assert session_status(["none", "none"], "pass") == "none"  # no target at all: no word to give
    assert session_status([], "fail") == "amber"
