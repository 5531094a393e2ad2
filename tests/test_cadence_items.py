"""The cadence's own item per level (issue 15, item 5): push lists per rep and per team, the quarterly shares of
the trailing twelve months, the annual target split and what each session decides; values worked out by hand."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spm_lib.domain.contract import Dataset, typed
from spm_lib.engine.cube import compute_cube
from spm_lib.engine.priorities import team_year
from spm_lib.engine.push import push_by_report, push_list, report_of
from spm_lib.report.core import CADENCE_FOCUS, Report, decides
from tests.test_cube import AS_OF, _cfg, company

# director D <- managers M1 (player-coach), M2; M1 <- reps R1, R2; M2 <- reps R3, R4
OWNERS = pd.DataFrame({"owner_id": ["D", "M1", "M2", "R1", "R2", "R3", "R4"],
                       "manager_id": [None, "D", "D", "M1", "M1", "M2", "M2"],
                       "name": ["Dora", "Mona", "Mark", "Rita", "Rob", "Ray", "Rose"],
                       "level": ["director", "manager", "manager", "rep", "rep", "rep", "rep"]})
ANCESTORS = {"D": ["D"], "M1": ["M1", "D"], "M2": ["M2", "D"], "R1": ["R1", "M1", "D"], "R2": ["R2", "M1", "D"],
             "R3": ["R3", "M2", "D"], "R4": ["R4", "M2", "D"]}
# id, owner, stage, amount, close date, last modified: as of 2026-10-31 the forward period is FY2026-Q4 (to 12-31)
DEALS = [
    ("d1", "R1", "Proposal", 300.0, "2026-11-20", "2026-10-25"),
    ("d2", "R1", "Negotiation", 200.0, "2026-12-15", "2026-10-25"),
    ("d3", "R2", "Prospecting", 100.0, "2026-12-01", "2026-10-25"),
    ("d4", "R3", "Negotiation", 400.0, "2026-11-10", "2026-10-25"),
    ("d5", "R4", "Proposal", 90.0, "2026-12-20", "2026-07-01"),     # no update for 122 days: dead, left out
    ("d6", "R4", "Proposal", 60.0, "2027-02-01", "2026-10-25"),     # closes after the forward period
    ("d7", "R3", "Closed Won", 500.0, "2026-10-15", "2026-10-15"),  # closed
    ("d8", "M1", "Qualification", 50.0, "2026-11-30", "2026-10-25"),  # the player-coach's own deal
]
FIRST, LAST = pd.Timestamp("2026-11-01"), pd.Timestamp("2026-12-31")
PROBS = pd.DataFrame({"stage": ["Prospecting", "Qualification", "Proposal", "Negotiation"],
                      "probability": [0.05, 0.10, 0.40, 0.60]})


def _facts() -> pd.DataFrame:
    df = pd.DataFrame(DEALS, columns=["opportunity_id", "owner_id", "stage", "amount", "close_date",
                                      "last_modified_date"])
    df["name"] = "Deal " + df["opportunity_id"]
    df["close_date"] = pd.to_datetime(df["close_date"])
    df["last_modified_date"] = pd.to_datetime(df["last_modified_date"])
    df["is_closed"] = df["stage"].str.startswith("Closed")
    df["is_won"] = df["stage"] == "Closed Won"
    df["scope_ids"] = [np.array(ANCESTORS[o], dtype=object) for o in df["owner_id"]]
    return df


def _reports(manager: str) -> pd.DataFrame:
    return OWNERS[OWNERS["manager_id"] == manager][["owner_id", "name"]]


def test_push_list_keeps_the_deals_that_can_still_close_largest_first() -> None:
    trust_rows = pd.DataFrame({"check": ["opps_stale_60d"], "opportunity_id": ["d5"]})
    push = push_list(_facts(), trust_rows, PROBS, FIRST, LAST)
    assert push.deals["opportunity_id"].tolist() == ["d4", "d1", "d2", "d3", "d8"]  # d6 later, d7 closed
    assert push.dead["opportunity_id"].tolist() == ["d5"]
    # weighted: 400 x 0.6, 300 x 0.4, 200 x 0.6, 100 x 0.05, 50 x 0.1
    assert push.deals["weighted"].tolist() == pytest.approx([240.0, 120.0, 120.0, 5.0, 5.0])
    facts = _facts().astype({"stage": "string[pyarrow]"})  # as read from Parquet
    none = push_list(facts, trust_rows, PROBS, pd.Timestamp("2027-06-01"), pd.Timestamp("2027-06-30"))
    assert none.deals.empty and none.dead.empty  # a window without deals (a week) is empty, not an error


def test_push_per_team_for_a_director_and_per_rep_for_a_manager() -> None:
    deals = push_list(_facts(), pd.DataFrame({"check": ["opps_stale_60d"], "opportunity_id": ["d5"]}), PROBS,
                      FIRST, LAST).deals
    assert report_of(deals, "D", ["M1", "M2"]).tolist() == ["M2", "M1", "M1", "M1", "M1"]
    teams = push_by_report(deals, "D", "Dora", _reports("D")).set_index("owner_id")
    # M1: d1 300 + d2 200 + d3 100 + d8 50 (Mona's own deal, in her team) = 650, weighted 120 + 120 + 5 + 5 = 250
    # M2: d4 400, weighted 240 (d5 is dead); most value first; D owns no deal: no "own deals" row
    assert teams.index.tolist() == ["M1", "M2"]
    assert teams.loc["M1", "deals"] == 4 and teams.loc["M1", "value"] == 650.0
    assert teams.loc["M1", "weighted"] == pytest.approx(250.0)
    assert teams.loc["M1", "largest"] == ["d1", "d2", "d3", "d8"]
    assert teams.loc["M2", "deals"] == 1 and teams.loc["M2", "value"] == 400.0
    m1 = push_by_report(deals[report_of(deals, "D", ["M1", "M2"]) == "M1"], "M1", "Mona", _reports("M1"))
    assert m1[["name", "deals", "value"]].values.tolist() == [
        ["Rita", 2, 500.0], ["Rob", 1, 100.0], ["Mona (own deals)", 1, 50.0]]
    m2 = push_by_report(deals[report_of(deals, "D", ["M1", "M2"]) == "M2"], "M2", "Mark", _reports("M2"))
    assert m2[["name", "deals", "value"]].values.tolist() == [["Ray", 1, 400.0], ["Rose", 0, 0.0]]


# ---------------------------------------------------------------- the sections on a computed cube
def _org_data() -> Dataset:
    o = pd.DataFrame(DEALS, columns=["opportunity_id", "owner_id", "stage", "amount", "close_date",
                                     "last_modified_date"])
    o["created_date"] = "2026-09-01"
    o["account_id"] = ["a" + i[1:] for i in o["opportunity_id"]]
    o["name"] = "Deal " + o["opportunity_id"]
    return Dataset(tables={"owners": typed("owners", OWNERS.copy()), "opportunities": typed("opportunities", o)})


@pytest.fixture(scope="module")
def org_cube():
    c = compute_cube(_cfg(), _org_data(), "monthly", AS_OF)
    c.meta["currency"] = "EUR"
    return c


def _text(html: object) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", str(html)))


def test_a_director_gets_teams_and_their_largest_deals(org_cube) -> None:
    html = str(Report(org_cube, "D", Path(".")).deals_to_push())
    text = _text(html)
    # 650 + 400 = 1,050, shown compact; weighted by the stages' win probabilities (config/stages.yml, no history
    # to calibrate on): 240 + 120 + 120 + 5 + 5
    assert "5 open deals worth 1.1k € (weighted by win probability 490 €)" in text
    assert "Per team" in html and "The 5 largest deals across the teams" in html
    assert "Mona 4 650 €" in text and "Mark 1 400 €" in text  # team, deals to push, value
    assert "Deal d1 (300 €); Deal d2 (200 €)" in text  # the team's two largest, named
    assert "Deal d4 Mark Ray Negotiation 400 €" in text  # deal, team, owner
    assert "d5" not in html and "1 deal closing in FY2026-Q4 (90 €) is left out" in text


def test_a_manager_gets_each_reps_deals_under_a_subtotal(org_cube) -> None:
    text = _text(Report(org_cube, "M1", Path(".")).deals_to_push(per_report=1))
    assert "Rita: 2 deals, 500 € (weighted" in text and "the 1 largest" in text
    assert text.index("Rita: 2 deals") < text.index("Deal d1") < text.index("Rob: 1 deal, 100 €")
    assert "Deal d2" not in text  # Rita's second deal: only her largest is listed, the subtotal counts both
    assert "Mona (own deals): 1 deal, 50 €" in text
    m2 = _text(Report(org_cube, "M2", Path(".")).deals_to_push())
    assert "Ray: 1 deal, 400 €" in m2 and "No deal to push in FY2026-Q4: Rose." in m2


def _q4_cube():
    """test_cube's company with FY2026-Q4 bookings targets: R1 800, R2 1,200, M 2,400."""
    data = company()
    extra = typed("targets", pd.DataFrame({"owner_id": ["R1", "R2", "M"], "period": ["FY2026-Q4"] * 3,
                                           "metric": ["bookings"] * 3, "value": [800.0, 1200.0, 2400.0]}))
    data.tables["targets"] = pd.concat([data.tables["targets"], extra], ignore_index=True)
    c = compute_cube(_cfg(), data, "monthly", AS_OF)
    c.meta["currency"] = "EUR"
    return c


def test_each_reps_subtotal_says_how_far_the_rep_is_expected_from_target() -> None:
    text = _text(Report(_q4_cube(), "M", Path(".")).deals_to_push())
    # R1: 120 booked in Q4 + o6 400 x 0.4 + o9 70 x 0.6 = 322 expected of 800: 478 short;
    # R2: 200 booked + o7 100 x 0.6 = 260 of 1,200: 940 short (stage weighting: no history to calibrate on)
    assert "Rita: 2 deals, 470 € (weighted 202 €); expected 478 € short of the FY2026-Q4 target" in text
    assert "Rob: 1 deal, 100 € (weighted 60 €); expected 940 € short of the FY2026-Q4 target" in text
    e = _text(Report(_q4_cube(), "E", Path(".")).deals_to_push())
    # E's one team, M: o6, o9, o7 = 570, weighted 262; expected 620 + 262 = 882 of 2,400: 1,518 short
    assert "Max 3 570 € 262 € 1.5k € short" in e


def test_a_rep_gets_their_deals_without_an_owner_column(org_cube) -> None:
    html = str(Report(org_cube, "R1", Path(".")).deals_to_push())
    assert "2 open deals worth 500 €" in _text(html) and ">Owner<" not in html
    assert _text(html).index("Deal d1") < _text(html).index("Deal d2")


def test_the_quarterly_shares_of_the_trailing_twelve_months_come_from_the_cube() -> None:
    data = company()
    data.tables["opportunities"]["product"] = ["A", "B", "A", "B", "A", "A", "B", "A", "B"]
    c = compute_cube(_cfg(), data, "monthly", AS_OF)
    c.meta["currency"] = "EUR"
    text = _text(Report(c, "M", Path(".")).priorities())
    # October (as of 10-31): o1 R1 120 (A), o3 R2 200 (A), o4 M 300 (B): A 320, B 300 of 620 -> 51.6 %, 48.4 %
    # trailing twelve months: also o5 R2 80 (A, Sep); o9 (won in Sep, reopened 10-05) no longer counts:
    # A 400, B 300 of 700 -> 57.1 %, 42.9 %; shifts -5.5 and +5.5 points
    assert "A 320 € 400 € 52 % 57 % −5.5" in text and "B 300 € 300 € 48 % 43 % +5.5" in text
    assert "A lost most: 5.5 points (52 % of bookings against 57 %); B gained most: 5.5 points" in text
    # direct reports: R1 120, R2 200 in October (37.5 %, 62.5 %); TTM R1 120, R2 280 (30 %, 70 %)
    assert "Rita 120 € 120 € 38 % 30 % +7.5" in text and "Rob 200 € 280 € 62 % 70 % −7.5" in text
    assert "—" not in text.split("Resources")[0]  # every share and shift filled


def test_next_years_target_split_and_productivity_by_hand() -> None:
    owners = OWNERS
    bookings = {"M1": pd.Series({"value": 800.0, "attainment": 0.8}),
                "M2": pd.Series({"value": 400.0, "attainment": 1.0})}
    df = team_year(owners, bookings, [("M1", "Mona"), ("M2", "Mark")], {"M1": 1000.0, "M2": 600.0}
                   ).set_index("name")
    # two reps each; targets 1000 and 600 of 1600: 62.5 % and 37.5 %; growth +25 % and +50 %; 500 and 300 per rep
    assert df.loc["Mona", "share_next"] == 62.5 and df.loc["Mark", "share_next"] == 37.5
    assert df.loc["Mona", "growth"] == pytest.approx(25.0) and df.loc["Mark", "growth"] == pytest.approx(50.0)
    assert df.loc["Mona", "per_rep_next"] == 500.0 and df.loc["Mona", "per_rep"] == 400.0
    alone = team_year(owners, bookings, [("M1", "Mona"), ("M2", "Mark")], {"M1": 1000.0}).set_index("name")
    assert alone.loc["Mona", "share_next"] == 100.0 and math.isnan(alone.loc["Mark", "target_next"])
    assert "target_next" not in team_year(owners, bookings, [("M1", "Mona")]).columns  # no targets: no split


def test_the_annual_item_puts_the_driver_tree_and_the_target_split_up_front(org_cube) -> None:
    annual = str(Report(org_cube, "D", Path(".")).targets_and_structure())
    # no bookings target at all in this company: no split, and the report says so
    assert "No FY2026-Q4 bookings target in the targets table yet" in annual and "target split" not in annual
    m = Report(_q4_cube(), "M", Path("."))
    m.cadence = "annual"  # the item of an annual session, on this small monthly cube: next period FY2026-Q4
    m.currency = "EUR"
    html = str(m.targets_and_structure())
    text = _text(html)
    # M's target 2,400 against 620 booked in the closed period: +287 %
    assert text.startswith(" FY2026-Q4 asks for 2.4k € of bookings, +287 % on 2026-10 (620 €)")
    assert "Remaining target" in text and 'id="fig-m-drivers' in html  # the driver tree, up front
    assert "Goal decomposition" not in str(m.below_the_line())  # and not a second time below the line
    # one rep each; R1: 120 booked of October's 200 (60 %), target 800 (40 % of 2,000, +567 %); R2: 200 of 150
    # (133 %), target 1,200 (60 %, +500 %)
    assert "The FY2026-Q4 target split" in text and text.index("target split") < text.index("Remaining target")
    assert "Rita 800 € 40 % +567 % 800 €" in text and "Rob 1.2k € 60 % +500 % 1.2k €" in text
    assert "Rita 1 120 € 60 % 120 €" in text and "Rob 1 200 € 133 % 200 €" in text  # the year, per executive


def test_each_level_and_cadence_decides_something_of_its_own() -> None:
    wordings = [decides(level, cadence) for cadence in CADENCE_FOCUS for level in CADENCE_FOCUS[cadence]]
    assert len(wordings) == 16 and len(set(wordings)) == 16
    assert "deals" in decides("rep", "monthly") and "activity" in decides("rep", "monthly")
    assert "resources across teams" in decides("director", "quarterly")
    assert decides("someone", "monthly") == decides("manager", "monthly")  # an unknown level reads as a manager's
