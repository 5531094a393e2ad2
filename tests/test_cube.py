"""The cube on a small explicit company, every expected number computed by hand in the comments."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from spm_lib.config import load_config
from spm_lib.domain.contract import Dataset, typed
from spm_lib.engine.cube import compute_cube, read_cube, write_cube

ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-10-31"


def _cfg():
    # the repository's own config (stages Prospecting..Negotiation, Closed Won/Lost; FY starts in January)
    return load_config(ROOT)


def company(with_history: bool = True) -> Dataset:
    """exec E <- manager M (player-coach) <- reps R1, R2."""
    owners = typed("owners", pd.DataFrame({
        "owner_id": ["E", "M", "R1", "R2"], "manager_id": [None, "E", "M", "M"],
        "name": ["Eve", "Max", "Rita", "Rob"], "level": ["executive", "manager", "rep", "rep"]}))
    o = pd.DataFrame([
        # id, owner, stage, amount, created, close
        ("o1", "R1", "Closed Won", 150.0, "2026-09-01", "2026-10-10"),   # amount edited to 150 on 11-05 (after as-of)
        ("o2", "R1", "Closed Lost", 50.0, "2026-08-01", "2026-10-20"),
        ("o3", "R2", "Closed Won", 200.0, "2026-07-01", "2026-10-05"),
        ("o4", "M", "Closed Won", 300.0, "2026-10-01", "2026-10-15"),
        ("o5", "R2", "Closed Won", 80.0, "2026-06-01", "2026-09-15"),
        ("o6", "R1", "Proposal", 400.0, "2026-09-10", "2026-11-20"),
        ("o7", "R2", "Negotiation", 100.0, "2026-09-20", "2026-12-10"),
        ("o8", "R2", "Prospecting", 60.0, "2026-10-02", "2027-01-15"),
        ("o9", "R1", "Negotiation", 70.0, "2026-08-15", "2026-11-15"),   # won in Sep, reopened on 10-05
    ], columns=["opportunity_id", "owner_id", "stage", "amount", "created_date", "close_date"])
    o["account_id"] = ["a1", "a2", "a3", "a4", "a3", "a5", "a6", "a7", "a8"]
    o["last_modified_date"] = pd.to_datetime("2026-10-25")
    opps = typed("opportunities", o)
    tables = {"owners": owners, "opportunities": opps}
    if with_history:
        h = pd.DataFrame([
            ("o1", "2026-09-01", "Prospecting", 100.0, "2026-10-30"),
            ("o1", "2026-10-10", "Closed Won", None, "2026-10-10"),
            ("o1", "2026-10-25", None, 120.0, None),          # amount changed after close, before as-of
            ("o1", "2026-11-05", None, 150.0, None),          # after as-of: invisible on 10-31
            ("o9", "2026-08-15", "Qualification", 70.0, "2026-09-30"),
            ("o9", "2026-09-20", "Closed Won", None, "2026-09-20"),
            ("o9", "2026-10-05", "Negotiation", None, "2026-11-15"),  # reopened
        ], columns=["opportunity_id", "changed_at", "stage", "amount", "close_date"])
        tables["opportunity_history"] = typed("opportunity_history", h)
    targets = pd.DataFrame({"owner_id": ["R1", "R2", "M"], "period": ["2026-10"] * 3,
                            "metric": ["bookings"] * 3, "value": [200.0, 150.0, 500.0]})
    tables["targets"] = typed("targets", targets)
    return Dataset(tables=tables)


def kpi(cube, owner: str, kpi_id: str, period: str = "2026-10") -> pd.Series:
    k = cube.kpis
    row = k[(k.owner_id == owner) & (k.kpi == kpi_id) & (k.period == period) & k.dim.isna()]
    assert len(row) == 1, f"{owner} {kpi_id} {period}: {len(row)} rows"
    return row.iloc[0]


@pytest.fixture(scope="module")
def cube():
    return compute_cube(_cfg(), company(), "monthly", AS_OF)


def test_lagging_kpis_of_a_rep(cube):
    # R1 in Oct: o1 won at 120 (as of 10-31; the 150 edit is later), o2 lost -> bookings 120, won 1, lost 1
    assert kpi(cube, "R1", "bookings").value == 120
    assert kpi(cube, "R1", "deals_won").value == 1
    assert kpi(cube, "R1", "deals_lost").value == 1
    assert kpi(cube, "R1", "win_rate").value == pytest.approx(50.0)
    assert kpi(cube, "R1", "avg_deal_size").value == pytest.approx(120.0)
    # o1 created 09-01 closed 10-10: 39 days
    assert kpi(cube, "R1", "sales_cycle_days").value == pytest.approx(39.0)
    # win rate on value: 120 / (120 + 50)
    assert kpi(cube, "R1", "win_rate_value").value == pytest.approx(100 * 120 / 170)


def test_rollup_is_own_plus_reports_and_ratios_are_recomputed(cube):
    # M: own o4 300 + R1 120 + R2 200 = 620; won 3, lost 1
    assert kpi(cube, "M", "bookings").value == 620
    assert kpi(cube, "M", "deals_won").value == 3
    assert kpi(cube, "M", "win_rate").value == pytest.approx(75.0)  # not the mean of 50 and 100
    # cycle: (39 + 96 + 14) / 3 ; o3 07-01 -> 10-05 = 96 days, o4 10-01 -> 10-15 = 14 days
    assert kpi(cube, "M", "sales_cycle_days").value == pytest.approx((39 + 96 + 14) / 3)
    assert kpi(cube, "E", "bookings").value == 620


def test_reopened_deal_counts_in_the_month_it_was_won_as_it_stood_then(cube):
    # Sep, as it stood on 09-30: o5 80 (R2) and o9 70 (R1, won 09-20, reopened only on 10-05)
    assert kpi(cube, "R1", "bookings", "2026-09").value == 70
    assert kpi(cube, "M", "bookings", "2026-09").value == 150


def test_empty_period_is_zero_for_counts_and_nan_for_means(cube):
    assert kpi(cube, "R2", "bookings", "2026-08").value == 0
    assert kpi(cube, "R2", "deals_won", "2026-08").value == 0
    assert math.isnan(kpi(cube, "R2", "sales_cycle_days", "2026-08").value)
    assert math.isnan(kpi(cube, "R2", "win_rate", "2026-08").value)  # 0 / 0 is not 0 %


def test_targets_attainment_and_status(cube):
    r1 = kpi(cube, "R1", "quota_attainment")
    assert r1.value == pytest.approx(60.0)  # 120 / 200
    assert r1.status == "red"
    r2 = kpi(cube, "R2", "quota_attainment")
    assert r2.value == pytest.approx(100 * 200 / 150)
    assert r2.status == "green"
    assert kpi(cube, "M", "bookings").target == 500
    # E has no explicit target: rolled up from its only direct report M -> 500
    assert kpi(cube, "E", "bookings").target == 500
    assert kpi(cube, "E", "quota_attainment").value == pytest.approx(100 * 620 / 500)


def test_missing_data_is_not_available_never_zero(cube):
    row = kpi(cube, "R1", "activities")
    assert not row.available
    assert math.isnan(row.value)
    assert row.na_reason == "not available — needs activities"
    gm = kpi(cube, "R1", "gross_margin_pct")
    assert not gm.available and "opportunities.margin" in gm.na_reason


def _with_leads(data: Dataset, with_owner: bool) -> Dataset:
    # three leads in Oct: two by R1 (one converted to o8), one by R2; one in Sep by R2
    leads = pd.DataFrame({"lead_id": ["l1", "l2", "l3", "l4"], "channel": ["web", "web", "event", "web"],
                          "created_date": ["2026-10-03", "2026-10-09", "2026-10-20", "2026-09-12"],
                          "converted_opportunity_id": ["o8", None, None, None]})
    if with_owner:
        leads["owner_id"] = ["R1", "R1", "R2", "R2"]
    return Dataset(tables=data.tables | {"leads": typed("leads", leads)})


def test_leads_without_owner_are_not_available_below_the_top_never_zero():
    c = compute_cube(_cfg(), _with_leads(company(), with_owner=False), "monthly", AS_OF)
    for owner in ("R1", "R2", "M"):
        for kpi_id in ("leads", "lead_conversion_rate"):
            row = kpi(c, owner, kpi_id)
            assert not row.available and math.isnan(row.value), (owner, kpi_id)
            assert row.na_reason == "not available — needs leads.owner_id"
    top = kpi(c, "E", "leads")  # the top's scope holds every lead: 3 in Oct, 1 converted
    assert top.available and top.value == 3
    assert kpi(c, "E", "lead_conversion_rate").value == pytest.approx(100 / 3)


def test_leads_with_owner_are_credited_up_the_hierarchy():
    c = compute_cube(_cfg(), _with_leads(company(), with_owner=True), "monthly", AS_OF)
    assert kpi(c, "R1", "leads").value == 2 and kpi(c, "R1", "leads").available
    assert kpi(c, "R1", "lead_conversion_rate").value == pytest.approx(50.0)
    assert kpi(c, "R2", "leads").value == 1
    assert kpi(c, "M", "leads").value == 3 and kpi(c, "E", "leads").value == 3
    # breakdowns for every period of the trend, not only the closed month: M's leads by channel in Oct and Sep
    k = c.kpis
    by = k[(k.owner_id == "M") & (k.kpi == "leads") & (k.dim == "channel")].set_index(["period", "dim_value"])
    months = by[by.index.get_level_values("period").isin(["2026-09", "2026-10"])]
    assert months["value"].to_dict() == {("2026-10", "web"): 2, ("2026-10", "event"): 1, ("2026-09", "web"): 1}
    assert by.loc[("TTM", "web"), "value"] == 3 and by.loc[("FY2026-YTD", "event"), "value"] == 1


def test_quota_attainment_without_a_target_has_no_target_of_100(cube):
    # R1 and R2 have October targets: 100 (%) is their goal; E's comes from M; nobody has a September target
    assert kpi(cube, "R1", "quota_attainment").target == 100
    sep = kpi(cube, "R1", "quota_attainment", "2026-09")
    assert math.isnan(sep.value) and math.isnan(sep.target)
    c = compute_cube(_cfg(), Dataset(tables={k: v for k, v in company().tables.items() if k != "targets"}),
                     "monthly", AS_OF)
    row = kpi(c, "R1", "quota_attainment")
    assert not row.available and math.isnan(row.target) and "targets" in row.na_reason


def test_forward_look_of_the_quarter(cube):
    # Q = FY2026-Q4 (Oct-Dec); remaining Nov 1 - Dec 31: R1 o6 400 (Nov 20) + o9 70 (Nov 15); o8 closes in Jan
    assert kpi(cube, "R1", "pipeline_open_value", "FY2026-Q4").value == 470
    assert kpi(cube, "M", "pipeline_open_value", "FY2026-Q4").value == 570  # + R2's o7 100


def test_without_history_current_values_are_used():
    cube = compute_cube(_cfg(), company(with_history=False), "monthly", AS_OF)
    # o1 current amount 150; o9 current stage Negotiation -> not won in Sep
    assert kpi(cube, "R1", "bookings").value == 150
    assert kpi(cube, "R1", "bookings", "2026-09").value == 0
    assert any("No opportunity history" in n for n in cube.meta["notes"])


def test_write_and_read_back(cube, tmp_path):
    write_cube(cube, tmp_path)
    back = read_cube(tmp_path)
    assert len(back.kpis) == len(cube.kpis)
    assert set(back.facts.loc[back.facts.opportunity_id == "o6", "scope_ids"].iloc[0]) == {"R1", "M", "E"}
    assert "facts" in cube.encoded  # the facts file came from the bytes encoded while the cube was computed


def test_a_replaced_part_is_written_as_it_is_now_not_as_encoded(tmp_path):
    cube = compute_cube(_cfg(), company(), "monthly", AS_OF)
    cube.facts = cube.facts[cube.facts["owner_id"] == "R2"].reset_index(drop=True)
    write_cube(cube, tmp_path)
    back = read_cube(tmp_path)
    assert set(back.facts["owner_id"]) == {"R2"}
    assert sorted(back.facts["opportunity_id"]) == sorted(cube.facts["opportunity_id"])


def test_one_row_per_scope_kpi_and_period_and_no_orphan_breakdowns(cube):
    k = cube.kpis
    plain = k[k.dim.isna()]
    assert not plain.duplicated(["owner_id", "kpi", "period"]).any()
    assert not (k.dim.isna() & k.dim_value.notna()).any()
    # a breakdown row names its dim: R1's October bookings by lead source are absent (no lead_source data)
    assert k[(k.kpi == "bookings") & (k.dim == "lead_source")].empty


def test_history_rows_in_any_order_give_the_same_numbers():
    data = company()
    h = data.tables["opportunity_history"]
    data.tables["opportunity_history"] = h.iloc[::-1].reset_index(drop=True)  # newest first: sorted by the cube
    cube = compute_cube(_cfg(), data, "monthly", AS_OF)
    assert kpi(cube, "R1", "bookings").value == 120  # o1 at 120 as of 10-31, as with the rows in time order
    assert kpi(cube, "R1", "bookings", "2026-09").value == 70  # o9 won on 09-20, reopened later
    assert kpi(cube, "M", "bookings", "2026-09").value == 150


def _with_activities(data: Dataset, rows: list[tuple[str, str, str]]) -> Dataset:
    act = pd.DataFrame(rows, columns=["owner_id", "date", "type"])
    act.insert(0, "activity_id", [f"x{i}" for i in range(len(act))])
    data.tables["activities"] = typed("activities", act)
    return data


def test_activities_on_the_edges_of_periods_count_in_their_period():
    data = _with_activities(company(), [
        ("R1", "2026-09-30", "call"),      # last day of Sep
        ("R1", "2026-10-01", "meeting"),   # first day of Oct
        ("R2", "2026-10-31", "call"),      # the as-of day, last of Oct
        ("R1", "2025-10-31", "call"),      # the day before the TTM window (2025-11-01 .. 2026-10-31)
        ("R2", "2026-01-01", "Meeting"),   # first day of the fiscal year
    ])
    cube = compute_cube(_cfg(), data, "monthly", AS_OF)
    assert kpi(cube, "R1", "activities", "2026-09").value == 1
    assert kpi(cube, "R1", "activities").value == 1
    assert kpi(cube, "R1", "meetings").value == 1
    assert kpi(cube, "R2", "activities").value == 1
    assert kpi(cube, "M", "activities").value == 2
    assert kpi(cube, "M", "activities", "TTM").value == 4  # all but 2025-10-31
    assert kpi(cube, "M", "activities", "FY2026-YTD").value == 4
    assert kpi(cube, "M", "meetings", "FY2026-YTD").value == 2  # lower(type): 'Meeting' counts
    assert kpi(cube, "E", "activities", "2025-11").value == 0


def test_activities_follow_the_hierarchy_valid_on_their_day():
    # R2 moves from M to E on 2026-10-16 (two owner rows, valid_from / valid_to)
    data = company()
    o = data.tables["owners"]
    moved = o[o["owner_id"] == "R2"].assign(manager_id="E", valid_from=pd.Timestamp("2026-10-16"))
    before = o.assign(valid_to=pd.Series(pd.NaT, index=o.index).mask(o["owner_id"] == "R2",
                                                                      pd.Timestamp("2026-10-15")))
    data.tables["owners"] = typed("owners", pd.concat([before, moved], ignore_index=True))
    data = _with_activities(data, [
        ("R2", "2026-10-15", "call"),   # under M: the last day before the move
        ("R2", "2026-10-16", "call"),   # under E directly: the first day after it
        ("R2", "2026-10-20", "call"),
    ])
    cube = compute_cube(_cfg(), data, "monthly", AS_OF)
    assert kpi(cube, "R2", "activities").value == 3
    assert kpi(cube, "M", "activities").value == 1
    assert kpi(cube, "E", "activities").value == 3
