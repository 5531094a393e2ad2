"""What the quarterly and annual sections weigh, worked out from the cube's rows: where bookings came from against
the trailing year, which direct reports need resources, and the year per team with its head count. The report's
`priorities` and `targets_and_structure` only format these."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from spm_lib.domain.org import org_of

__all__ = ["BEHIND_PCT", "THIN_COVERAGE", "bookings_shift", "resource_needs", "team_year"]

BEHIND_PCT = 90.0  # attainment below this (%) reads as behind
THIN_COVERAGE = 2.0  # pipeline coverage below this reads as thin


def bookings_shift(now: pd.DataFrame, ttm: pd.DataFrame) -> pd.DataFrame:
    """Bookings per dim value this period (`now`) and over the trailing year (`ttm`), both KPI breakdown rows:
    dim_value, value, value_ttm, share and share_ttm (% of each total) and shift (points), largest loss first."""
    df = now[["dim_value", "value"]].merge(ttm[["dim_value", "value"]], on="dim_value", how="outer",
                                            suffixes=("", "_ttm")).fillna(0.0)
    tot, tot_ttm = df["value"].sum(), df["value_ttm"].sum()
    df["share"] = df["value"] / tot * 100 if tot else float("nan")
    df["share_ttm"] = df["value_ttm"] / tot_ttm * 100 if tot_ttm else float("nan")
    df["shift"] = df["share"] - df["share_ttm"]
    return df.sort_values("shift")


def resource_needs(attainment: pd.DataFrame, coverage: pd.DataFrame) -> pd.DataFrame:
    """Per direct report (`attainment`: owner_id, name, value; `coverage`: owner_id, value of the forward period):
    value_att, value_cov and the reading: support (behind, thin pipeline), protect (behind, pipeline there), on track
    or no target."""
    df = attainment[["owner_id", "name", "value"]].merge(coverage[["owner_id", "value"]], on="owner_id", how="left",
                                                         suffixes=("_att", "_cov"))
    df["need"] = [_need(a, c) for a, c in zip(df["value_att"], df["value_cov"], strict=True)]
    return df


def _need(att: float, cov: float) -> str:
    if pd.isna(att):
        return "no target"
    if att < BEHIND_PCT:
        return "support: behind with thin pipeline" if pd.isna(cov) or cov < THIN_COVERAGE else \
            "protect: behind, pipeline there"
    return "on track"


def team_year(owners: pd.DataFrame, bookings: dict[str, pd.Series | None], teams: list[tuple[str, object]],
              next_targets: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The year per team: for each (owner id, name) of `teams`, the sales executives below them (at least one),
    their bookings row (`bookings`: owner id -> the closed period's bookings KPI row, None without), attainment (%)
    and bookings per executive. `owners`: the cube's owners (the current hierarchy).

    With `next_targets` (owner id -> next year's bookings target; NaN or absent: none): next year's split too:
    target_next, share_next (% of the teams' total), growth (% over this year's bookings), per_rep_next (target
    per executive at today's head count)."""
    org = org_of(owners)
    level = owners.set_index(owners["owner_id"].astype(str))["level"]
    rows = []
    for oid, name in teams:
        below = [o for o in org.subtree(oid) if o != oid]
        heads = sum(1 for o in below if level.get(o) == "rep") or 1
        bk = bookings.get(oid)
        rows.append({"name": name, "reps": heads, "bookings": bk["value"] if bk is not None else math.nan,
                     "attainment": bk["attainment"] * 100 if bk is not None and pd.notna(bk["attainment"])
                     else math.nan,
                     "per_rep": (bk["value"] / heads) if bk is not None and heads else math.nan})
    df = pd.DataFrame(rows)
    if next_targets is not None:
        df["target_next"] = [float(next_targets.get(oid, math.nan)) for oid, _ in teams]
        total = df["target_next"].sum(min_count=1)
        df["share_next"] = df["target_next"] / total * 100 if pd.notna(total) and total else math.nan
        df["growth"] = (df["target_next"] / df["bookings"].where(df["bookings"] > 0) - 1) * 100
        df["per_rep_next"] = df["target_next"] / df["reps"]
    return df
