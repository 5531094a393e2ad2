"""Goal decomposition: the driver tree from a bookings target down to deals, opportunities and leads per month."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from spm_lib.config import Config, SourceConfig
from spm_lib.domain.contract import CONTRACT, PANDAS_DTYPES, Dataset
from spm_lib.engine.decomposition import decompose, max_discount, what_if

# A hand-made case: Q ends 2026-06-30, as-of 2026-04-30, two months (May, June) remain.
INPUTS = {
    "owner_id": "R1", "period": "FY2026-Q2", "q_end": "2026-06-30", "as_of": "2026-04-30",
    "months_remaining": 2, "target": 100_000.0, "bookings_to_date": 40_000.0, "deals_won_to_date": 3,
    "pipeline_open_value": 90_000.0, "avg_deal_size": 10_000.0, "win_rate": 25.0, "lead_conversion": 10.0,
    "sales_cycle_days": 30, "deals_won_ttm": 36, "opps_created_ttm": 120, "leads_ttm": 1200,
    "margin_target": 42.0, "gross_margin": 40.0, "discount": 10.0, "cos_target": 10.0, "sales_cost": 4_000.0,
}


def _node(tree: pd.DataFrame, node: str, owner: str = "R1") -> pd.Series:
    rows = tree[(tree["node"] == node) & (tree["owner_id"] == owner)]
    assert len(rows) == 1, f"{owner} {node}: {len(rows)} rows"
    return rows.iloc[0]


# ---------------------------------------------------------------- the maths, on a hand-made case
def test_driver_tree_by_hand() -> None:
    tree = what_if(INPUTS)
    remaining = _node(tree, "remaining_target")
    assert remaining["required"] == 60_000.0  # 100 000 − 40 000
    assert remaining["actual"] == 90_000.0 and remaining["status"] == "green"  # pipeline covers it 1.5×
    assert remaining["parent"] == "bookings_target"
    deals = _node(tree, "deals_needed")
    assert deals["required"] == 6.0 and deals["actual"] == 3.0  # 60 000 / 10 000
    assert _node(tree, "deals_per_month")["required"] == 3.0  # 6 over 2 months
    assert _node(tree, "deals_per_month")["actual"] == 3.0  # 36 won in 12 months
    opps = _node(tree, "opps_per_month")
    assert opps["required"] == 12.0 and opps["actual"] == 10.0  # 3 / 25 %; 120 created in 12 months
    assert opps["attainment"] == pytest.approx(10 / 12) and opps["status"] == "red"
    leads = _node(tree, "leads_per_month")
    assert leads["required"] == pytest.approx(120.0) and leads["actual"] == 100.0  # 12 / 10 %
    deadline = _node(tree, "opp_creation_deadline")
    assert deadline["deadline"] == pd.Timestamp("2026-05-31")  # 30 June − 30 days
    assert deadline["required"] == 31.0  # days from 30 April
    cost = _node(tree, "max_sales_cost")
    assert cost["required"] == 10_000.0 and cost["status"] == "green"  # 10 % × 100 000; 4 000 spent
    assert tree["na_reason"].isna().all()


def test_deals_needed_round_up() -> None:
    tree = what_if({**INPUTS, "bookings_to_date": 41_000.0})  # 59 000 / 10 000 = 5.9 deals
    assert _node(tree, "deals_needed")["required"] == 6.0


def test_max_discount_meets_the_margin_target_by_hand() -> None:
    # list price 100, historical margin 40 % at a 10 % discount: price 90, cost 54 (margin at list 46 %)
    d = max_discount(42.0, 40.0, 10.0)
    assert d == pytest.approx(100 * (1 - 54 / 58))  # a price of 100·(1 − d) = 54 / 0.58 gives a 42 % margin
    price = 100 * (1 - d / 100)
    assert 1 - 54 / price == pytest.approx(0.42)
    assert max_discount(46.0, 40.0, 10.0) == pytest.approx(0.0)  # the margin at list price: no discount left
    assert max_discount(50.0, 40.0, 10.0) < 0  # unreachable even at list price
    node = _node(what_if(INPUTS), "max_discount")
    assert node["required"] == pytest.approx(d) and node["actual"] == 10.0
    assert node["status"] == "red"  # discounting 10 % against a 6.9 % maximum


def test_missing_inputs_give_nan_with_a_reason_never_zero() -> None:
    tree = what_if({**INPUTS, "lead_conversion": None, "na_lead_conversion": "not available — needs leads",
                    "margin_target": None})
    leads = _node(tree, "leads_per_month")
    assert math.isnan(leads["required"]) and leads["na_reason"] == "not available — needs leads"
    assert _node(tree, "opps_per_month")["required"] == 12.0  # the rest of the tree still computes
    assert math.isnan(_node(tree, "max_discount")["required"])
    assert "gross_margin_pct target" in _node(tree, "max_discount")["na_reason"]
    zero = what_if({**INPUTS, "win_rate": 0.0})
    assert math.isnan(_node(zero, "opps_per_month")["required"])
    assert "win rate" in _node(zero, "opps_per_month")["na_reason"]
    assert math.isnan(_node(zero, "leads_per_month")["required"])  # below a missing node: missing too


def test_what_if_changes_only_what_it_should() -> None:
    base = what_if(INPUTS).set_index("node")
    faster = what_if(INPUTS, win_rate=50.0).set_index("node")
    assert faster.loc["opps_per_month", "required"] == 6.0  # 3 / 50 %
    assert faster.loc["leads_per_month", "required"] == pytest.approx(60.0)
    unchanged = ["bookings_target", "remaining_target", "deals_needed", "deals_per_month", "opp_creation_deadline",
                 "max_discount", "max_sales_cost"]
    pd.testing.assert_series_equal(faster.loc[unchanged, "required"], base.loc[unchanged, "required"])
    bigger = what_if(INPUTS, avg_deal_size=20_000.0).set_index("node")
    assert bigger.loc["deals_needed", "required"] == 3.0  # 60 000 / 20 000
    assert bigger.loc["opps_per_month", "required"] == 6.0  # 1.5 / 25 %
    slower = what_if(INPUTS, sales_cycle_days=60).set_index("node")
    assert slower.loc["opp_creation_deadline", "deadline"] == pd.Timestamp("2026-05-01")
    assert (slower.drop(index="opp_creation_deadline")["required"]
            .equals(base.drop(index="opp_creation_deadline")["required"]))
    better_leads = what_if(INPUTS, lead_conversion=20.0).set_index("node")
    assert better_leads.loc["leads_per_month", "required"] == pytest.approx(60.0)
    assert what_if(INPUTS).equals(what_if(INPUTS))  # the inputs are not modified


# ---------------------------------------------------------------- from the cube's context
def _table(name: str, rows: list[dict[str, object]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in df.columns:
        df[col] = df[col].astype(PANDAS_DTYPES[CONTRACT[name].column(col).dtype])
    return df


def _ctx(tmp_path: Path):  # type: ignore[no-untyped-def]
    """E → M (player-coach) → R1, R2; deals won W1 (R1) and W2 (M) in April, W3 (R2) in March."""
    from spm_lib.engine.context import build_context

    owners = _table("owners", [
        {"owner_id": "E", "manager_id": None, "level": "executive"},
        {"owner_id": "M", "manager_id": "E", "level": "manager"},
        {"owner_id": "R1", "manager_id": "M", "level": "rep"},
        {"owner_id": "R2", "manager_id": "M", "level": "rep"},
    ])
    deals = [("W1", "R1", "Closed Won", 3000.0, "2026-04-10"), ("W2", "M", "Closed Won", 2000.0, "2026-04-20"),
             ("W3", "R2", "Closed Won", 1000.0, "2026-03-15"), ("P1", "R1", "Proposal", 5000.0, "2026-05-20")]
    opps = _table("opportunities", [
        {"opportunity_id": i, "owner_id": o, "stage": s, "amount": a, "created_date": pd.Timestamp("2026-02-01"),
         "close_date": pd.Timestamp(c), "is_closed": s.startswith("Closed"), "is_won": s == "Closed Won"}
        for i, o, s, a, c in deals])
    cfg = Config(root=tmp_path, source=SourceConfig(kind="folder", path="data"))
    return build_context(cfg, Dataset(tables={"owners": owners, "opportunities": opps}), "monthly",
                         date(2026, 4, 30))


def _kpis(rows: list[tuple[str, str, str, float, str | None]]) -> pd.DataFrame:
    return pd.DataFrame({"owner_id": [r[0] for r in rows], "period": [r[1] for r in rows],
                         "kpi": [r[2] for r in rows], "dim": None, "dim_value": None,
                         "value": [r[3] for r in rows], "available": [r[4] is None for r in rows],
                         "na_reason": [r[4] for r in rows]})


def test_decompose_reads_targets_rates_and_actuals_per_scope(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert ctx.windows.forward.label == "FY2026-Q2" and ctx.windows.months_remaining == 2
    no_leads = "not available — needs leads"
    kpis = _kpis([
        ("R1", "TTM", "avg_deal_size", 2000.0, None), ("R1", "TTM", "win_rate", 40.0, None),
        ("R1", "TTM", "lead_conversion_rate", 20.0, None), ("R1", "TTM", "sales_cycle_days", 45.0, None),
        ("R1", "TTM", "deals_won", 24.0, None), ("R1", "TTM", "opps_created", 60.0, None),
        ("R1", "TTM", "leads", 240.0, None),
        ("R1", "FY2026-Q2", "bookings_to_date_q", 3000.0, None),
        ("R1", "FY2026-Q2", "pipeline_open_value", 5000.0, None),
        ("M", "TTM", "avg_deal_size", 2500.0, None), ("M", "TTM", "win_rate", 50.0, None),
        ("M", "TTM", "lead_conversion_rate", float("nan"), no_leads), ("M", "TTM", "leads", float("nan"), no_leads),
        ("M", "FY2026-Q2", "bookings_to_date_q", 5000.0, None),
    ])
    targets = pd.DataFrame({"owner_id": ["R1", "M", "E"], "period": "FY2026-Q2", "metric": "bookings",
                            "target": [10_000.0, 25_000.0, 25_000.0], "source": "explicit"})
    tree = decompose(ctx, kpis, targets)
    assert set(tree["owner_id"]) == {"E", "M", "R1", "R2"}
    assert (tree["period"] == "FY2026-Q2").all()
    # R1: 10 000 − 3 000 = 7 000 → ceil(7 000 / 2 000) = 4 deals, 2 a month, 5 opportunities, 25 leads a month
    assert _node(tree, "deals_needed")["required"] == 4.0
    assert _node(tree, "deals_needed")["actual"] == 1.0  # W1 won on 10 April
    assert _node(tree, "deals_per_month")[["required", "actual"]].tolist() == [2.0, 2.0]
    assert _node(tree, "opps_per_month")[["required", "actual"]].tolist() == [5.0, 5.0]
    assert _node(tree, "leads_per_month")[["required", "actual", "status"]].tolist() == [25.0, 20.0, "red"]
    assert _node(tree, "opp_creation_deadline")["deadline"] == pd.Timestamp("2026-05-16")  # 30 June − 45 days
    # M (player-coach): her own W2 and R1's W1 count to date; no lead data → that node is NaN with the reason
    assert _node(tree, "deals_needed", "M")[["required", "actual"]].tolist() == [8.0, 2.0]  # 20 000 / 2 500
    assert _node(tree, "opps_per_month", "M")["required"] == 8.0  # 4 a month / 50 %
    leads_m = _node(tree, "leads_per_month", "M")
    assert math.isnan(leads_m["required"]) and leads_m["na_reason"] == no_leads
    # R2 has no target: every node exists, NaN, saying why; bookings to date come from the deals (none in Q)
    r2 = tree[tree["owner_id"] == "R2"]
    assert len(r2) == len(tree[tree["owner_id"] == "R1"])
    assert r2["required"].isna().all()
    assert _node(tree, "bookings_target", "R2")["na_reason"] == "no bookings target for FY2026-Q2"
    assert _node(tree, "bookings_target", "R2")["actual"] == 0.0
    # E has a target but no rates in the frame
    assert "average deal size" in _node(tree, "deals_needed", "E")["na_reason"]
    assert _node(tree, "remaining_target", "E")["required"] == 20_000.0  # 25 000 − (3 000 + 2 000) from the deals
