"""One owner's slice of a computed cube: its KPI rows and the positions of its scope's deals, each indexed once
per cube (a report reads its owner's rows many times; a selection over the whole cube costs more as it grows)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spm_lib.engine.cube import Cube

__all__ = ["owner_kpis", "scope_positions"]

_SCOPE_INDEX: dict[int, dict[str, np.ndarray]] = {}
_KPIS_BY_OWNER: dict[int, dict[str, pd.DataFrame]] = {}
_NO_ROWS = np.empty(0, dtype=np.intp)


def owner_kpis(cube: Cube, owner_id: str) -> pd.DataFrame:
    """The KPI rows of one owner (the cube's rows split by owner once per cube)."""
    split = _KPIS_BY_OWNER.get(id(cube))
    if split is None:
        split = {str(k): g for k, g in cube.kpis.groupby("owner_id", sort=False)}
        _KPIS_BY_OWNER.clear()
        _KPIS_BY_OWNER[id(cube)] = split
    return split.get(owner_id, cube.kpis.iloc[0:0])


def scope_positions(cube: Cube, owner_id: str) -> np.ndarray:
    """Row positions in cube.facts of the deals in `owner_id`'s scope (an index built once per cube)."""
    index = _SCOPE_INDEX.get(id(cube))
    if index is None:
        exploded = cube.facts["scope_ids"].explode()
        pos = pd.Series(range(len(cube.facts)), index=cube.facts.index).reindex(exploded.index).to_numpy()
        groups = pd.Series(pos).groupby(exploded.astype(str).to_numpy()).groups
        index = {str(k): pos[list(v)] for k, v in groups.items()}
        _SCOPE_INDEX.clear()
        _SCOPE_INDEX[id(cube)] = index
    return index.get(owner_id, _NO_ROWS)
