"""The tables of a report as plain frames, read from the cube: the sheets of `spm kpis --format xlsx`.

For one owner (`--owner`): their KPIs, their scope's trust checks and deals to fix (the report's and the trust
CSV's selection, engine.trust.scope_offenders), their direct reports and their open pipeline. For a level or
everyone: the KPIs, the trust checks and the deals flagged by a check that warns or fails.
"""

from __future__ import annotations

import pandas as pd

from spm_lib.engine.cube import Cube
from spm_lib.engine.trust import checks_with_status, scope_offenders, worst_by_owner
from spm_lib.store.views import check_owner, kpi_listing

TRUST_COLUMNS = ["owner_id", "level", "check", "label", "status", "value", "unit", "count", "amount", "na_reason",
                 "definition"]
DEAL_COLUMNS = ["check", "opportunity_id", "name", "owner_id", "stage", "amount", "close_date", "detail"]
PIPELINE_COLUMNS = ["opportunity_id", "name", "owner_id", "account_id", "stage", "amount", "close_date"]

__all__ = ["report_tables"]


def _columns(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """`df`'s `columns` that it has, in that order, with a fresh index."""
    return df[[c for c in columns if c in df.columns]].reset_index(drop=True)


def _scope(cube: Cube, owner: str) -> pd.DataFrame:
    return cube.facts[cube.facts["scope_ids"].map(lambda ids: owner in list(ids))]


def _direct_reports(cube: Cube, owner: str) -> pd.DataFrame:
    """One row per direct report of `owner`: closed-period bookings against target, win rate, forward coverage and
    the trust status of their scope, largest bookings first."""
    reports = cube.owners[cube.owners["manager_id"] == owner]
    out = reports[["owner_id", "name", "level"]].copy()
    k = cube.kpis[cube.kpis["dim"].isna() & cube.kpis["owner_id"].isin(out["owner_id"])]

    def rows(kpi: str, period: str) -> pd.DataFrame:
        return k[(k["kpi"] == kpi) & (k["period"] == period)].set_index("owner_id")

    closed, forward = str(cube.meta["closed_period"]), str(cube.meta["forward_period"])
    bookings = rows("bookings", closed)
    for column in ("value", "target", "attainment", "status"):
        out["bookings" if column == "value" else column] = out["owner_id"].map(bookings[column])
    out["win_rate"] = out["owner_id"].map(rows("win_rate", closed)["value"])
    out["pipeline_coverage"] = out["owner_id"].map(rows("pipeline_coverage", forward)["value"])
    out["trust"] = out["owner_id"].map(worst_by_owner(cube.trust)).fillna("pass")
    return out.sort_values(["bookings", "owner_id"], ascending=[False, True], na_position="last").reset_index(drop=True)


def report_tables(cube: Cube, *, owner: str | None = None, level: str | None = None, closed_only: bool = True,
                  dims: bool = False) -> dict[str, pd.DataFrame]:
    """Sheet name -> table: KPIs (as `spm kpis` lists them), trust checks, deals to fix; for one owner also their
    direct reports (when they have any) and open pipeline. A table without rows keeps its header."""
    tables = {"KPIs": kpi_listing(cube, owner=owner, level=level, closed_only=closed_only, dims=dims)}
    trust = cube.trust
    if owner is not None:
        check_owner(cube, owner)
        trust = trust[trust["owner_id"] == owner]
    elif level is not None:
        trust = trust[trust["level"] == level]
    tables["Trust checks"] = _columns(trust.sort_values(["owner_id", "check"]), TRUST_COLUMNS)
    if owner is None:
        flagged = set(trust.loc[trust["status"].isin(["warn", "fail"]), "check"])
        deals = cube.trust_rows[cube.trust_rows["check"].isin(flagged)]
        tables["Deals to fix"] = _columns(deals.sort_values(["check", "amount"], ascending=[True, False]),
                                          DEAL_COLUMNS)
        return tables
    scope = _scope(cube, owner)
    tables["Deals to fix"] = _columns(scope_offenders(cube.trust_rows, scope, checks_with_status(cube.trust, owner)),
                                      DEAL_COLUMNS)
    team = _direct_reports(cube, owner)
    if not team.empty:
        tables["Direct reports"] = team
    is_open = ~scope["is_closed"].astype("boolean").fillna(False).astype(bool)
    tables["Open pipeline"] = _columns(scope[is_open].sort_values(["amount", "opportunity_id"],
                                                                  ascending=[False, True], na_position="last"),
                                       PIPELINE_COLUMNS)
    return tables
