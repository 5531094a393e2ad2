"""The owner hierarchy: scopes, the ancestor map the cube joins through, team moves, bad hierarchies."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from spm_lib.domain.org import Org, hierarchy_problems
from spm_lib.errors import OrgError

NaT = pd.NaT


def owners(rows: list[tuple]) -> pd.DataFrame:
    """An owners table from (owner_id, manager_id, level[, valid_from, valid_to]) tuples."""
    cols = ["owner_id", "manager_id", "level", "valid_from", "valid_to"][: len(rows[0])]
    df = pd.DataFrame(rows, columns=cols).astype({"owner_id": "string", "manager_id": "string", "level": "string"})
    for c in ("valid_from", "valid_to"):
        if c in df:
            df[c] = pd.to_datetime(df[c])
    return df


# exec E; manager M1 (a player-coach with deals of their own) over reps R1, R2; manager M2 over rep R3
TREE = owners([("E", None, "executive"), ("M1", "E", "manager"), ("M2", "E", "manager"),
               ("R1", "M1", "rep"), ("R2", "M1", "rep"), ("R3", "M2", "rep")])


def totals_per_scope(org: Org, deals: pd.DataFrame) -> dict[str, float]:
    """Sum deal amounts into every scope they count in, on the hierarchy valid on each deal's close date."""
    m = deals.merge(org.ancestors(), on="owner_id")
    valid = ((m["valid_from"].isna() | (m["close_date"] >= m["valid_from"]))
             & (m["valid_to"].isna() | (m["close_date"] <= m["valid_to"])))
    return m[valid].groupby("scope_id")["amount"].sum().to_dict()


def test_scopes_include_a_player_coach_managers_own_deals() -> None:
    deals = pd.DataFrame({"owner_id": ["R1", "R2", "M1", "R3"], "amount": [100.0, 50.0, 30.0, 20.0],
                          "close_date": pd.to_datetime(["2026-03-01"] * 4)})
    # M1 = own 30 + R1 100 + R2 50; E = everything
    assert totals_per_scope(Org.from_owners(TREE), deals) == {
        "R1": 100.0, "R2": 50.0, "M1": 180.0, "R3": 20.0, "M2": 20.0, "E": 200.0}


def test_ancestor_rows_one_per_owner_and_scope_itself_included() -> None:
    small = owners([("E", None, "executive"), ("M1", "E", "manager"), ("R1", "M1", "rep")])
    got = Org.from_owners(small).ancestors()
    assert list(got.columns) == ["owner_id", "scope_id", "distance", "valid_from", "valid_to"]
    rows = sorted(zip(got["owner_id"], got["scope_id"], got["distance"], strict=True))
    assert rows == [("E", "E", 0), ("M1", "E", 1), ("M1", "M1", 0), ("R1", "E", 2), ("R1", "M1", 1), ("R1", "R1", 0)]
    assert got["valid_from"].isna().all() and got["valid_to"].isna().all()


def test_tree_navigation() -> None:
    org = Org.from_owners(TREE)
    assert org.direct_reports("M1") == ["R1", "R2"]
    assert org.direct_reports("R1") == []
    assert org.subtree("M1") == ["M1", "R1", "R2"]
    assert org.subtree("E") == ["E", "M1", "M2", "R1", "R2", "R3"]
    assert org.chain("R2") == ["R2", "M1", "E"]
    assert org.top_ids() == ["E"]
    assert org.depth == 3
    assert org.level_of("M2") == "manager"
    assert not org.time_dependent


def test_scope_kind_by_level_and_from_the_tree_when_levels_are_missing() -> None:
    org = Org.from_owners(TREE)
    assert [org.scope_kind(o) for o in ["R1", "M1", "E"]] == ["own", "team", "org"]
    four = owners([("CEO", None, None), ("VP", "CEO", None), ("TL", "VP", None), ("A", "TL", None)])
    org4 = Org.from_owners(four)
    assert [org4.scope_kind(o) for o in ["A", "TL", "VP", "CEO"]] == ["own", "team", "unit", "org"]
    assert org4.level_of("A") is None


def test_unknown_owner_suggests_the_closest_id_or_the_id_of_a_name() -> None:
    org = Org.from_owners(TREE.assign(name=["Eve", "Max", "Mia", "Rob", "Ria", "Rex"]))
    with pytest.raises(OrgError, match="unknown owner 'R11'.*did you mean 'R1'"):
        org.check_owner("R11")
    with pytest.raises(OrgError, match="'Rob' is the name of owner 'R1'"):
        org.subtree("Rob")
    assert org.check_owner(" R3 ") == "R3"


def test_unknown_manager_is_an_error_naming_the_owner_and_manager() -> None:
    bad = owners([("E", None, "executive"), ("M1", "E", "manager"), ("R1", "M7", "rep")])
    assert hierarchy_problems(bad) == (["R1"], [])
    with pytest.raises(OrgError, match=r"unknown manager for owner\(s\) R1 -> M7"):
        Org.from_owners(bad)


def test_cycle_is_an_error_showing_the_loop() -> None:
    bad = owners([("E", None, "executive"), ("A", "B", "manager"), ("B", "C", "manager"), ("C", "A", "manager")])
    with pytest.raises(OrgError, match="cycle: A -> B -> C -> A"):
        Org.from_owners(bad)


def test_an_owner_listed_twice_without_validity_is_an_error() -> None:
    bad = owners([("E", None, "executive"), ("R1", "E", "rep"), ("R1", None, "rep")])
    with pytest.raises(OrgError, match="R1 appear in several rows valid on the same day"):
        Org.from_owners(bad)


# ---------------------------------------------------------------- team moves
# R moves from M1's team to M2's team on 2026-07-01
MOVES = owners([("E", None, "executive", NaT, NaT), ("M1", "E", "manager", NaT, NaT),
                ("M2", "E", "manager", NaT, NaT),
                ("R", "M1", "rep", NaT, "2026-06-30"), ("R", "M2", "rep", "2026-07-01", NaT)])


def test_a_deal_counts_under_the_manager_of_its_day() -> None:
    deals = pd.DataFrame({"owner_id": ["R", "R"], "amount": [10.0, 7.0],
                          "close_date": pd.to_datetime(["2026-06-30", "2026-07-01"])})
    org = Org.from_owners(MOVES)
    assert org.time_dependent
    assert totals_per_scope(org, deals) == {"R": 17.0, "M1": 10.0, "M2": 7.0, "E": 17.0}


def test_ancestor_rows_carry_the_validity_of_the_whole_chain() -> None:
    got = Org.from_owners(MOVES).ancestors()
    r = got[got["owner_id"] == "R"]
    rows = sorted((s, d, str(f.date()) if pd.notna(f) else "open", str(t.date()) if pd.notna(t) else "open")
                  for s, d, f, t in zip(r["scope_id"], r["distance"], r["valid_from"], r["valid_to"], strict=True))
    assert rows == sorted([("R", 0, "open", "2026-06-30"), ("M1", 1, "open", "2026-06-30"),
                           ("E", 2, "open", "2026-06-30"), ("R", 0, "2026-07-01", "open"),
                           ("M2", 1, "2026-07-01", "open"), ("E", 2, "2026-07-01", "open")])


def test_ancestors_on_one_day() -> None:
    org = Org.from_owners(MOVES)
    june = org.ancestors(date(2026, 6, 15))
    assert sorted(june.loc[june["owner_id"] == "R", "scope_id"]) == ["E", "M1", "R"]
    july = org.ancestors(date(2026, 7, 1))
    assert sorted(july.loc[july["owner_id"] == "R", "scope_id"]) == ["E", "M2", "R"]
    # the current hierarchy is the latest row of each owner
    assert org.chain("R") == ["R", "M2", "E"]
    assert org.at(date(2026, 6, 1)).chain("R") == ["R", "M1", "E"]


def test_a_manager_not_valid_on_the_day_of_the_link_is_unknown() -> None:
    late = owners([("E", None, "executive", NaT, NaT), ("M3", "E", "manager", "2026-08-01", NaT),
                   ("R", "E", "rep", NaT, "2026-06-30"), ("R", "M3", "rep", "2026-07-01", NaT)])
    with pytest.raises(OrgError, match=r"unknown manager on 2026-07-01 for owner\(s\) R -> M3"):
        Org.from_owners(late)


def test_a_swap_over_time_is_not_a_cycle_but_overlapping_rows_are_an_error() -> None:
    swap = owners([("E", None, "executive", NaT, NaT),
                   ("A", "E", "manager", NaT, "2026-06-30"), ("A", "B", "manager", "2026-07-01", NaT),
                   ("B", "A", "manager", NaT, "2026-06-30"), ("B", "E", "manager", "2026-07-01", NaT)])
    assert Org.from_owners(swap).ancestors(date(2026, 7, 1)).query("owner_id == 'A'")["scope_id"].tolist() == [
        "A", "B", "E"]
    overlap = owners([("E", None, "executive", NaT, NaT), ("R", "E", "rep", NaT, "2026-07-31"),
                      ("R", "E", "rep", "2026-07-01", NaT)])
    with pytest.raises(OrgError, match="several rows valid on the same day"):
        Org.from_owners(overlap)
