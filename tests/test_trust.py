"""Trust checks: hand-computed counts, rates and statuses for a rep and a manager scope, and the edge cases.

The example company (as of 2026-10-15, so the last full month is 2026-09):
  E (executive) <- M (manager, player-coach, owns O4) <- R1 (O1, O2), R2 (O3, O6)
Open deals, amounts and what is wrong with them:
  O1 R1 Proposal       100  close 2026-09-20 (25 days past), updated 2026-10-01
  O2 R1 Prospecting     20  close 2026-10-25 (early stage, in 10 days), updated 2026-07-01 (106 days), pushed 3x,
                            40 days in Prospecting (usual 15), no activity ever
  O3 R2 Negotiation   none  close 2026-12-01 (missing amount)
  O4 M  Qualification  300  close 2026-11-30, updated 2026-08-16 (exactly 60 days), pushed 4x, last activity 44 days ago
  O6 R2 Proposal       580  reopened (was Closed Lost), amount cut from 700 to 580, created 2026-10-05
Closed: O5 R2 won 500 on 2026-09-10, O7 R2 lost, O8 R1 won 100 on 2026-09-25.
Open value: R1 120, R2 580, M and E 1000 (O3 counts 0). Open count: R1 2, R2 2, M and E 5.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spm_lib.config import Config, SourceConfig, Threshold, TrustConfig
from spm_lib.domain.contract import CONTRACT, PANDAS_DTYPES, Dataset
from spm_lib.engine.context import CubeContext
from spm_lib.engine.trust import (
    CHECKS,
    TRUST_COLUMNS,
    TRUST_ROW_COLUMNS,
    compute_trust,
    last_full_month,
    offenders_for,
    worst_status,
)

AS_OF = date(2026, 10, 15)
NA = None


def typed(table: str, rows: list[dict[str, object]]) -> pd.DataFrame:
    """A contract table from explicit rows, with contract dtypes."""
    df = pd.DataFrame(rows)
    for c in df.columns:
        df[c] = df[c].astype(PANDAS_DTYPES[CONTRACT[table].column(c).dtype])
    return df


OWNERS = [
    {"owner_id": "E", "manager_id": NA, "name": "Eve", "level": "executive"},
    {"owner_id": "M", "manager_id": "E", "name": "Max", "level": "manager"},
    {"owner_id": "R1", "manager_id": "M", "name": "Rita", "level": "rep"},
    {"owner_id": "R2", "manager_id": "M", "name": "Rob", "level": "rep"},
]
ANCESTORS = pd.DataFrame(
    [
        ("E", "E", 0),
        ("M", "M", 0),
        ("M", "E", 1),
        ("R1", "R1", 0),
        ("R1", "M", 1),
        ("R1", "E", 2),
        ("R2", "R2", 0),
        ("R2", "M", 1),
        ("R2", "E", 2),
    ],
    columns=["owner_id", "scope_id", "distance"],
).assign(valid_from=pd.NaT, valid_to=pd.NaT)


def opp(
    oid: str,
    owner: str,
    stage: str,
    amount: float | None,
    close: str | None,
    modified: str | None,
    created: str = "2026-05-01",
) -> dict[str, object]:
    closed = stage.startswith("Closed")
    return {
        "opportunity_id": oid,
        "owner_id": owner,
        "account_id": f"A{oid}",
        "name": f"Deal {oid}",
        "stage": stage,
        "amount": amount,
        "created_date": created,
        "close_date": close,
        "is_closed": closed,
        "is_won": stage == "Closed Won",
        "last_modified_date": modified,
    }


OPPS = [
    opp("O1", "R1", "Proposal", 100, "2026-09-20", "2026-10-01"),
    opp("O2", "R1", "Prospecting", 20, "2026-10-25", "2026-07-01"),
    opp("O3", "R2", "Negotiation", None, "2026-12-01", "2026-10-10"),
    opp("O4", "M", "Qualification", 300, "2026-11-30", "2026-08-16"),
    opp("O5", "R2", "Closed Won", 500, "2026-09-10", "2026-09-10"),
    opp("O6", "R2", "Proposal", 580, "2026-11-10", "2026-10-14", created="2026-10-05"),
    opp("O7", "R2", "Closed Lost", 50, "2026-06-30", "2026-06-30"),
    opp("O8", "R1", "Closed Won", 100, "2026-09-25", "2026-09-25"),
]
# what the as-of engine adds to each deal (pushes, amount_decreased, days_in_stage)
SNAPSHOT_EXTRA = {
    "O1": (0, False, 10),
    "O2": (3, False, 40),
    "O3": (1, False, 5),
    "O4": (4, False, 20),
    "O5": (0, False, 0),
    "O6": (0, True, 5),
    "O7": (0, False, 0),
    "O8": (0, False, 0),
}
HISTORY = [
    # O5: 10 days in Prospecting, 20 in Proposal; O7: 20 days in Prospecting, 40 in Proposal
    {
        "opportunity_id": "O5",
        "changed_at": "2026-06-01",
        "stage": "Prospecting",
        "amount": 500,
        "close_date": "2026-09-10",
    },
    {
        "opportunity_id": "O5",
        "changed_at": "2026-06-11",
        "stage": "Proposal",
        "amount": None,
        "close_date": None,
    },
    {
        "opportunity_id": "O5",
        "changed_at": "2026-07-01",
        "stage": "Closed Won",
        "amount": None,
        "close_date": None,
    },
    {
        "opportunity_id": "O7",
        "changed_at": "2026-05-01",
        "stage": "Prospecting",
        "amount": 50,
        "close_date": "2026-06-30",
    },
    {
        "opportunity_id": "O7",
        "changed_at": "2026-05-21",
        "stage": "Proposal",
        "amount": None,
        "close_date": None,
    },
    {
        "opportunity_id": "O7",
        "changed_at": "2026-06-30",
        "stage": "Closed Lost",
        "amount": None,
        "close_date": None,
    },
    # O2 entered Prospecting and is still there: an unfinished spell, not part of the medians
    {
        "opportunity_id": "O2",
        "changed_at": "2026-09-05",
        "stage": "Prospecting",
        "amount": 20,
        "close_date": "2026-10-25",
    },
    # O6: 700 first, lowered to 580
    {
        "opportunity_id": "O6",
        "changed_at": "2026-10-05",
        "stage": "Proposal",
        "amount": 700,
        "close_date": "2026-11-10",
    },
    {"opportunity_id": "O6", "changed_at": "2026-10-09", "stage": None, "amount": 580, "close_date": None},
]
ACTIVITIES = [
    {"activity_id": "a1", "owner_id": "R1", "date": "2026-10-01", "type": "call", "opportunity_id": "O1"},
    {"activity_id": "a2", "owner_id": "M", "date": "2026-09-01", "type": "call", "opportunity_id": "O4"},
    {"activity_id": "a3", "owner_id": "R2", "date": "2026-10-14", "type": "email", "opportunity_id": "O3"},
    {"activity_id": "a4", "owner_id": "R1", "date": "2026-10-14", "type": "email", "opportunity_id": None},
    {
        "activity_id": "a5",
        "owner_id": "R1",
        "date": "2026-10-20",
        "type": "call",
        "opportunity_id": "O2",
    },  # after as-of
]
FORECASTS = [
    {"owner_id": "R1", "period": "2026-09", "submitted_at": "2026-08-28 09:00", "amount": 80},
    {
        "owner_id": "R1",
        "period": "2026-09",
        "submitted_at": "2026-09-01 10:00",
        "amount": 90,
    },  # latest by Sep 1: counts
    {"owner_id": "R1", "period": "2026-09", "submitted_at": "2026-09-05 10:00", "amount": 200},  # too late
    {"owner_id": "R2", "period": "2026-09", "submitted_at": "2026-09-01 08:00", "amount": 500},
    {"owner_id": "M", "period": "2026-09", "submitted_at": "2026-08-30 08:00", "amount": 800},
    {
        "owner_id": "R2",
        "period": "2026-10",
        "submitted_at": "2026-10-01 08:00",
        "amount": 999,
    },  # another month
]
# actual bookings of 2026-09 per scope: R1 100 (O8), R2 500 (O5), M and E 600
BOOKINGS_SEP = pd.DataFrame(
    {"owner_id": ["R1", "R2", "M", "E"], "period": "2026-09", "value": [100.0, 500.0, 600.0, 600.0]}
)

SENIOR = {
    "forecast_deviation_pct": Threshold(warn=10, fail=25, unit="pct"),
    "opps_past_close_date": Threshold(warn=0, fail=0.05, unit="rate"),
    "opps_stale_60d": Threshold(warn=0.05, fail=0.10, unit="rate"),
    "opps_early_stage_closing_30d": Threshold(warn=0.05, unit="rate"),
    "opps_missing_fields": Threshold(warn=0, fail=0.05, unit="rate"),
    "opps_pushed": Threshold(warn=0.10, unit="rate"),
    "deals_no_activity": Threshold(warn=0.10, unit="rate"),
    "deals_stalled_in_stage": Threshold(warn=0.10, unit="rate"),
    "deals_amount_decreased": Threshold(warn=0.10, unit="rate"),
}
DEFAULT = {
    "forecast_deviation_pct": Threshold(warn=10, fail=25, unit="pct"),
    "opps_past_close_date": Threshold(fail=0, unit="count"),
    "opps_stale_60d": Threshold(warn=0, fail=0.10, unit="rate"),
    "opps_early_stage_closing_30d": Threshold(warn=0, unit="count"),
    "opps_missing_fields": Threshold(fail=0, unit="count"),
    "opps_pushed": Threshold(warn=0, unit="count"),
    "deals_no_activity": Threshold(warn=0, unit="count"),
    "deals_stalled_in_stage": Threshold(warn=0, unit="count"),
    "deals_amount_decreased": Threshold(warn=0, unit="count"),
}


def make_config(tmp: Path = Path(".")) -> Config:
    """A config with the demo thresholds written out (default = counts for reps, rates for managers and up)."""
    trust = TrustConfig(thresholds={"default": DEFAULT, "manager": SENIOR, "executive": SENIOR})
    return Config(root=tmp, source=SourceConfig(kind="folder", path="data"), trust=trust)


def make_context(
    opps: list[dict[str, object]] = OPPS,
    *,
    history: bool = True,
    activities: bool = True,
    forecasts: list[dict[str, object]] | None = FORECASTS,
) -> CubeContext:
    """A CubeContext built by hand: the snapshot is the opportunities plus what the as-of engine adds."""
    tables = {"owners": typed("owners", OWNERS), "opportunities": typed("opportunities", opps)}
    if history:
        tables["opportunity_history"] = typed("opportunity_history", HISTORY)
    if activities:
        tables["activities"] = typed("activities", ACTIVITIES)
    if forecasts is not None:
        tables["forecasts"] = typed("forecasts", forecasts)
    snap = tables["opportunities"].copy()
    extra = snap["opportunity_id"].map(SNAPSHOT_EXTRA)
    snap["pushes"] = extra.str[0].astype("Int64")
    snap["amount_decreased"] = extra.str[1].astype("boolean")
    snap["days_in_stage"] = extra.str[2].astype("float64")
    return CubeContext(
        cfg=make_config(),
        data=Dataset(tables=tables),
        cadence="monthly",
        as_of=AS_OF,
        calendar=None,
        windows=None,
        org=None,
        snapshot=snap,
        ancestors=ANCESTORS,
        con=None,  # type: ignore[arg-type]
        owners=tables["owners"],
    )


@pytest.fixture(scope="module")
def result() -> tuple[pd.DataFrame, pd.DataFrame]:
    return compute_trust(make_context(), BOOKINGS_SEP)


def row(trust: pd.DataFrame, owner: str, check: str) -> pd.Series:
    hit = trust[(trust["owner_id"] == owner) & (trust["check"] == check)]
    assert len(hit) == 1
    return hit.iloc[0]


def offending(rows: pd.DataFrame, check: str) -> list[str]:
    return sorted(rows.loc[rows["check"] == check, "opportunity_id"].astype(str))


def test_shape_one_row_per_scope_and_check(result: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    trust, rows = result
    assert list(trust.columns) == TRUST_COLUMNS
    assert list(rows.columns) == TRUST_ROW_COLUMNS
    assert len(trust) == 4 * len(CHECKS)
    assert not trust.duplicated(["owner_id", "check"]).any()
    assert not rows.duplicated(["check", "opportunity_id"]).any()


def test_open_totals_include_reports_and_reopened_deal(result: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    trust, _ = result
    expected = {"R1": (2, 120.0), "R2": (2, 580.0), "M": (5, 1000.0), "E": (5, 1000.0)}
    for owner, (n, v) in expected.items():
        r = row(trust, owner, "opps_past_close_date")
        assert (r["open_count"], r["open_value"]) == (n, v)


@pytest.mark.parametrize(
    ("check", "ids"),
    [
        ("opps_past_close_date", ["O1"]),
        ("opps_stale_60d", ["O2", "O4"]),
        ("opps_early_stage_closing_30d", ["O2"]),
        ("opps_missing_fields", ["O3"]),
        ("opps_pushed", ["O2", "O4"]),
        ("deals_no_activity", ["O2", "O4"]),
        ("deals_stalled_in_stage", ["O2"]),
        ("deals_amount_decreased", ["O6"]),
        ("forecast_deviation_pct", []),
    ],
)
def test_offending_rows_are_exactly_the_expected_deals(
    result: tuple[pd.DataFrame, pd.DataFrame], check: str, ids: list[str]
) -> None:
    assert offending(result[1], check) == ids


@pytest.mark.parametrize(
    ("owner", "check", "count", "amount", "value", "status"),
    [
        # reps: counts (stale is a rate for everyone)
        ("R1", "opps_past_close_date", 1, 100.0, 1.0, "fail"),
        ("R2", "opps_past_close_date", 0, 0.0, 0.0, "pass"),
        ("R1", "opps_stale_60d", 1, 20.0, 20 / 120, "fail"),
        ("R2", "opps_stale_60d", 0, 0.0, 0.0, "pass"),
        ("R1", "opps_early_stage_closing_30d", 1, 20.0, 1.0, "warn"),
        ("R2", "opps_missing_fields", 1, 0.0, 1.0, "fail"),
        ("R1", "opps_pushed", 1, 20.0, 1.0, "warn"),
        ("R1", "deals_no_activity", 1, 20.0, 1.0, "warn"),
        ("R2", "deals_no_activity", 0, 0.0, 0.0, "pass"),  # O6 is younger than 30 days
        ("R1", "deals_stalled_in_stage", 1, 20.0, 1.0, "warn"),
        ("R2", "deals_amount_decreased", 1, 580.0, 1.0, "warn"),
        # the manager: rates of the team's open value (1000), own deal O4 included
        ("M", "opps_past_close_date", 1, 100.0, 0.10, "fail"),
        ("M", "opps_stale_60d", 2, 320.0, 0.32, "fail"),
        ("M", "opps_early_stage_closing_30d", 1, 20.0, 0.02, "pass"),  # one stray deal: a count would warn
        ("M", "opps_missing_fields", 1, 0.0, 0.20, "fail"),  # no value offends: share of deals, 1 of 5
        ("M", "opps_pushed", 2, 320.0, 0.32, "warn"),
        ("M", "deals_no_activity", 2, 320.0, 0.32, "warn"),
        ("M", "deals_stalled_in_stage", 1, 20.0, 0.02, "pass"),
        ("M", "deals_amount_decreased", 1, 580.0, 0.58, "warn"),
        # the executive sees the same deals as the manager
        ("E", "opps_stale_60d", 2, 320.0, 0.32, "fail"),
    ],
)
def test_counts_rates_and_statuses(
    result: tuple[pd.DataFrame, pd.DataFrame],
    owner: str,
    check: str,
    count: int,
    amount: float,
    value: float,
    status: str,
) -> None:
    r = row(result[0], owner, check)
    assert r["count"] == count
    assert r["amount"] == pytest.approx(amount)
    assert r["value"] == pytest.approx(value)
    assert r["status"] == status
    assert bool(r["available"]) is True


def test_units_and_thresholds_follow_the_level(result: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    trust, _ = result
    rep = row(trust, "R1", "opps_past_close_date")
    mgr = row(trust, "M", "opps_past_close_date")
    assert (rep["unit"], rep["fail"]) == ("count", 0)
    assert np.isnan(rep["warn"])
    assert (mgr["unit"], mgr["warn"], mgr["fail"]) == ("rate", 0, 0.05)
    assert mgr["label"] == CHECKS["opps_past_close_date"].label


def test_details_say_what_is_wrong(result: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    rows = result[1].set_index(["check", "opportunity_id"])["detail"]
    assert rows[("opps_past_close_date", "O1")] == "close date 2026-09-20 is 25 days in the past"
    assert rows[("opps_stale_60d", "O2")] == "no update for 106 days"
    assert rows[("opps_stale_60d", "O4")] == "no update for 60 days"
    assert (
        rows[("opps_early_stage_closing_30d", "O2")]
        == "closes 2026-10-25 (in 10 days) but is still in Prospecting"
    )
    assert rows[("opps_missing_fields", "O3")] == "no amount"
    assert rows[("opps_pushed", "O4")] == "pushed 4 times"
    assert rows[("deals_no_activity", "O2")] == "no activity logged"
    assert rows[("deals_no_activity", "O4")] == "no activity for 44 days"
    assert rows[("deals_stalled_in_stage", "O2")] == "40 days in Prospecting (usual: 15 days)"
    assert rows[("deals_amount_decreased", "O6")] == "amount cut from 700 to 580"


def test_offending_row_carries_the_deal_owner(result: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    rows = result[1]
    r = rows[(rows["check"] == "opps_pushed") & (rows["opportunity_id"] == "O4")].iloc[0]
    assert (r["owner_id"], r["name"], r["account_id"], r["stage"], r["amount"]) == (
        "M",
        "Deal O4",
        "AO4",
        "Qualification",
        300,
    )


def test_forecast_deviation_uses_top_submission_of_each_scope(
    result: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    trust, _ = result
    # R1: forecast 90 (the 200 came after Sep 1), actual 100 -> +11.1 % -> warn
    r1 = row(trust, "R1", "forecast_deviation_pct")
    assert r1["value"] == pytest.approx(100 / 9)
    assert (r1["status"], r1["unit"]) == ("warn", "pct")
    assert row(trust, "R2", "forecast_deviation_pct")["status"] == "pass"  # 500 vs 500
    # M committed 800 for the team, actual 600 -> -25 %: |-25| is not above 25 -> warn; E has none: M's covers it
    for owner in ("M", "E"):
        r = row(trust, owner, "forecast_deviation_pct")
        assert r["value"] == pytest.approx(-25.0)
        assert r["status"] == "warn"
        assert pd.isna(r["count"])


def test_forecast_of_a_manager_without_submission_sums_the_reports() -> None:
    forecasts = [f for f in FORECASTS if f["owner_id"] != "M"]
    trust, _ = compute_trust(make_context(forecasts=forecasts), BOOKINGS_SEP)
    # M and E: 90 + 500 = 590 forecast, 600 actual -> +1.69 %
    assert row(trust, "M", "forecast_deviation_pct")["value"] == pytest.approx(10 / 590 * 100)
    assert row(trust, "E", "forecast_deviation_pct")["status"] == "pass"


def test_forecast_missing_for_a_scope_is_not_available_never_zero() -> None:
    forecasts = [f for f in FORECASTS if f["owner_id"] == "R2"]
    trust, _ = compute_trust(make_context(forecasts=forecasts), BOOKINGS_SEP)
    r1 = row(trust, "R1", "forecast_deviation_pct")
    assert r1["status"] == "not_available"
    assert np.isnan(r1["value"])
    assert "no forecast for 2026-09" in r1["na_reason"]


def test_forecast_actuals_from_current_snapshot_without_history() -> None:
    trust, _ = compute_trust(make_context(history=False))
    # won in September: O8 100 (R1), O5 500 (R2)
    assert row(trust, "R1", "forecast_deviation_pct")["value"] == pytest.approx(100 / 9)
    assert row(trust, "M", "forecast_deviation_pct")["value"] == pytest.approx(-25.0)


def test_checks_without_their_data_are_not_available() -> None:
    opps = [{**o, "last_modified_date": None} for o in OPPS]
    trust, rows = compute_trust(
        make_context(opps, history=False, activities=False, forecasts=None), BOOKINGS_SEP
    )
    expected = {
        "opps_stale_60d": "not available — needs opportunities.last_modified_date",
        "opps_pushed": "not available — needs opportunity_history.close_date",
        "deals_stalled_in_stage": "not available — needs opportunity_history.stage",
        "deals_amount_decreased": "not available — needs opportunity_history.amount",
        "deals_no_activity": "not available — needs activities.opportunity_id",
        "forecast_deviation_pct": "not available — needs forecasts",
    }
    for check, reason in expected.items():
        for owner in ("R1", "M"):
            r = row(trust, owner, check)
            assert (r["status"], r["na_reason"], bool(r["available"])) == ("not_available", reason, False)
            assert np.isnan(r["value"])
        assert offending(rows, check) == []
    assert row(trust, "R1", "opps_past_close_date")["status"] == "fail"  # the rest still works


def test_no_open_deals_pass_with_zero() -> None:
    opps = [o for o in OPPS if str(o["stage"]).startswith("Closed")]
    trust, rows = compute_trust(make_context(opps), BOOKINGS_SEP)
    deal_checks = trust[trust["check"] != "forecast_deviation_pct"]
    assert (deal_checks["open_count"] == 0).all()
    assert (deal_checks["value"] == 0).all()
    assert (deal_checks["status"] == "pass").all()
    assert rows.empty


def test_last_full_month() -> None:
    assert last_full_month(date(2026, 10, 15)) == ("2026-09", date(2026, 9, 1), date(2026, 9, 30))
    assert last_full_month(date(2026, 10, 31)) == ("2026-10", date(2026, 10, 1), date(2026, 10, 31))
    assert last_full_month(date(2026, 1, 1)) == ("2025-12", date(2025, 12, 1), date(2025, 12, 31))


def test_worst_status() -> None:
    assert worst_status(["pass", "warn", "not_available"]) == "warn"
    assert worst_status(["pass", "fail", "warn"]) == "fail"
    assert worst_status([]) == "pass"
    assert worst_status(["pass", "not_available"]) == "pass"  # an absent check does not make a scope untrusted


def test_offenders_for_a_scope_largest_first(result: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    facts = pd.DataFrame(
        {
            "opportunity_id": ["O1", "O2", "O3", "O4", "O6"],
            "scope_ids": [["R1", "M", "E"], ["R1", "M", "E"], ["R2", "M", "E"], ["M", "E"], ["R2", "M", "E"]],
        }
    )
    top = offenders_for(result[1], facts, "M", limit=2)
    assert top["opportunity_id"].tolist() == ["O6", "O4"]  # 580, 300
    assert top.loc[1, "detail"] == (
        "deals_no_activity: no activity for 44 days; opps_pushed: pushed 4 times; "
        "opps_stale_60d: no update for 60 days"
    )
    assert offenders_for(result[1], facts, "R1", limit=20)["opportunity_id"].tolist() == ["O1", "O2"]


# ---------------------------------------------------------------- through build_context (as-of from history)
def test_through_build_context_history_drives_open_pushes_and_month_end_bookings() -> None:
    """X1 pushed 3 times; X2 lost then reopened (open); X4 was still open on Sep 30 (won Oct 3, backdated)."""
    from spm_lib.engine.context import build_context

    opps = [
        opp("X1", "R1", "Proposal", 100, "2026-11-05", "2026-09-05"),
        opp("X2", "R2", "Negotiation", 200, "2026-12-15", "2026-09-20"),
        opp("X3", "M", "Closed Won", 300, "2026-09-12", "2026-09-12"),
        opp("X4", "R1", "Closed Won", 50, "2026-09-29", "2026-10-03"),
    ]
    h = [
        ("X1", "2026-06-01", "Prospecting", 100, "2026-08-01"),
        ("X1", "2026-07-25", None, None, "2026-08-20"),
        ("X1", "2026-08-15", None, None, "2026-09-10"),
        ("X1", "2026-09-05", "Proposal", None, "2026-11-05"),
        ("X2", "2026-07-01", "Negotiation", 200, "2026-12-15"),
        ("X2", "2026-08-01", "Closed Lost", None, None),
        ("X2", "2026-09-20", "Negotiation", None, None),
        ("X3", "2026-08-01", "Proposal", 300, "2026-09-12"),
        ("X3", "2026-09-12", "Closed Won", None, None),
        ("X4", "2026-08-01", "Proposal", 50, "2026-09-29"),
        ("X4", "2026-10-03", "Closed Won", None, None),
    ]
    history = [
        {"opportunity_id": o, "changed_at": t, "stage": s, "amount": a, "close_date": c}
        for o, t, s, a, c in h
    ]
    forecasts = [{"owner_id": "R1", "period": "2026-09", "submitted_at": "2026-08-31 12:00", "amount": 100}]
    data = Dataset(
        tables={
            "owners": typed("owners", OWNERS),
            "opportunities": typed("opportunities", opps),
            "opportunity_history": typed("opportunity_history", history),
            "forecasts": typed("forecasts", forecasts),
        }
    )
    ctx = build_context(make_config(), data, "monthly", AS_OF)
    trust, rows = compute_trust(ctx)
    # open: X1 (R1) and the reopened X2 (R2); M's scope holds both
    assert (row(trust, "R2", "opps_pushed")["open_count"], row(trust, "R2", "opps_pushed")["open_value"]) == (
        1,
        200,
    )
    assert row(trust, "M", "opps_pushed")["open_count"] == 2
    assert offending(rows, "opps_pushed") == ["X1"]
    assert row(trust, "R1", "opps_pushed")["status"] == "warn"
    # September as it stood on Sep 30: X3 won (300), X4 still open -> R1 actual 0 vs forecast 100 -> -100 %
    assert row(trust, "R1", "forecast_deviation_pct")["value"] == pytest.approx(-100.0)
    assert row(trust, "R1", "forecast_deviation_pct")["status"] == "fail"
    # M submitted none: R1's 100 covers M's scope; actual 300 -> +200 %; R2 has no forecast at all
    assert row(trust, "M", "forecast_deviation_pct")["value"] == pytest.approx(200.0)
    assert row(trust, "R2", "forecast_deviation_pct")["status"] == "not_available"


def test_material_checks_weigh_the_flagged_value_against_the_forward_pipeline() -> None:
    import dataclasses
    from types import SimpleNamespace

    from spm_lib.domain.periods import Window

    material = {"opps_past_close_date": Threshold(warn=0, fail=0.2, unit="material"),
                "opps_stale_60d": Threshold(warn=0, fail=0.5, unit="material", fail_amount=300)}
    cfg = Config(root=Path("."), source=SourceConfig(kind="folder", path="data"),
                 trust=TrustConfig(thresholds={"default": DEFAULT | material}))
    # the rest of the forward period (FY2026-Q4 after Oct 15): the open deals due by Dec 31 are all of them:
    # O1 (R1, 100, overdue), O2 (R1, 20), O3 (R2, no amount), O4 (M, 300), O6 (R2, 580): R1 120, R2 580, M and E 1000
    windows = SimpleNamespace(remaining=Window(date(2026, 10, 16), date(2026, 12, 31)))
    ctx = dataclasses.replace(make_context(), cfg=cfg, windows=windows)
    trust, rows = compute_trust(ctx, BOOKINGS_SEP)
    expected = {  # (owner, check): (value, status)
        ("R1", "opps_past_close_date"): (100 / 120, "fail"),  # O1 (100) of R1's 120: it decides the quarter
        ("M", "opps_past_close_date"): (100 / 1000, "warn"),  # 10 % of the team's: listed, not decisive
        ("R2", "opps_past_close_date"): (0.0, "pass"),
        ("R1", "opps_stale_60d"): (20 / 120, "warn"),
        ("M", "opps_stale_60d"): (320 / 1000, "fail"),  # 32 % < 50 %, but 320 reaches fail_amount 300
        ("E", "opps_stale_60d"): (320 / 1000, "fail"),
    }
    for (owner, check), (value, status) in expected.items():
        r = row(trust, owner, check)
        assert r["value"] == pytest.approx(value) and r["status"] == status, (owner, check)
    assert offending(rows, "opps_past_close_date") == ["O1"]  # the deals are listed whatever the status

    # a forward window up to Nov 15: due by then are O1 (overdue), O2 (Oct 25) and O6 (Nov 10); O4 (stale, 300,
    # dated Nov 30) is after it: listed, but not weighed, and its 300 no longer reaches fail_amount
    windows = SimpleNamespace(remaining=Window(date(2026, 10, 16), date(2026, 11, 15)))
    trust, rows = compute_trust(dataclasses.replace(ctx, windows=windows), BOOKINGS_SEP)
    r = row(trust, "M", "opps_stale_60d")
    assert r["value"] == pytest.approx(20 / 700) and r["status"] == "warn" and r["amount"] == pytest.approx(320)
    assert offending(rows, "opps_stale_60d") == ["O2", "O4"]
    # up to Oct 20 only O1 is due: the stale deals (O2, O4) weigh 0 yet still warn (warn 0: any flagged deal)
    windows = SimpleNamespace(remaining=Window(date(2026, 10, 16), date(2026, 10, 20)))
    trust, _ = compute_trust(dataclasses.replace(ctx, windows=windows), BOOKINGS_SEP)
    for owner in ("R1", "M"):
        r = row(trust, owner, "opps_stale_60d")
        assert r["value"] == 0.0 and r["status"] == "warn", owner
        assert row(trust, owner, "opps_past_close_date")["value"] == pytest.approx(1.0)
    assert row(trust, "R2", "opps_stale_60d")["status"] == "pass"
