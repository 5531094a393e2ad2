"""The weekly and monthly push list, worked out from the cube's facts: the open deals that can still close in the
rest of the forward period (dead ones left out: engine.trust.dead_deals), and for managers and up the same deals
per direct report (a manager's reps, a director's or executive's teams). The report's `deals_to_push` only formats
these."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spm_lib.engine.trust import dead_deals

__all__ = ["PushList", "push_list", "push_by_report", "report_of"]


@dataclass(frozen=True)
class PushList:
    """The deals to push (`deals`: largest first, with `p` the stage's win probability and `weighted` the amount
    times `p`) and the deals of the same window left out as dead (`dead`: no update for too long)."""

    deals: pd.DataFrame
    dead: pd.DataFrame


def push_list(facts: pd.DataFrame, trust_rows: pd.DataFrame, probabilities: pd.DataFrame, first: pd.Timestamp,
              last: pd.Timestamp) -> PushList:
    """The open deals of `facts` (one owner's scope) with a close date from `first` to `last`, split into those
    to push and the dead ones (a check of engine.trust.DEAD_CHECKS flags them in `trust_rows`)."""
    open_ = facts[~facts["is_closed"].fillna(False).astype(bool) & facts["close_date"].notna()]
    soon = open_[(open_["close_date"] >= first) & (open_["close_date"] <= last)]
    dead = dead_deals(trust_rows, soon)
    prob = probabilities.set_index("stage")["probability"]
    keep = soon[~dead]
    keep = keep.assign(p=keep["stage"].map(prob).astype("float64"))  # float even when empty (text stages)
    keep = keep.assign(weighted=keep["amount"] * keep["p"])
    order = ["amount", "opportunity_id"]
    return PushList(keep.sort_values(order, ascending=[False, True], na_position="last").reset_index(drop=True),
                    soon[dead].sort_values(order, ascending=[False, True]).reset_index(drop=True))


def report_of(deals: pd.DataFrame, owner_id: str, report_ids: list[str]) -> pd.Series:
    """For each deal of `owner_id`'s scope, the direct report (of `report_ids`) whose scope holds it, or `owner_id`
    for the owner's own deals (read from each deal's ancestor owner ids, `scope_ids`)."""
    mine = set(report_ids)

    def one(ids: object) -> str:
        found = [str(i) for i in (ids if isinstance(ids, list | np.ndarray) else []) if str(i) in mine]
        return found[0] if found else owner_id

    return pd.Series([one(ids) for ids in deals["scope_ids"]], index=deals.index, dtype=object)


def push_by_report(deals: pd.DataFrame, owner_id: str, owner_name: str, reports: pd.DataFrame) -> pd.DataFrame:
    """The push list per direct report (`reports`: owner_id, name), and the owner's own deals when they have some:
    owner_id, name, deals (count), value, weighted and largest (the deals' opportunity ids, largest first);
    every direct report listed (a team with nothing to push is a finding too), most value first."""
    ids = reports["owner_id"].astype(str).tolist()
    team = report_of(deals, owner_id, ids)
    rows = []
    for oid, name in [*zip(ids, reports["name"], strict=True), (owner_id, f"{owner_name} (own deals)")]:
        d = deals[team == oid]
        if oid == owner_id and d.empty:
            continue
        rows.append({"owner_id": oid, "name": str(name), "deals": len(d), "value": float(d["amount"].sum()),
                     "weighted": float(d["weighted"].sum()), "largest": d["opportunity_id"].astype(str).tolist()})
    out = pd.DataFrame(rows, columns=["owner_id", "name", "deals", "value", "weighted", "largest"])
    return out.sort_values(["value", "name"], ascending=[False, True]).reset_index(drop=True)
