"""How the forward pipeline moved since the last session (SPEC §8.4): from the open pipeline at the start of the
closed period to the open pipeline now, step by step, per owner scope. Needs `opportunity_history` (the pipeline
at the start is the deals as they stood then).

The window is the close dates the session looks forward at. At the start (the end of the day before the closed
period P starts) it is P's first day to the end of the forward period Q; now it is the rest of Q after as_of (the
forward look's open pipeline). Each deal moves the pipeline by one or two steps, so that per scope

    start + created + pulled in − pushed out − won − lost + amount up − amount down = now

- a deal in the start pipeline: its amount change (up or down) then, unless it is in the pipeline now, its exit at
  its amount now: won, lost, or pushed out (still open, its close date beyond Q or passed without a close);
- a deal not in the start pipeline that is in it now, or that closed in the window (close date from P's start to
  as_of): its entry, created (created after the start) or pulled in (it existed: its close date moved into the
  window, or it reopened), at its amount now; one that closed leaves again as won or lost.
A deal counts in the scopes of its owner now (the hierarchy valid on as_of); a missing amount counts as 0.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from spm_lib.data.asof import SortedHistory, first_of_run, snapshot
from spm_lib.engine.context import CubeContext
from spm_lib.engine.forecast import _scope_totals

# the steps in waterfall order, with their sign and a one-line definition
STEPS: dict[str, tuple[int, str]] = {
    "start": (1, "Open deals at the start of the closed period with a close date from its first day to the end of "
                 "the forward period."),
    "created": (1, "Deals created since then that are in the pipeline now or closed in the window."),
    "pulled_in": (1, "Deals that existed and moved into the window (close date moved in, or reopened)."),
    "amount_up": (1, "Amount increases of the deals of the start pipeline."),
    "amount_down": (-1, "Amount decreases of the deals of the start pipeline."),
    "pushed_out": (-1, "Still open but out of the window: close date moved past the forward period, or passed "
                       "without a close."),
    "won": (-1, "Won since the start (at the amount won)."),
    "lost": (-1, "Lost since the start."),
    "now": (1, "Open pipeline now: open deals closing in the rest of the forward period."),
}
COLUMNS = ["owner_id", "step", "value", "deals"]


def movement_window(ctx: CubeContext) -> dict[str, Any]:
    """The dates the movement runs between: from (the last day before the closed period), as_of, the window's first
    day at the start and now, and its last day (the end of the forward period)."""
    win = ctx.windows
    return {"from": win.closed.start - timedelta(days=1), "to": ctx.as_of, "start_first": win.closed.start,
            "now_first": win.remaining.start, "last": win.forward.end}


def pipeline_movement(ctx: CubeContext) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per scope, each step of the pipeline's movement (owner_id, step, value signed, deals), and what the report
    says about it (available, reason when not, the window's dates)."""
    window = movement_window(ctx)
    info: dict[str, Any] = {k: v.isoformat() for k, v in window.items()}
    if ctx.sorted_history() is None:
        info.update(available=False, reason="not available — needs opportunity_history (the pipeline as it stood "
                                            "at the start of the period)")
        return pd.DataFrame(columns=COLUMNS), info
    h = ctx.sorted_history()
    assert h is not None
    start = snapshot(ctx.data.table("opportunities"), ctx.data.tables["opportunity_history"], window["from"],
                     ctx.cfg.stages, sorted_history=history_until(h, window["from"]))
    deals = deal_steps(start, ctx.snapshot, window)
    totals = _scope_totals(ctx, deals, None, ["step"], ["value"])
    out = pd.DataFrame({"owner_id": totals["scope_id"].astype(str), "step": totals["step"].astype(str),
                        "value": totals["value"].astype("float64"), "deals": totals["n"].astype("int64")})
    info.update(available=True, reason=None)
    return complete_steps(out, ctx.owners["owner_id"].astype(str).tolist()), info


def history_until(h: SortedHistory, day: date) -> SortedHistory:
    """The sorted history `h` cut at the end of `day` (before h.as_of): each deal's rows up to then are the first
    of its run, and what they carry forward depends only on the rows before them, so no sort is needed again."""
    keep = h.changed_at < np.datetime64(day + timedelta(days=1), "ns")
    code = h.code[keep]
    return SortedHistory(as_of=day, ids=h.ids, stages=h.stages, code=code, first=first_of_run(code),
                         changed_at=h.changed_at[keep], stage_ff=h.stage_ff[keep], amount_ff=h.amount_ff[keep],
                         close_ff=h.close_ff[keep])


def _in_window(snap: pd.DataFrame, first: date, last: date) -> np.ndarray:
    """Open deals of `snap` with a close date from `first` to `last` (days, inclusive)."""
    close = pd.to_datetime(snap["close_date"]).dt.normalize()
    is_open = ~snap["is_closed"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    return is_open & (close >= pd.Timestamp(first)).fillna(False).to_numpy(dtype=bool) & \
        (close <= pd.Timestamp(last)).fillna(False).to_numpy(dtype=bool)


def _start_rows(start: pd.DataFrame, now: pd.DataFrame, day: date) -> np.ndarray:
    """Per deal of `now`, its row in `start` (the snapshot at the end of `day`; -1: created after). Both hold the
    opportunities table's rows created by their day, in the table's order: the start's are the now's created by
    `day`."""
    created = pd.to_datetime(now["created_date"]) if "created_date" in now else pd.Series(pd.NaT, index=now.index)
    existed = (created.isna() | (created < pd.Timestamp(day + timedelta(days=1)))).to_numpy(dtype=bool)
    at = np.full(len(now), -1, dtype=np.int64)
    if int(existed.sum()) == len(start):
        at[existed] = np.arange(len(start))
        return at
    ids = pd.Index(now["opportunity_id"].astype("string"))  # not the same rows: matched by id
    return pd.Index(start["opportunity_id"].astype("string")).get_indexer(ids)


def deal_steps(start: pd.DataFrame, now: pd.DataFrame, window: dict[str, Any]) -> pd.DataFrame:
    """The steps each deal makes (owner_id, step, value signed): `start` and `now` are the snapshots at the
    window's `from` and `to` days."""
    at = _start_rows(start, now, window["from"])
    existed = at >= 0
    in_start = np.zeros(len(now), dtype=bool)
    in_start[existed] = _in_window(start, window["start_first"], window["last"])[at[existed]]
    a0 = np.zeros(len(now))
    a0[existed] = start["amount"].astype("float64").fillna(0.0).to_numpy()[at[existed]]
    a1 = now["amount"].astype("float64").fillna(0.0).to_numpy()
    in_now = _in_window(now, window["now_first"], window["last"])
    closed = now["is_closed"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    won = now["is_won"].astype("boolean").fillna(False).to_numpy(dtype=bool) & closed
    close = pd.to_datetime(now["close_date"]).dt.normalize()
    through = closed & ((close >= pd.Timestamp(window["start_first"])) &
                        (close <= pd.Timestamp(window["to"]))).fillna(False).to_numpy(dtype=bool)
    entered = ~in_start & (in_now | through)
    exits = np.where(won, "won", np.where(closed, "lost", "pushed_out"))
    parts = [
        (in_start & (a1 > a0), "amount_up", a1 - a0),
        (in_start & (a1 < a0), "amount_down", a1 - a0),
        (in_start, "start", a0),
        (entered & ~existed, "created", a1),
        (entered & existed, "pulled_in", a1),
        ((in_start & ~in_now) | (entered & ~in_now), None, -a1),  # the exit step of `exits`
        (in_now, "now", a1),
    ]
    rows = [np.flatnonzero(mask) for mask, _, _ in parts]
    at_rows = np.concatenate(rows)
    step_of = np.concatenate([exits[r] if step is None else np.full(len(r), step, dtype=object)
                              for r, (_, step, _) in zip(rows, parts, strict=True)])
    return pd.DataFrame({"owner_id": now["owner_id"].array.take(at_rows), "step": step_of,
                         "value": np.concatenate([value[r] for r, (_, _, value) in zip(rows, parts, strict=True)])})


def complete_steps(df: pd.DataFrame, scopes: list[str]) -> pd.DataFrame:
    """Every step of every scope (0 and no deal where nothing moved), in waterfall order per scope."""
    grid = pd.MultiIndex.from_product([scopes, list(STEPS)], names=["owner_id", "step"])
    out = df.groupby(["owner_id", "step"])[["value", "deals"]].sum().reindex(grid, fill_value=0).reset_index()
    out["value"] = out["value"].astype("float64")
    out["deals"] = out["deals"].astype("int64")
    return out[COLUMNS]


def reconciles(steps: pd.DataFrame, tolerance: float = 1e-6) -> bool:
    """True when start plus every movement equals now (steps of one scope, `value` signed)."""
    v = steps.set_index("step")["value"]
    moved = sum(float(v.get(s, 0.0)) for s in STEPS if s not in ("start", "now"))
    return abs(float(v.get("start", 0.0)) + moved - float(v.get("now", 0.0))) <= tolerance * max(1.0, abs(v).max())
