"""Read-side slices of a cube: what the CLI prints and what report templates show (no computation here)."""

from __future__ import annotations

import pandas as pd

from spm_lib.engine.cube import Cube
from spm_lib.errors import OrgError, did_you_mean
from spm_lib.metrics import kpis as registry


def check_owner(cube: Cube, owner: str) -> None:
    """Raise OrgError (with a suggestion) when `owner` has no scope in the cube."""
    known = cube.kpis["owner_id"].astype(str).unique()
    if owner not in set(known):
        raise OrgError(f"unknown owner id {owner!r}{did_you_mean(owner, known)}")


def kpi_listing(cube: Cube, *, owner: str | None = None, level: str | None = None,
                closed_only: bool = True, dims: bool = False) -> pd.DataFrame:
    """KPI rows for one owner, one level or everyone; by default the closed and forward periods, and without the
    breakdowns (`dims`: with the rows per dim value too, e.g. leads by channel, and columns dim, dim_value)."""
    k = cube.kpis
    if owner is not None:
        check_owner(cube, owner)
        k = k[k["owner_id"] == owner]
    if level is not None:
        levels = sorted(cube.kpis["level"].dropna().unique())
        if level not in levels:
            raise OrgError(f"unknown level {level!r}{did_you_mean(level, levels)}; allowed: {', '.join(levels)}")
        k = k[k["level"] == level]
    if not dims:
        k = k[k["dim"].isna()]
    if closed_only:
        k = k[k["period"].isin([cube.meta["closed_period"], cube.meta["forward_period"]])
              | k["period"].str.endswith("-YTD")]
    labels = {i: kd.label for i, kd in registry.REGISTRY.items()}
    out = k.assign(label=k["kpi"].map(labels))
    cols = ["owner_id", "level", "period", "kpi", "label", *(["dim", "dim_value"] if dims else []), "value", "target",
            "attainment", "status", "na_reason"]
    return out[cols].reset_index(drop=True)


def trust_listing(cube: Cube, *, owner: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(failing or warning checks, offending opportunities) for one owner's scope or for everyone."""
    t = cube.trust
    rows = cube.trust_rows
    if owner is not None:
        check_owner(cube, owner)
        t = t[t["owner_id"] == owner]
        in_scope = cube.facts[cube.facts["scope_ids"].map(lambda ids: owner in list(ids))]["opportunity_id"]
        rows = rows[rows["opportunity_id"].isin(set(in_scope))]
    bad = t[t["status"].isin(["warn", "fail"])]
    cols = [c for c in ["owner_id", "level", "check", "status", "value", "unit", "count", "amount"] if c in bad]
    bad = bad[cols].sort_values(["owner_id", "check"]).reset_index(drop=True)
    rcols = [c for c in ["check", "opportunity_id", "name", "owner_id", "stage", "amount", "close_date", "detail"]
             if c in rows]
    rows = rows[rows["check"].isin(set(bad["check"]))][rcols].reset_index(drop=True)
    return bad, rows
