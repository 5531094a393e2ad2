"""The deals as they stood at the end of many days, from one sorted pass over their history (SPEC §4 as-of).

`asof.snapshot` reconstructs one day with every column; learning from the past needs the same few columns on
dozens of days, so the history is sorted and carried forward once here, and each day is a binary search per
deal. The rules are asof's (a test holds both to the same values): a field no history row up to the day set
keeps the deal's current value, closedness follows the stage, pushes count the times the close date moved later,
and the current stage was entered at the last row that changed the stage (else when the deal was created).
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from spm_lib.config import StagesConfig
from spm_lib.data.asof import carry_forward, first_of_run
from spm_lib.domain.stages import Stages

COLUMNS = ["opportunity_id", "owner_id", "stage", "amount", "close_date", "created_date", "is_closed", "is_won",
           "pushes", "days_in_stage", "max_stage_index"]
_NAT = np.iinfo(np.int64).min
_SECOND = 1_000_000_000


class Replay:
    """Snapshots of `opportunities` on any day, from their `opportunity_history`."""

    def __init__(self, opportunities: pd.DataFrame, history: pd.DataFrame, stages: StagesConfig) -> None:
        o = opportunities.reset_index(drop=True)
        self.opps = o
        self.opp_code, ids = pd.factorize(o["opportunity_id"].astype("string"))
        code = pd.Index(ids).get_indexer(pd.Index(history["opportunity_id"].astype("string")))
        when = pd.to_datetime(history["changed_at"]).to_numpy(dtype="datetime64[ns]").view("int64")
        keep = np.flatnonzero((code >= 0) & (when != _NAT))
        order = keep[np.lexsort((when[keep], code[keep]))]
        self.code, t = code[order], when[order]
        self.seconds = t // _SECOND
        stage, names = pd.factorize(history["stage"]) if "stage" in history else (
            np.full(len(history), -1), pd.Index([]))
        self.stage_names: pd.Index = pd.Index(names)
        amount = (pd.to_numeric(history["amount"]).to_numpy(dtype="float64", na_value=np.nan)
                  if "amount" in history else np.full(len(history), np.nan))
        close = (pd.to_datetime(history["close_date"]).to_numpy(dtype="datetime64[ns]")
                 if "close_date" in history else np.full(len(history), np.datetime64("NaT", "ns")))
        starts = first_of_run(self.code)
        stage, amount, close = stage[order], amount[order], close[order]
        self.stage_ff = carry_forward(stage, stage >= 0, starts)
        self.amount_ff = carry_forward(amount, ~np.isnan(amount), starts)
        self.close_ff = carry_forward(close, ~np.isnat(close), starts)
        prev_close = np.r_[np.datetime64("NaT", "ns"), self.close_ff[:-1]] if len(t) else self.close_ff
        pushed = (self.close_ff > prev_close) & ~starts  # NaT compares False
        cum = np.cumsum(pushed)
        before = np.where(starts, cum - pushed, 0)
        self.pushes = cum - np.maximum.accumulate(before) if len(t) else cum
        prev_stage = np.r_[-1, self.stage_ff[:-1]] if len(t) else self.stage_ff
        prev_stage = np.where(starts, -1, prev_stage)
        entered = (self.stage_ff >= 0) & ((prev_stage < 0) | (self.stage_ff != prev_stage))
        self.entered_ff = carry_forward(np.where(entered, t, _NAT), entered, starts)
        rule = Stages.of(stages)
        self.index_of = rule.funnel_index()
        per_name = np.r_[pd.Series(self.stage_names, dtype="object").map(self.index_of).fillna(-1).to_numpy(
            dtype=np.int64), -1]
        row_index = per_name[self.stage_ff]  # code -1 (no stage yet) picks the -1 at the end
        width = len(stages.open_names) + 2  # each deal's running maximum, restarted per deal by its offset
        self.max_index = np.maximum.accumulate(self.code.astype(np.int64) * width + row_index + 1) \
            - self.code.astype(np.int64) * width - 1 if len(t) else row_index
        self.base = int(self.seconds.min()) if len(t) else 0
        self.span = int(self.seconds.max()) - self.base + 2 if len(t) else 2
        self.key = self.code.astype(np.int64) * self.span + (self.seconds - self.base)
        self.created = (pd.to_datetime(o["created_date"]).to_numpy(dtype="datetime64[ns]")
                        if "created_date" in o else np.full(len(o), np.datetime64("NaT", "ns")))
        # every deal's current values, as arrays; stages as codes into `cats` (history stages, then current ones)
        current = o["stage"].astype("object") if "stage" in o else pd.Series(None, index=o.index, dtype="object")
        cur_code, cur_names = pd.factorize(current)
        self.cats = pd.Index(self.stage_names.astype("object")).append(pd.Index(cur_names, dtype="object")).unique()
        self.hist_cat = np.r_[self.cats.get_indexer(self.stage_names.astype("object")), -1]  # stage_ff -1: -1
        self.cur_cat = np.r_[self.cats.get_indexer(pd.Index(cur_names, dtype="object")), -1][cur_code]
        cat_names = pd.Series(self.cats, dtype="object")
        self.cat_known = np.r_[rule.is_known(cat_names), False]
        self.cat_closed = np.r_[rule.is_closed(cat_names), False]
        self.cat_won = np.r_[rule.is_won(cat_names), False]
        self.cat_index = np.r_[cat_names.map(self.index_of).fillna(-1).to_numpy(dtype=np.int64), -1]
        self.cur_amount = (pd.to_numeric(o["amount"]).to_numpy(dtype="float64", na_value=np.nan) if "amount" in o
                           else np.full(len(o), np.nan))
        self.cur_close = (pd.to_datetime(o["close_date"]).to_numpy(dtype="datetime64[ns]") if "close_date" in o
                          else np.full(len(o), np.datetime64("NaT", "ns")))
        self.cur_flags = {c: (o[c].astype("boolean").fillna(False).to_numpy(dtype=bool) if c in o
                              else np.zeros(len(o), dtype=bool)) for c in ("is_closed", "is_won")}

    def snapshot(self, day: date) -> pd.DataFrame:
        """The deals created by the end of `day` as they stood then (COLUMNS)."""
        end = pd.Timestamp(day) + pd.Timedelta(days=1)
        rows = np.flatnonzero(np.isnat(self.created) | (self.created < end.to_datetime64()))
        code = self.opp_code[rows]
        if len(self.key):
            end_s = np.clip(end.value // _SECOND - self.base, 0, self.span - 1)
            at = np.searchsorted(self.key, code.astype(np.int64) * self.span + end_s, side="left") - 1
            has = (at >= 0) & (self.code[np.maximum(at, 0)] == code)
        else:
            at, has = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=bool)
        at = np.where(has, at, 0)
        pick = (lambda values, missing: np.where(has, values[at], missing)) if len(self.key) else (
            lambda values, missing: np.full(len(rows), missing))
        hist_stage = self.hist_cat[pick(self.stage_ff, -1)]
        cat = np.where(hist_stage >= 0, hist_stage, self.cur_cat[rows])
        amount = pick(self.amount_ff, np.nan)
        amount = np.where(np.isnan(amount), self.cur_amount[rows], amount)
        close = pick(self.close_ff, np.datetime64("NaT", "ns")).astype("datetime64[ns]")
        close = np.where(np.isnat(close), self.cur_close[rows], close)
        known = self.cat_known[cat]
        is_closed = np.where(known, self.cat_closed[cat], self.cur_flags["is_closed"][rows])
        is_won = np.where(known, self.cat_won[cat], self.cur_flags["is_won"][rows])
        reached = np.maximum(pick(self.max_index, -1), self.cat_index[cat])
        entered = pick(self.entered_ff, _NAT).view("datetime64[ns]")
        entered = np.where(np.isnat(entered), self.created[rows], entered).astype("datetime64[D]")
        days = (np.datetime64(day, "D") - entered).astype(np.int64)
        stage = pd.Series(np.r_[self.cats.to_numpy(dtype=object), None][cat], dtype="object")
        return pd.DataFrame({"opportunity_id": self.opps["opportunity_id"].to_numpy()[rows],
                             "owner_id": self.opps["owner_id"].to_numpy()[rows], "stage": stage.to_numpy(),
                             "amount": amount, "close_date": close, "created_date": self.created[rows],
                             "is_closed": is_closed, "is_won": is_won, "pushes": pick(self.pushes, 0),
                             "days_in_stage": pd.arrays.FloatingArray(days.astype("float64"), np.isnat(entered)),
                             "max_stage_index": pd.arrays.IntegerArray(reached, reached < 0)})
