"""The owner hierarchy: validation of manager links, scopes (own + direct reports, recursively)."""

from __future__ import annotations

import pandas as pd


def hierarchy_problems(owners: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Return (owners whose manager_id is unknown, cycles as lists of owner ids) of an owners table."""
    ids = set(owners["owner_id"].dropna().astype(str))
    managers = owners.dropna(subset=["manager_id"])
    managers = managers[managers["manager_id"].astype(str).str.len() > 0]
    unknown = sorted(managers.loc[~managers["manager_id"].astype(str).isin(ids), "owner_id"].astype(str).unique())
    parent = {str(o): str(m) for o, m in zip(managers["owner_id"], managers["manager_id"], strict=True)
              if str(m) in ids}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(parent):
        path: list[str] = []
        node: str | None = start
        while node is not None and state.get(node) is None:
            state[node] = 1
            path.append(node)
            node = parent.get(node)
        if node is not None and state.get(node) == 1:
            cycles.append(path[path.index(node):])
        for n in path:
            state[n] = 2
    return unknown, cycles
