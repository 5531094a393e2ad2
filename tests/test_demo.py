"""The demo company: shape of the org, the contract tables, consistency of history, and believable mess."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from spm_lib.data.demo import default_end, generate
from spm_lib.domain.contract import CONTRACT
from spm_lib.domain.org import hierarchy_problems

END = date(2025, 9, 30)
AS_OF = pd.Timestamp(END)
EARLY_STAGES = ["Prospecting", "Qualification"]
DUCKDB_TYPES = {"str": "VARCHAR", "float": "DOUBLE", "int": "BIGINT", "date": "DATE", "datetime": "TIMESTAMP",
                "bool": "BOOLEAN"}


def read_tables(path: Path) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {name: con.table(name).df() for name in CONTRACT}


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    generate(path, seed=7, scale=1.0, end=END)
    return path


@pytest.fixture(scope="module")
def t(demo_file: Path) -> dict[str, pd.DataFrame]:
    return read_tables(demo_file)


@pytest.fixture(scope="module")
def open_deals(t: dict[str, pd.DataFrame]) -> pd.DataFrame:
    opps = t["opportunities"]
    return opps[~opps["is_closed"]]


def test_default_end_is_the_last_day_of_the_previous_month() -> None:
    assert default_end(date(2026, 3, 15)) == date(2026, 2, 28)
    assert default_end(date(2024, 3, 1)) == date(2024, 2, 29)
    assert default_end(date(2026, 1, 31)) == date(2025, 12, 31)


def test_same_seed_and_end_give_identical_tables(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.duckdb", tmp_path / "b.duckdb", tmp_path / "c.duckdb"
    counts = generate(a, seed=3, scale=0.3, end=END)
    generate(b, seed=3, scale=0.3, end=END)
    generate(c, seed=4, scale=0.3, end=END)
    ta, tb, tc = read_tables(a), read_tables(b), read_tables(c)
    for name in CONTRACT:
        assert counts[name] == len(ta[name])
        pd.testing.assert_frame_equal(ta[name], tb[name])
    assert not ta["opportunities"]["amount"].equals(tc["opportunities"]["amount"])


def test_the_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "demo.duckdb"
    generate(path, seed=1, scale=0.2, end=END)
    generate(path, seed=1, scale=0.2, end=date(2025, 6, 30))
    opps = read_tables(path)["opportunities"]
    assert opps["created_date"].max() <= pd.Timestamp("2025-06-30")
    assert [p.name for p in path.parent.iterdir()] == ["demo.duckdb"]


def test_every_contract_table_has_the_contract_columns_and_types(demo_file: Path) -> None:
    with duckdb.connect(str(demo_file), read_only=True) as con:
        for name, table in CONTRACT.items():
            described = con.execute(f'DESCRIBE "{name}"').fetchall()
            assert [(row[0], row[1]) for row in described] == [
                (c.name, DUCKDB_TYPES[c.dtype]) for c in table.columns], name
            assert con.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0] > 0, name


def test_org_shape(t: dict[str, pd.DataFrame]) -> None:
    owners = t["owners"]
    levels = owners["level"].value_counts()
    assert levels["executive"] == 1 and levels["director"] == 3 and levels["manager"] == 9
    assert 54 <= levels["rep"] <= 72
    assert hierarchy_problems(owners) == ([], [])
    assert owners.loc[owners["manager_id"].isna(), "owner_id"].tolist() == ["exec-01"]
    level_of = owners.set_index("owner_id")["level"]
    boss_level = owners.dropna(subset=["manager_id"]).assign(boss=lambda d: d["manager_id"].map(level_of))
    expected_boss = {"director": "executive", "manager": "director", "rep": "manager"}
    assert (boss_level["boss"] == boss_level["level"].map(expected_boss)).all()
    assert owners["owner_id"].str.fullmatch(r"exec-\d{2}|dir-\d{2}|mgr-\d{2}|rep-\d{3}").all()
    assert owners["email"].str.fullmatch(r"[a-z]+\.[a-z]+\d*@acme-demo\.example").all()
    assert owners["email"].is_unique
    joined = owners.merge(owners, left_on="manager_id", right_on="owner_id", suffixes=("", "_boss"))
    assert (joined["valid_from_boss"] <= joined["valid_from"]).all()


def test_a_manager_is_also_a_player_coach(t: dict[str, pd.DataFrame]) -> None:
    owners_of_deals = set(t["opportunities"]["owner_id"])
    managers = t["owners"].loc[t["owners"]["level"] == "manager", "owner_id"]
    assert managers.isin(owners_of_deals).any()


def test_stage_names_match_the_default_config(t: dict[str, pd.DataFrame]) -> None:
    opps = t["opportunities"]
    assert set(opps["stage"]) == {*EARLY_STAGES, "Needs analysis", "Proposal", "Negotiation",
                                  "Closed Won", "Closed Lost"}
    assert (opps["is_closed"] == opps["stage"].isin(["Closed Won", "Closed Lost"])).all()
    assert (opps["is_won"] == (opps["stage"] == "Closed Won")).all()


def test_no_data_after_end(t: dict[str, pd.DataFrame]) -> None:
    end_of_day = AS_OF + pd.Timedelta(days=1)
    assert t["opportunities"]["created_date"].max() <= AS_OF
    assert t["opportunities"]["close_date"][t["opportunities"]["is_closed"]].max() <= AS_OF
    assert t["opportunities"]["last_modified_date"].max() < end_of_day
    assert t["opportunity_history"]["changed_at"].max() < end_of_day
    assert t["activities"]["date"].max() <= AS_OF
    assert t["leads"]["created_date"].max() <= AS_OF
    assert t["surveys"]["date"].max() <= AS_OF
    assert t["forecasts"]["submitted_at"].max() <= AS_OF
    assert t["costs"]["period"].max() == "2025-09"


def test_three_fiscal_years_of_bookings(t: dict[str, pd.DataFrame]) -> None:
    won = t["opportunities"][t["opportunities"]["is_won"]]
    assert set(won["close_date"].dt.year) == {2023, 2024, 2025}


def test_opportunities_equal_their_last_history_row(t: dict[str, pd.DataFrame]) -> None:
    hist = t["opportunity_history"].sort_values(["opportunity_id", "changed_at"])
    last = hist.groupby("opportunity_id").tail(1).set_index("opportunity_id")
    opps = t["opportunities"].set_index("opportunity_id")
    assert set(last.index) == set(opps.index)
    opps = opps.loc[last.index]
    assert (opps["stage"] == last["stage"]).all()
    pd.testing.assert_series_equal(opps["amount"], last["amount"], check_names=False)
    pd.testing.assert_series_equal(opps["close_date"], last["close_date"], check_names=False)
    assert (opps["last_modified_date"] >= last["changed_at"]).all()
    first = hist.groupby("opportunity_id").head(1)
    assert (first["stage"] == "Prospecting").all()


def close_date_pushes(hist: pd.DataFrame) -> pd.Series:
    hist = hist.sort_values(["opportunity_id", "changed_at"])
    later = hist["close_date"] > hist.groupby("opportunity_id")["close_date"].shift()
    return later.groupby(hist["opportunity_id"]).sum()


def test_mess_in_the_open_pipeline_is_at_believable_rates(t: dict[str, pd.DataFrame],
                                                           open_deals: pd.DataFrame) -> None:
    o = open_deals
    stale = (AS_OF - o["last_modified_date"]).dt.days >= 60
    past = o["close_date"] < AS_OF
    days_left = (o["close_date"] - AS_OF).dt.days
    early = o["stage"].isin(EARLY_STAGES) & (days_left >= 0) & (days_left <= 30)
    pushed = o["opportunity_id"].map(close_date_pushes(t["opportunity_history"])) >= 3
    missing = o["amount"].isna() | o["close_date"].isna()
    assert 0.03 <= stale.mean() <= 0.07
    assert 0.025 <= past.mean() <= 0.06
    assert 0.03 <= early.mean() <= 0.07
    assert 0.03 <= pushed.mean() <= 0.07
    assert 0.005 <= missing.mean() <= 0.025


def test_a_few_amount_decreases_and_won_deals_without_amount(t: dict[str, pd.DataFrame]) -> None:
    hist = t["opportunity_history"].sort_values(["opportunity_id", "changed_at"])
    lower = hist["amount"] < hist.groupby("opportunity_id")["amount"].shift()
    decreased_share = lower.groupby(hist["opportunity_id"]).any().mean()
    assert 0.01 <= decreased_share <= 0.10
    opps = t["opportunities"]
    assert 3 <= (opps["is_won"] & opps["amount"].isna()).sum() <= 30


def test_weaker_reps_are_messier(t: dict[str, pd.DataFrame], open_deals: pd.DataFrame) -> None:
    opps = t["opportunities"]
    reps = opps[opps["owner_id"].str.startswith("rep-") & opps["is_closed"]]
    win_rate = reps.groupby("owner_id")["is_won"].mean()
    weak = win_rate[win_rate <= win_rate.median()].index
    o = open_deals[open_deals["owner_id"].str.startswith("rep-")]
    stale = (AS_OF - o["last_modified_date"]).dt.days >= 60
    assert stale[o["owner_id"].isin(weak)].mean() > 1.5 * stale[~o["owner_id"].isin(weak)].mean()


def test_crm_hygiene_differs_between_reps(t: dict[str, pd.DataFrame], open_deals: pd.DataFrame) -> None:
    # most reps keep their open pipeline clean (no stale or past-close deal), the sloppiest quarter holds most of
    # the mess, and the clean reps forecast their month better
    o = open_deals[open_deals["owner_id"].str.startswith("rep-")]
    bad = ((AS_OF - o["last_modified_date"]).dt.days >= 60) | (o["close_date"] < AS_OF)
    per_rep = bad.groupby(o["owner_id"]).sum().sort_values(ascending=False)
    assert (per_rep == 0).mean() >= 0.4
    assert per_rep.iloc[: len(per_rep) // 4].sum() >= 0.7 * per_rep.sum()
    opps, fc = t["opportunities"], t["forecasts"]
    won = opps[opps["is_won"] & opps["owner_id"].str.startswith("rep-")]
    booked = won.groupby([won["owner_id"], won["close_date"].dt.strftime("%Y-%m").rename("period")])["amount"].sum()
    year = fc[fc["owner_id"].str.startswith("rep-") & fc["period"].between("2024-10", "2025-09")]
    f = year.set_index(["owner_id", "period"])["amount"]
    deviation = ((booked.reindex(f.index).fillna(0) - f) / f).abs().groupby(level="owner_id").median()
    clean = deviation.index.isin(per_rep.index[per_rep == 0])
    assert deviation[clean].median() < 0.75 * deviation[~clean].median()


def test_reps_differ_in_skill(t: dict[str, pd.DataFrame]) -> None:
    opps = t["opportunities"]
    closed = opps[opps["owner_id"].str.startswith("rep-") & opps["is_closed"]]
    win_rate = closed.groupby("owner_id")["is_won"].mean()
    assert win_rate.max() >= 2 * win_rate.min()
    assert 0.10 <= win_rate.min() <= 0.22 and 0.38 <= win_rate.max() <= 0.55


def test_q4_is_strong_and_summer_weak(t: dict[str, pd.DataFrame]) -> None:
    won = t["opportunities"][t["opportunities"]["is_won"]]
    for year in (2023, 2024):
        in_year = won[won["close_date"].dt.year == year]
        by_quarter = in_year.groupby(in_year["close_date"].dt.quarter)["amount"].sum()
        assert by_quarter[4] > 1.3 * by_quarter[3]


def test_amounts_lists_and_margins(t: dict[str, pd.DataFrame]) -> None:
    opps = t["opportunities"].dropna(subset=["amount"])
    assert (opps["list_amount"] >= opps["amount"]).all()
    assert (1 - opps["amount"] / opps["list_amount"]).max() <= 0.26
    assert ((opps["margin"] > 0) & (opps["margin"] < opps["amount"])).all()
    assert opps["amount"].round(2).eq((opps["margin"] + opps["cost"]).round(2)).all()
    by_segment = opps.merge(t["accounts"], on="account_id").groupby("segment")["amount"].median()
    assert by_segment["SMB"] < by_segment["Mid-Market"] < by_segment["Enterprise"]
    assert opps["name"].str.fullmatch(r".+ – .+ \d+").all()


def test_sales_cycle_of_won_deals(t: dict[str, pd.DataFrame]) -> None:
    won = t["opportunities"][t["opportunities"]["is_won"]]
    days = (won["close_date"] - won["created_date"]).dt.days
    assert days.min() >= 29 and days.max() <= 151


def test_targets_add_up(t: dict[str, pd.DataFrame]) -> None:
    tg = t["targets"]
    bookings = tg[tg["metric"] == "bookings"].set_index(["owner_id", "period"])["value"]
    for owner in ["exec-01", "dir-02", "mgr-03", "rep-001", "rep-017"]:
        months = [bookings[(owner, f"2024-{m:02d}")] for m in range(7, 10)]
        assert bookings[(owner, "FY2024-Q3")] == sum(months)
        quarters = [bookings[(owner, f"FY2024-Q{q}")] for q in range(1, 5)]
        assert bookings[(owner, "FY2024")] == sum(quarters)
    owners = t["owners"]
    team = owners.loc[owners["manager_id"] == "mgr-02", "owner_id"]
    team_sum = bookings.loc[list(team)].xs("FY2025", level="period").sum()
    assert team_sum <= bookings[("mgr-02", "FY2025")] <= 1.05 * team_sum
    assert {"opps_created", "activities"} <= set(tg["metric"])


def test_forecasts_at_the_start_of_every_month(t: dict[str, pd.DataFrame]) -> None:
    fc = t["forecasts"]
    sellers = t["owners"].loc[t["owners"]["level"].isin(["rep", "manager"]), "owner_id"]
    assert set(sellers) <= set(fc["owner_id"])
    assert (fc["submitted_at"].dt.strftime("%Y-%m") == fc["period"]).all()
    assert (fc["submitted_at"].dt.day == 1).all() and (fc["submitted_at"].dt.hour == 9).all()
    assert fc.groupby("owner_id")["period"].nunique().eq(33).all()   # Jan 2023 .. Sep 2025


def test_leads_convert_differently_by_channel(t: dict[str, pd.DataFrame]) -> None:
    leads = t["leads"]
    rate = leads["converted_opportunity_id"].notna().groupby(leads["channel"]).mean()
    assert set(rate.index) == {"paid", "outbound", "referral", "inbound", "events"}
    assert rate["referral"] > 1.5 * rate["inbound"] > 2 * rate["outbound"]
    converted = leads["converted_opportunity_id"].dropna()
    assert converted.isin(t["opportunities"]["opportunity_id"]).all()


def test_activities_accounts_surveys_costs(t: dict[str, pd.DataFrame]) -> None:
    act = t["activities"]
    assert set(act["type"]) == {"call", "email", "meeting", "demo"}
    assert set(act["mode"]) == {"remote", "in_person"}
    assert 0.5 <= act["opportunity_id"].notna().mean() <= 0.95
    acc = t["accounts"]
    assert set(acc["segment"]) == {"SMB", "Mid-Market", "Enterprise"}
    assert (acc["churned_on"].dropna() > acc.loc[acc["churned_on"].notna(), "customer_since"]).all()
    assert t["surveys"]["score"].between(0, 10).all()
    costs = t["costs"]
    assert costs["period"].str.fullmatch(r"\d{4}-\d{2}").all() and (costs["amount"] > 0).all()
