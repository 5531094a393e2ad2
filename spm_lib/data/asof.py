"""As-of reconstruction (SPEC §4): opportunities as they stood at the end of a day, from `opportunity_history`.

A history row carries the values of stage / amount / close_date after a change; an empty cell means "unchanged",
so values are carried forward per opportunity in `changed_at` order (rows with the same `changed_at` keep their
order in the table). The as-of value of a field is its last value in a row with `changed_at` before the end of
as_of; a field no such row carries keeps the opportunity's current value (history that starts after the deal
was created cannot tell its earlier values). The data as it stood is what counts: a deal reopened after a close
is open again, and an amount edited after as_of (even on a closed deal) does not change the as-of value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from spm_lib.config import StagesConfig
from spm_lib.domain.stages import Stages

EXTRA_COLUMNS = ["pushes", "amount_decreased", "stage_entered_at", "max_stage_index", "days_in_stage",
                 "asof_from_history"]


@dataclass(frozen=True)
class SortedHistory:
    """The history rows up to the end of `as_of` as integer-coded arrays, sorted by opportunity then changed_at
    (ties in table order): built once per run and shared by the snapshot and the trust checks.

    `code` numbers the opportunity of each row (`ids[code]` is its id; `first` marks each deal's first row),
    `stage_ff` numbers the stage carried forward per deal (`stages[stage_ff]`, -1 before the first row that sets
    one); `amount_ff` and `close_ff` are carried forward the same way.
    """

    as_of: date
    ids: pd.Index
    stages: pd.Index
    code: np.ndarray
    first: np.ndarray
    changed_at: np.ndarray
    stage_ff: np.ndarray
    amount_ff: np.ndarray
    close_ff: np.ndarray

    def previous(self, values: np.ndarray, missing: object) -> np.ndarray:
        """The value of the deal's row before (`missing` on a deal's first row)."""
        out = np.empty_like(values)
        if len(values):
            out[1:] = values[:-1]
            out[self.first] = missing
        return out

    def last_rows(self) -> np.ndarray:
        """Per opportunity code, the position of its last row up to as_of (-1: none)."""
        ends = np.flatnonzero(np.r_[self.code[1:] != self.code[:-1], True]) if len(self.code) else self.code
        last = np.full(len(self.ids), -1, dtype=np.int64)
        last[self.code[ends]] = ends
        return last

    def codes_of(self, ids: pd.Series) -> np.ndarray:
        """The code of each of `ids` (-1: the opportunity has no history row at all)."""
        return self.ids.get_indexer(pd.Index(ids.astype("string")))

    def rows_of(self, codes: np.ndarray) -> np.ndarray:
        """The last row up to as_of of each opportunity code in `codes` (-1: none)."""
        return np.where(codes >= 0, self.last_rows()[np.maximum(codes, 0)] if len(self.ids) else -1, -1)

    def per_deal_max(self, values: np.ndarray, rows: np.ndarray, missing: object) -> np.ndarray:
        """Per opportunity code, the largest of `values` over the rows where the mask `rows` holds (`missing` for a
        deal with none)."""
        out = np.full(len(self.ids), missing, dtype=values.dtype)
        starts = np.flatnonzero(self.first)  # a deal's rows are one run: reduce each run
        if len(starts):
            out[self.code[starts]] = np.maximum.reduceat(np.where(rows, values, out[:1]), starts)
        return out


def first_of_run(codes: np.ndarray) -> np.ndarray:
    """True where a value differs from the one before it (and on the first element)."""
    first = np.ones(len(codes), dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    return first


def carry_forward(values: np.ndarray, valid: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """At each position, the value at the last position at or before it where `valid` holds, not going back past
    a start (a start that is not valid keeps its own value)."""
    held = valid | starts
    out = values.copy()
    gaps = np.flatnonzero(~held)  # usually few: only they need a look back
    if len(gaps):
        kept = np.flatnonzero(held)  # position 0 is a start: every gap has a kept position before it
        out[gaps] = values[kept[np.searchsorted(kept, gaps) - 1]]
    return out


def _end_of(as_of: date) -> pd.Timestamp:
    """The first instant after day `as_of` (the company's local time, like every datetime of the contract)."""
    return pd.Timestamp(as_of) + pd.Timedelta(days=1)


def _has_history(history: pd.DataFrame | None) -> bool:
    return history is not None and not history.empty


def created_by(opportunities: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """The opportunities created on or before as_of (all of them when the creation date is unknown)."""
    if "created_date" not in opportunities.columns:
        return opportunities
    created = pd.to_datetime(opportunities["created_date"])
    return opportunities[created.isna() | (created < _end_of(as_of))]


def _stage_index(stage: pd.Series, stages: StagesConfig) -> pd.Series:
    """Index of each stage in stages.open_names; won stages count as the last open stage; others NA."""
    index = Stages.of(stages).funnel_index()
    codes, uniques = pd.factorize(stage.astype("string"))  # map the few distinct stages, not every row
    per_stage = pd.Series(uniques, dtype="string").map(index).astype("Int64").array
    return pd.Series(per_stage.take(codes, allow_fill=True), index=stage.index, dtype="Int64")


def _closed_flags(opps: pd.DataFrame, stages: StagesConfig) -> tuple[pd.Series, pd.Series]:
    """(is_closed, is_won) from each stage; a missing or unconfigured stage keeps the table's own flags."""
    stage = opps["stage"].astype("string") if "stage" in opps.columns else pd.Series(pd.NA, index=opps.index,
                                                                                      dtype="string")
    rule = Stages.of(stages)
    known = pd.Series(rule.is_known(stage), index=stage.index)
    won = pd.Series(rule.is_won(stage), index=stage.index)
    closed = pd.Series(rule.is_closed(stage), index=stage.index)

    def flag(col: str, derived: pd.Series) -> pd.Series:
        table = (opps[col].astype("boolean") if col in opps.columns
                 else pd.Series(pd.NA, index=opps.index, dtype="boolean"))
        return derived.astype("boolean").where(known, table.fillna(False)).astype("boolean")

    return flag("is_closed", closed), flag("is_won", won)


def _sort_order(code: np.ndarray, when: np.ndarray) -> np.ndarray | None:
    """The stable order by (code, when): ties keep their order; None when the rows are in that order already
    (a history exported deal by deal, in time order: no sort)."""
    step = np.diff(code)
    if (step >= 0).all() and ((step != 0) | (np.diff(when) >= 0)).all():
        return None
    return np.lexsort((when, code))


def sort_history(history: pd.DataFrame, as_of: date) -> SortedHistory:
    """The history rows with an opportunity id and changed_at before the end of `as_of`, sorted and coded."""
    changed = pd.to_datetime(history["changed_at"]).to_numpy(dtype="datetime64[ns]")
    codes, ids = pd.factorize(history["opportunity_id"])  # the whole column: cheaper than filtering text first
    keep = (changed < _end_of(as_of).to_datetime64()) & (codes >= 0)
    order: slice | np.ndarray = slice(None) if keep.all() else np.flatnonzero(keep)  # a slice takes no copy
    sort = _sort_order(codes[order], changed[order].view("int64"))
    if sort is not None:
        order = sort if isinstance(order, slice) else order[sort]
    code = codes[order]
    if "stage" in history:
        stage, stages = pd.factorize(history["stage"])
        stage = stage[order]
    else:
        stage, stages = np.full(len(code), -1, dtype=np.int64), pd.Index([], dtype="string")
    amount = (pd.to_numeric(history["amount"]).to_numpy(dtype="float64", na_value=np.nan)[order]
              if "amount" in history else np.full(len(code), np.nan))
    close = (pd.to_datetime(history["close_date"]).to_numpy(dtype="datetime64[ns]")[order]
             if "close_date" in history else np.full(len(code), np.datetime64("NaT", "ns"), dtype="datetime64[ns]"))
    starts = first_of_run(code)
    return SortedHistory(as_of=as_of, ids=pd.Index(ids, dtype="string"), stages=pd.Index(stages, dtype="string"),
                         code=code, first=starts, changed_at=changed[order],
                         stage_ff=carry_forward(stage, stage >= 0, starts),
                         amount_ff=carry_forward(amount, ~np.isnan(amount), starts),
                         close_ff=carry_forward(close, ~np.isnat(close), starts))


def _from_history(opps: pd.DataFrame, h: SortedHistory, stages: StagesConfig, as_of: date) -> pd.DataFrame:
    """`opps` with as-of stage/amount/close_date and the history columns (pushes, …) from the sorted history `h`."""
    out = opps.copy(deep=False)  # copy-on-write: the new columns do not reach `opps`
    n = len(h.ids)
    row = h.rows_of(h.codes_of(out["opportunity_id"]))  # each deal's last row up to as_of, -1 without
    code = np.where(row >= 0, h.code[row] if len(h.code) else -1, -1)
    stage_code = np.where(row >= 0, h.stage_ff[row], -1)
    last_values = {
        "stage": pd.Series(h.stages.array.take(stage_code, allow_fill=True), index=out.index),
        "amount": pd.Series(np.where(row >= 0, h.amount_ff[row], np.nan), index=out.index),
        "close_date": pd.Series(np.where(row >= 0, h.close_ff[row], np.datetime64("NaT", "ns")), index=out.index,
                                dtype="datetime64[ns]"),
    }
    for f, asof_value in last_values.items():
        current = out[f] if f in out.columns else pd.Series(pd.NA, index=out.index)
        out[f] = asof_value.where(asof_value.notna(), current).astype(current.dtype if f in opps.columns
                                                                       else asof_value.dtype)

    prev_stage = h.previous(h.stage_ff, -1)
    pushed = h.close_ff > h.previous(h.close_ff, np.datetime64("NaT", "ns"))  # NaT compares False
    closed = np.r_[Stages.of(stages).is_closed(h.stages), False]  # per stage code; code -1: no stage
    decreased = (h.amount_ff < h.previous(h.amount_ff, np.nan)) & ~closed[prev_stage]
    entered = (h.stage_ff >= 0) & ((prev_stage < 0) | (h.stage_ff != prev_stage))
    index_of = _stage_index(pd.Series(h.stages, dtype="string"), stages).fillna(-1).to_numpy(dtype="int64")
    row_index = np.r_[index_of, -1][h.stage_ff]  # per stage code; code -1 (no stage yet): -1
    per_code = {
        "pushes": np.bincount(h.code[pushed], minlength=n),
        "amount_decreased": np.bincount(h.code[decreased], minlength=n) > 0,
        "stage_entered_at": h.per_deal_max(h.changed_at.view("int64"), entered, np.iinfo(np.int64).min
                                           ).view("datetime64[ns]"),
        "max_stage_index": h.per_deal_max(row_index, row_index >= 0, -1),
    }

    def lookup(name: str, missing: float | np.generic) -> np.ndarray:
        values = per_code[name]
        return np.where(code >= 0, values[np.maximum(code, 0)] if n else missing, missing)

    out["pushes"] = pd.Series(lookup("pushes", 0), index=out.index).astype("Int64")
    out["amount_decreased"] = pd.Series(lookup("amount_decreased", False), index=out.index).astype("boolean")
    # no row set the stage up to as_of: the deal has been in it since it was created
    entered_at = pd.Series(lookup("stage_entered_at", np.datetime64("NaT", "ns")), index=out.index,
                           dtype="datetime64[ns]")
    if "created_date" in out.columns:
        entered_at = entered_at.fillna(pd.to_datetime(out["created_date"]).astype("datetime64[ns]"))
    out["stage_entered_at"] = entered_at
    now = _stage_index(out["stage"], stages).fillna(-1).to_numpy(dtype="int64")
    reached = np.maximum(lookup("max_stage_index", -1), now)  # -1: none
    out["max_stage_index"] = pd.Series(pd.arrays.IntegerArray(reached, reached < 0), index=out.index)
    days = (pd.Timestamp(as_of) - out["stage_entered_at"].dt.normalize()).dt.days
    out["days_in_stage"] = days.astype("Int64")
    return out


def snapshot(opportunities: pd.DataFrame, history: pd.DataFrame | None, as_of: date,
             stages: StagesConfig, sorted_history: SortedHistory | None = None) -> pd.DataFrame:
    """The opportunities as they stood at the end of day `as_of`, with their history columns.

    Only deals created on or before as_of. stage, amount and close_date are the as-of values (current values
    without history); is_closed / is_won follow the as-of stage (stages.won / stages.lost). Added columns, from
    history up to as_of: pushes (times the close date moved later), amount_decreased (the amount went down while
    the deal was open), stage_entered_at (when the as-of stage was entered; the creation date when no history row
    set it), max_stage_index (furthest open stage reached, in stages.open_names order; a won deal reached them all),
    days_in_stage (as_of minus the day the stage was entered), and asof_from_history (True when history was used).
    Without history the history columns are NA, never 0; `df.attrs["asof_from_history"]` tells the same.
    `sorted_history`: `sort_history(history, as_of)` when the caller has it already.
    """
    opps = created_by(opportunities, as_of).reset_index(drop=True)
    use_history = _has_history(history)
    if use_history:
        assert history is not None
        h = sorted_history if sorted_history is not None else sort_history(history, as_of)
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

