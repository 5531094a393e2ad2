"""As-of reconstruction: opportunities as they stood at the end of a day, from hand-written history."""

from __future__ import annotations

from datetime import date

import pandas as pd

from spm_lib.config import StagesConfig
from spm_lib.data.asof import reached_stages, snapshot

# default stages: Prospecting 0, Qualification 1, Needs analysis 2, Proposal 3, Negotiation 4; Closed Won/Lost
STAGES = StagesConfig()
NA = None


def ts(text: str | None) -> pd.Timestamp:
    return pd.Timestamp(text) if text else pd.NaT


# current state of the CRM (as exported today)
OPPS = pd.DataFrame({
    "opportunity_id": pd.array(["O1", "O2", "O3", "O4"], dtype="string"),
    "owner_id": pd.array(["R1", "R1", "R2", "R2"], dtype="string"),
    "stage": pd.array(["Closed Won", "Negotiation", "Needs analysis", "Proposal"], dtype="string"),
    "amount": [120.0, 80.0, 50.0, 10.0],
    "created_date": pd.to_datetime(["2026-01-10", "2026-01-05", "2026-03-20", "2026-01-01"]),
    "close_date": pd.to_datetime(["2026-03-10", "2026-06-30", "2026-07-31", "2026-05-31"]),
    "is_closed": pd.array([True, False, False, False], dtype="boolean"),
    "is_won": pd.array([True, False, False, False], dtype="boolean"),
})

# one row per change; an empty cell means "unchanged". O4 has no history at all.
HISTORY_ROWS = [
    # O1: skips two stages, is pushed once, then won earlier than planned, amount edited after the close
    ("O1", "2026-01-10 09:00", "Prospecting", 100.0, "2026-03-31"),
    ("O1", "2026-02-01 10:00", "Proposal", NA, NA),
    ("O1", "2026-02-20 15:00", NA, NA, "2026-04-30"),
    ("O1", "2026-03-10 16:00", "Closed Won", NA, "2026-03-10"),
    ("O1", "2026-05-01 11:00", NA, 120.0, NA),
    # O2: lost, then reopened (with a lower amount while closed), then pushed
    ("O2", "2026-01-05 08:00", "Prospecting", 100.0, "2026-02-28"),
    ("O2", "2026-02-10 12:00", "Closed Lost", NA, NA),
    ("O2", "2026-03-15 09:30", "Qualification", 80.0, NA),
    ("O2", "2026-04-02 14:00", "Negotiation", NA, "2026-06-30"),
    # O3: amount cut while open, close date pulled in (not a push), then pushed
    ("O3", "2026-03-20 10:00", "Prospecting", 60.0, "2026-05-31"),
    ("O3", "2026-04-10 10:00", NA, 50.0, "2026-05-15"),
    ("O3", "2026-04-20 10:00", "Needs analysis", NA, "2026-07-31"),
]
HISTORY = pd.DataFrame({
    "opportunity_id": pd.array([r[0] for r in HISTORY_ROWS], dtype="string"),
    "changed_at": pd.to_datetime([r[1] for r in HISTORY_ROWS]),
    "stage": pd.array([r[2] for r in HISTORY_ROWS], dtype="string"),
    "amount": pd.array([r[3] for r in HISTORY_ROWS], dtype="float64"),
    "close_date": pd.to_datetime([r[4] for r in HISTORY_ROWS]),
})


def state(snap: pd.DataFrame, cols: list[str]) -> dict[str, tuple]:
    """{opportunity_id: (values of cols)} with missing values as None."""
    out = {}
    for _, r in snap.iterrows():
        out[r["opportunity_id"]] = tuple(None if pd.isna(r[c]) else r[c] for c in cols)
    return out


CORE = ["stage", "amount", "close_date", "is_closed", "is_won"]


def test_state_on_2026_02_15() -> None:
    snap = snapshot(OPPS, HISTORY, date(2026, 2, 15), STAGES)
    # O3 was created on 2026-03-20: not there yet
    assert state(snap, CORE) == {
        "O1": ("Proposal", 100.0, ts("2026-03-31"), False, False),
        "O2": ("Closed Lost", 100.0, ts("2026-02-28"), True, False),
        "O4": ("Proposal", 10.0, ts("2026-05-31"), False, False),
    }


def test_state_on_2026_03_31_reopened_deal_is_open_again() -> None:
    snap = snapshot(OPPS, HISTORY, date(2026, 3, 31), STAGES)
    assert state(snap, CORE) == {
        "O1": ("Closed Won", 100.0, ts("2026-03-10"), True, True),
        "O2": ("Qualification", 80.0, ts("2026-02-28"), False, False),
        "O3": ("Prospecting", 60.0, ts("2026-05-31"), False, False),
        "O4": ("Proposal", 10.0, ts("2026-05-31"), False, False),
    }


def test_state_on_2026_04_30_amount_edited_after_close_is_not_seen_yet() -> None:
    snap = snapshot(OPPS, HISTORY, date(2026, 4, 30), STAGES)
    assert state(snap, CORE) == {
        "O1": ("Closed Won", 100.0, ts("2026-03-10"), True, True),  # the edit to 120 came on 2026-05-01
        "O2": ("Negotiation", 80.0, ts("2026-06-30"), False, False),
        "O3": ("Needs analysis", 50.0, ts("2026-07-31"), False, False),
        "O4": ("Proposal", 10.0, ts("2026-05-31"), False, False),
    }
    # a change at 11:00 on 2026-05-01 belongs to the end of that day, not before
    assert snapshot(OPPS, HISTORY, date(2026, 5, 1), STAGES).set_index("opportunity_id").at["O1", "amount"] == 120.0


def test_history_columns_on_2026_04_30() -> None:
    snap = snapshot(OPPS, HISTORY, date(2026, 4, 30), STAGES)
    cols = ["pushes", "amount_decreased", "stage_entered_at", "max_stage_index", "days_in_stage"]
    assert state(snap, cols) == {
        # pushed 03-31 -> 04-30 once; the move to 03-10 is earlier and does not count; won = every stage reached
        "O1": (1, False, ts("2026-03-10 16:00"), 4, 51),
        # 02-28 -> 06-30 once; the cut to 80 happened while it was closed lost
        "O2": (1, False, ts("2026-04-02 14:00"), 4, 28),
        # 05-31 -> 05-15 is not a push, 05-15 -> 07-31 is; 60 -> 50 while open
        "O3": (1, True, ts("2026-04-20 10:00"), 2, 10),
        # no history rows: in its stage since it was created
        "O4": (0, False, ts("2026-01-01"), 3, 119),
    }
    assert snap["asof_from_history"].all() and snap.attrs["asof_from_history"] is True


def test_history_columns_on_2026_02_15_count_only_changes_up_to_then() -> None:
    snap = snapshot(OPPS, HISTORY, date(2026, 2, 15), STAGES)
    cols = ["pushes", "stage_entered_at", "max_stage_index", "days_in_stage"]
    assert state(snap, cols)["O1"] == (0, ts("2026-02-01 10:00"), 3, 14)
    # lost after Prospecting: the furthest open stage is Prospecting
    assert state(snap, cols)["O2"] == (0, ts("2026-02-10 12:00"), 0, 5)


def test_without_history_current_values_and_na_history_columns() -> None:
    for history in (None, HISTORY.iloc[0:0]):
        snap = snapshot(OPPS, history, date(2026, 2, 15), STAGES)
        assert state(snap, CORE) == {
            "O1": ("Closed Won", 120.0, ts("2026-03-10"), True, True),
            "O2": ("Negotiation", 80.0, ts("2026-06-30"), False, False),
            "O4": ("Proposal", 10.0, ts("2026-05-31"), False, False),
        }
        for col in ["pushes", "amount_decreased", "stage_entered_at", "max_stage_index", "days_in_stage"]:
            assert snap[col].isna().all(), col
        assert not snap["asof_from_history"].any() and snap.attrs["asof_from_history"] is False


def test_flags_come_from_the_table_when_there_is_no_stage() -> None:
    opps = OPPS.drop(columns="stage")
    snap = snapshot(opps, None, date(2026, 12, 31), STAGES)
    assert snap["is_won"].tolist() == [True, False, False, False]
    assert snap["is_closed"].tolist() == [True, False, False, False]


def test_reached_stages_counts_skipped_stages_and_wins() -> None:
    got = reached_stages(OPPS, HISTORY, date(2026, 3, 31), STAGES)
    pairs = sorted(zip(got["opportunity_id"], got["stage_index"], strict=True))
    assert pairs == sorted([("O1", i) for i in range(5)]  # won: every open stage
                           + [("O2", 0), ("O2", 1)]  # lost at Prospecting, reopened at Qualification
                           + [("O3", 0), ("O4", 0), ("O4", 1), ("O4", 2), ("O4", 3)])
    on_feb_15 = reached_stages(OPPS, HISTORY, date(2026, 2, 15), STAGES)
    o1 = on_feb_15[on_feb_15["opportunity_id"] == "O1"]
    # Prospecting -> Proposal: Qualification and Needs analysis count as reached
    assert o1["stage"].tolist() == ["Prospecting", "Qualification", "Needs analysis", "Proposal"]


def test_reached_stages_without_history_uses_the_current_stage() -> None:
    lost = pd.DataFrame({"opportunity_id": pd.array(["O5"], dtype="string"),
                         "owner_id": pd.array(["R1"], dtype="string"),
                         "stage": pd.array(["Closed Lost"], dtype="string"), "amount": [5.0],
                         "created_date": pd.to_datetime(["2026-01-01"]), "close_date": pd.to_datetime(["2026-02-01"]),
                         "is_closed": pd.array([True], dtype="boolean"), "is_won": pd.array([False], dtype="boolean")})
    got = reached_stages(pd.concat([OPPS, lost], ignore_index=True), None, date(2026, 4, 30), STAGES)
    assert got.groupby("opportunity_id")["stage_index"].max().to_dict() == {"O1": 4, "O2": 4, "O3": 2, "O4": 3}
    assert len(got) == 5 + 5 + 3 + 4  # O5, lost, reached nothing we know of


def test_nothing_before_the_first_deal_was_created() -> None:
    as_of = date(2025, 12, 31)
    assert snapshot(OPPS, HISTORY, as_of, STAGES).empty
    assert reached_stages(OPPS, HISTORY, as_of, STAGES).empty
