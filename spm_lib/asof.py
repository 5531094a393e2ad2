"""As-of reconstruction (SPEC §4): opportunities as they stood at the end of a day, from `opportunity_history`.

A history row carries the values of stage / amount / close_date after a change; an empty cell means "unchanged",
so values are carried forward per opportunity in `changed_at` order (rows with the same `changed_at` keep their
order in the table). The as-of value of a field is its last value in a row with `changed_at` before the end of
as_of; a field no such row carries keeps the opportunity's current value (history that starts after the deal
was created cannot tell its earlier values). The data as it stood is what counts: a deal reopened after a close
is open again, and an amount edited after as_of (even on a closed deal) does not change the as-of value.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from spm_lib.config import StagesConfig
from spm_lib.frames import isin

FIELDS = ["stage", "amount", "close_date"]
EXTRA_COLUMNS = ["pushes", "amount_decreased", "stage_entered_at", "max_stage_index", "days_in_stage",
                 "asof_from_history"]


def _end_of(as_of: date) -> pd.Timestamp:
    """The first instant after day `as_of` (the company's local time, like every datetime of the contract)."""
    return pd.Timestamp(as_of) + pd.Timedelta(days=1)


def _has_history(history: pd.DataFrame | None) -> bool:
    return history is not None and not history.empty


def _created_by(opportunities: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """The opportunities created on or before as_of (all of them when the creation date is unknown)."""
    if "created_date" not in opportunities.columns:
        return opportunities
    created = pd.to_datetime(opportunities["created_date"])
    return opportunities[created.isna() | (created < _end_of(as_of))]


def _stage_index(stage: pd.Series, stages: StagesConfig) -> pd.Series:
    """Index of each stage in stages.open_names; won stages count as the last open stage; others NA."""
    index = {name: i for i, name in enumerate(stages.open_names)}
    index |= {name: len(stages.open_names) - 1 for name in stages.won}
    codes, uniques = pd.factorize(stage.astype("string"))  # map the few distinct stages, not every row
    per_stage = pd.Series(uniques, dtype="string").map(index).astype("Int64").array
    return pd.Series(per_stage.take(codes, allow_fill=True), index=stage.index, dtype="Int64")


def _closed_flags(opps: pd.DataFrame, stages: StagesConfig) -> tuple[pd.Series, pd.Series]:
    """(is_closed, is_won) from each stage; a missing or unconfigured stage keeps the table's own flags."""
    stage = opps["stage"].astype("string") if "stage" in opps.columns else pd.Series(pd.NA, index=opps.index,
                                                                                      dtype="string")
    known = stage.isin([*stages.open_names, *stages.won, *stages.lost]).fillna(False).astype(bool)
    won = stage.isin(stages.won).fillna(False).astype(bool)
    lost = stage.isin(stages.lost).fillna(False).astype(bool)

    def flag(col: str, derived: pd.Series) -> pd.Series:
        table = (opps[col].astype("boolean") if col in opps.columns
                 else pd.Series(pd.NA, index=opps.index, dtype="boolean"))
        return derived.astype("boolean").where(known, table.fillna(False)).astype("boolean")

    return flag("is_closed", won | lost), flag("is_won", won)


def _history_rows(history: pd.DataFrame, ids: pd.Series, as_of: date) -> pd.DataFrame:
    """History rows of the given opportunities up to the end of as_of, sorted, with values carried forward.

    Columns: opportunity_id, changed_at, stage, amount, close_date (carried forward), prev_stage, prev_amount,
    prev_close_date (the carried-forward values of the row before, NA on an opportunity's first row).
    """
    h = pd.DataFrame({"opportunity_id": history["opportunity_id"].astype("string"),
                      "changed_at": pd.to_datetime(history["changed_at"])})
    h["stage"] = (history["stage"].astype("string") if "stage" in history
                  else pd.Series(pd.NA, index=history.index, dtype="string"))
    h["amount"] = (pd.to_numeric(history["amount"]).astype("float64") if "amount" in history
                   else pd.Series(np.nan, index=history.index, dtype="float64"))
    h["close_date"] = (pd.to_datetime(history["close_date"]).astype("datetime64[ns]") if "close_date" in history
                       else pd.Series(pd.NaT, index=history.index, dtype="datetime64[ns]"))
    h = h[isin(h["opportunity_id"], ids).to_numpy() & (h["changed_at"] < _end_of(as_of)).to_numpy()
          & h["opportunity_id"].notna().to_numpy()]
    # by opportunity, then changed_at, ties in table order (a stable sort on integer codes, not on the text ids)
    codes = pd.factorize(h["opportunity_id"])[0]
    order = np.lexsort((h["changed_at"].to_numpy(dtype="int64"), codes))
    h = h.take(order).reset_index(drop=True)
    key = codes[order]
    h[FIELDS] = h[FIELDS].groupby(key, sort=False).ffill()
    prev = h[FIELDS].groupby(key, sort=False).shift(1)
    for f in FIELDS:
        h[f"prev_{f}"] = prev[f]
    h["_g"] = np.cumsum(np.r_[True, key[1:] != key[:-1]]) - 1 if len(key) else np.zeros(0, dtype=np.int64)
    return h


def _lookup(values: pd.Series, pos: np.ndarray, index: pd.Index) -> pd.Series:
    """values[p] for each group number p of `pos` (NA where -1: no history row), with index `index`."""
    return values.reindex(pos).set_axis(index)


def _from_history(opps: pd.DataFrame, h: pd.DataFrame, stages: StagesConfig, as_of: date) -> pd.DataFrame:
    """`opps` with as-of stage/amount/close_date and the history columns (pushes, …) from the rows `h`."""
    out = opps.copy()
    key = out["opportunity_id"].astype("string")
    g = h["_g"].to_numpy()  # the opportunity's group number: rows are sorted by it, then by changed_at
    last_row = np.r_[g[1:] != g[:-1], True] if len(g) else np.zeros(0, dtype=bool)
    pos = pd.Index(h["opportunity_id"][last_row]).get_indexer(key)  # each deal's group, -1 without history
    last = h.loc[last_row, FIELDS].reset_index(drop=True)  # the carried-forward values of the last row
    for f in FIELDS:
        asof_value = _lookup(last[f], pos, out.index)
        current = out[f] if f in out.columns else pd.Series(pd.NA, index=out.index)
        out[f] = asof_value.where(asof_value.notna(), current).astype(current.dtype if f in opps.columns
                                                                       else last[f].dtype)

    pushed = (h["close_date"] > h["prev_close_date"]).fillna(False)
    was_open = ~h["prev_stage"].isin([*stages.won, *stages.lost]).fillna(False)
    decreased = ((h["amount"] < h["prev_amount"]).fillna(False) & was_open).astype(bool)
    entered = (h["stage"].notna() & (h["prev_stage"].isna() | (h["stage"] != h["prev_stage"]))).fillna(False)
    per_opp = pd.DataFrame({
        "pushes": pushed.astype(int).groupby(g).sum(),
        "amount_decreased": decreased.groupby(g).any(),
        "stage_entered_at": h["changed_at"].where(entered.astype(bool)).groupby(g).max(),
        "max_stage_index": _stage_index(h["stage"], stages).groupby(g).max(),
    })
    out["pushes"] = _lookup(per_opp["pushes"], pos, out.index).fillna(0).astype("Int64")
    out["amount_decreased"] = _lookup(per_opp["amount_decreased"], pos, out.index).fillna(False).astype("boolean")
    # no row set the stage up to as_of: the deal has been in it since it was created
    entered_at = _lookup(per_opp["stage_entered_at"], pos, out.index).astype("datetime64[ns]")
    if "created_date" in out.columns:
        entered_at = entered_at.fillna(pd.to_datetime(out["created_date"]).astype("datetime64[ns]"))
    out["stage_entered_at"] = entered_at
    reached = _lookup(per_opp["max_stage_index"], pos, out.index).astype("Int64")
    out["max_stage_index"] = pd.concat([reached, _stage_index(out["stage"], stages)], axis=1).max(axis=1).astype(
        "Int64")
    days = (pd.Timestamp(as_of) - out["stage_entered_at"].dt.normalize()).dt.days
    out["days_in_stage"] = days.astype("Int64")
    return out


def snapshot(opportunities: pd.DataFrame, history: pd.DataFrame | None, as_of: date,
             stages: StagesConfig) -> pd.DataFrame:
    """The opportunities as they stood at the end of day `as_of`, with their history columns.

    Only deals created on or before as_of. stage, amount and close_date are the as-of values (current values
    without history); is_closed / is_won follow the as-of stage (stages.won / stages.lost). Added columns, from
    history up to as_of: pushes (times the close date moved later), amount_decreased (the amount went down while
    the deal was open), stage_entered_at (when the as-of stage was entered; the creation date when no history row
    set it), max_stage_index (furthest open stage reached, in stages.open_names order; a won deal reached them all),
    days_in_stage (as_of minus the day the stage was entered), and asof_from_history (True when history was used).
    Without history the history columns are NA, never 0; `df.attrs["asof_from_history"]` tells the same.
    """
    opps = _created_by(opportunities, as_of).reset_index(drop=True)
    use_history = _has_history(history)
    if use_history:
        assert history is not None
        h = _history_rows(history, opps["opportunity_id"].astype("string"), as_of)
        out = _from_history(opps, h, stages, as_of)
    else:
        out = opps.copy()
        out["pushes"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
        out["amount_decreased"] = pd.Series(pd.NA, index=out.index, dtype="boolean")
        out["stage_entered_at"] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns]")
        out["max_stage_index"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
        out["days_in_stage"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
    out["is_closed"], out["is_won"] = _closed_flags(out, stages)
    out["asof_from_history"] = use_history
    out.attrs["asof_from_history"] = use_history
    return out


def reached_stages(opportunities: pd.DataFrame, history: pd.DataFrame | None, as_of: date,
                   stages: StagesConfig) -> pd.DataFrame:
    """(opportunity_id, stage, stage_index): one row per open stage each deal had reached by the end of as_of.

    A deal reached every open stage up to the furthest one it was in (a skipped stage counts as reached), a won
    deal reached them all, a deal lost straight away none. Without history only the as-of (current) stage is
    known: an open deal reached the stages up to it, a won deal all, a lost deal none.
    """
    return reached_from_snapshot(snapshot(opportunities, history, as_of, stages), _has_history(history), stages)


def furthest_reached(snap: pd.DataFrame, from_history: bool, stages: StagesConfig) -> pd.Series:
    """Index (stages.open_names order) of the furthest open stage each snapshot deal reached (Int64; NA: none)."""
    if from_history:
        furthest = snap["max_stage_index"]
    else:
        stage = snap["stage"] if "stage" in snap else pd.Series(pd.NA, index=snap.index, dtype="string")
        furthest = _stage_index(stage, stages)
    won = snap["is_won"].fillna(False).astype(bool)
    return furthest.astype("Int64").mask(won, len(stages.open_names) - 1)


def reached_from_snapshot(snap: pd.DataFrame, from_history: bool, stages: StagesConfig) -> pd.DataFrame:
    """`reached_stages` from a snapshot already computed (`from_history`: it was reconstructed from history)."""
    furthest = furthest_reached(snap, from_history, stages)
    keep = furthest.notna()
    ids = snap.loc[keep, "opportunity_id"].astype("string").to_numpy()
    counts = furthest[keep].astype("int64").to_numpy() + 1
    index = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    names = np.asarray(stages.open_names, dtype=object)
    return pd.DataFrame({"opportunity_id": pd.array(np.repeat(ids, counts), dtype="string"),
                         "stage": pd.array(names[index], dtype="string"),
                         "stage_index": index.astype("int64")})

