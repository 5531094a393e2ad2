"""The owner hierarchy: validation of manager links, scopes (own + direct reports, recursively).

An owner's scope is their own opportunities plus the scopes of their direct reports, recursively (SPEC §2), so a
player-coach manager's own deals count in their team and above. `Org.ancestors()` is the map the KPI cube joins
facts through: one row per owner and each scope it counts in, itself included.

Team moves: when `owners` carries `valid_from`/`valid_to` (inclusive days; empty = open-ended), an owner may have
several rows with different managers and non-overlapping validity; the ancestor rows then carry the validity of
the whole chain, so a fact dated d joins the scopes valid on d. The other methods (`direct_reports`, `subtree`,
`chain`, …) describe the current hierarchy: each owner's row with the latest `valid_from`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd

from spm_lib.errors import OrgError, did_you_mean, format_ids
from spm_lib.util.frames import isin

ScopeKind = Literal["own", "team", "unit", "org"]
SCOPE_KIND: dict[str, ScopeKind] = {"rep": "own", "manager": "team", "director": "unit", "executive": "org"}
LEVEL_OF_SCOPE: dict[ScopeKind, str] = {kind: level for level, kind in SCOPE_KIND.items()}
ANCESTOR_COLUMNS = ["owner_id", "scope_id", "distance", "valid_from", "valid_to"]
_LOW, _HIGH = pd.Timestamp.min.ceil("D"), pd.Timestamp.max.floor("D")  # stand-ins for open-ended validity


def hierarchy_problems(owners: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Return (owners whose manager_id is unknown, cycles as lists of owner ids) of an owners table."""
    if not HierarchyScreen(owners["owner_id"], owners["manager_id"]).may_fail(np.ones(len(owners), dtype=bool)):
        return [], []
    ids = set(owners["owner_id"].dropna().astype(str))
    managers = owners.dropna(subset=["manager_id"])
    managers = managers[managers["manager_id"].astype(str).str.len() > 0]
    unknown = sorted(managers.loc[~isin(managers["manager_id"].astype(str), ids), "owner_id"].astype(str).unique())
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


class HierarchyScreen:
    """A quick numpy screen of an owners table: may the rows valid on a day hold an unknown manager or a cycle?

    Built once per table; `may_fail` costs microseconds per day, so `hierarchy_problems` (exact, with the ids to
    report) only runs on the days that need it.
    """

    def __init__(self, owner_id: pd.Series, manager_id: pd.Series) -> None:
        owner, manager = owner_id.astype("string"), manager_id.astype("string")
        codes, uniques = pd.factorize(pd.concat([owner, manager], ignore_index=True))
        self.owner, self.manager = codes[: len(owner)], codes[len(owner):]
        self.has_manager = (self.manager >= 0) & (manager.str.len() > 0).fillna(False).to_numpy(dtype=bool)
        self.size = len(uniques)

    def may_fail(self, valid: np.ndarray) -> bool:
        """False when the rows where `valid` holds surely have every manager among their owners and no cycle."""
        present = np.zeros(self.size + 1, dtype=bool)  # slot -1 (no id) stays False
        present[self.owner[valid]] = True
        present[-1] = False
        links = valid & self.has_manager
        child, parent = self.owner[links], self.manager[links]
        if not present[parent].all() or (child < 0).any() or np.bincount(child, minlength=1).max(initial=0) > 1:
            return True
        up = np.full(self.size, -1, dtype=np.int64)
        up[child] = parent
        steps = 1
        while steps <= self.size:  # pointer doubling: up[x] becomes x's 2**k-th manager (-1 past the top)
            up = np.where(up >= 0, up[np.maximum(up, 0)], -1)
            steps *= 2
            if (up < 0).all():  # no chain of 2**k managers: no cycle
                return False
        return bool((up >= 0).any())


def _clean_ids(s: pd.Series) -> pd.Series:
    """Ids as stripped strings, empty text as missing."""
    out = s.astype("string").str.strip()
    return out.mask(out == "")


def _normalise(owners: pd.DataFrame) -> pd.DataFrame:
    """owner_id, manager_id, name, level, valid_from, valid_to with clean ids and datetime validity."""
    for col in ("owner_id", "manager_id"):
        if col not in owners.columns:
            raise OrgError(f"table owners: column {col!r} is missing; it needs owner_id and manager_id "
                           "(manager_id empty at the top)")
    df = pd.DataFrame({"owner_id": _clean_ids(owners["owner_id"]), "manager_id": _clean_ids(owners["manager_id"])})
    bad = df["owner_id"].isna()
    if bad.any():
        raise OrgError(f"table owners: {int(bad.sum())} row(s) without owner_id (rows "
                       f"{format_ids(df.index[bad])}); give every owner an id")
    df["name"] = (owners["name"].astype("string") if "name" in owners.columns
                  else pd.Series(pd.NA, index=df.index, dtype="string")).fillna(df["owner_id"])
    df["level"] = (owners["level"].astype("string").str.strip() if "level" in owners.columns
                   else pd.Series(pd.NA, index=df.index, dtype="string"))
    for col in ("valid_from", "valid_to"):
        df[col] = (pd.to_datetime(owners[col]).dt.normalize().astype("datetime64[ns]") if col in owners.columns
                   else pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]"))
    return df.reset_index(drop=True)


def overlapping_owners(df: pd.DataFrame) -> list[str]:
    """Owner ids with two rows whose validity intervals overlap (no validity = always valid)."""
    s = df.assign(_vf=df["valid_from"].fillna(_LOW), _vt=df["valid_to"].fillna(_HIGH)).sort_values(
        ["owner_id", "_vf"], kind="stable")
    s["_pe"] = s.groupby("owner_id")["_vt"].shift(1)
    prev_end = s.groupby("owner_id")["_pe"].cummax()  # the latest end of every earlier row of the owner
    return sorted(s.loc[prev_end.notna() & (s["_vf"] <= prev_end), "owner_id"].astype(str).unique())


def _validate(df: pd.DataFrame) -> None:
    """Raise OrgError for inverted validity, overlapping rows of one owner, unknown managers or cycles."""
    inverted = df["valid_from"].notna() & df["valid_to"].notna() & (df["valid_from"] > df["valid_to"])
    if inverted.any():
        raise OrgError(f"table owners: valid_from is after valid_to for owner(s) "
                       f"{format_ids(df.loc[inverted, 'owner_id'])}; fix the dates (both days are inclusive)")
    overlap = overlapping_owners(df)
    if overlap:
        raise OrgError(f"table owners: owner(s) {format_ids(overlap)} appear in several rows valid on the same day; "
                       "keep one row per owner, or give the rows non-overlapping valid_from/valid_to "
                       "(a team move ends the old row the day before the new one starts)")
    # check the hierarchy as it stands on every day it changes (once when there are no validity dates)
    vf, vt = df["valid_from"].fillna(_LOW), df["valid_to"].fillna(_HIGH)
    changes = pd.concat([vf, df["valid_to"].dropna() + pd.Timedelta(days=1)]).drop_duplicates().sort_values()
    screen = HierarchyScreen(df["owner_id"], df["manager_id"])
    vf_ns, vt_ns = vf.to_numpy(dtype="datetime64[ns]"), vt.to_numpy(dtype="datetime64[ns]")
    for day in changes:
        valid = (vf_ns <= day.to_datetime64()) & (vt_ns >= day.to_datetime64())
        if not screen.may_fail(valid):
            continue
        on_day = df[valid]
        unknown, cycles = hierarchy_problems(on_day)
        when = "" if day == _LOW else f" on {pd.Timestamp(day).date()}"
        if unknown:
            bad = on_day[on_day["owner_id"].isin(unknown)]
            pairs = [f"{o} -> {m}" for o, m in zip(bad["owner_id"], bad["manager_id"], strict=True)]
            hint = did_you_mean(str(bad["manager_id"].iloc[0]), df["owner_id"].unique())
            raise OrgError(f"table owners, column manager_id: unknown manager{when} for owner(s) "
                           f"{format_ids(pairs)}{hint}; every manager_id must be an owner_id valid on the same days "
                           "(leave it empty at the top)")
        if cycles:
            shown = "; ".join(" -> ".join([*c, c[0]]) for c in cycles)
            raise OrgError(f"table owners, column manager_id: the hierarchy has a cycle{when}: {shown}; "
                           "break it by giving one of these owners another manager (empty at the top)")


@dataclass(frozen=True, eq=False)
class Org:
    """The owner hierarchy of a validated owners table, with its ancestor map for scope joins."""

    rows: pd.DataFrame  # one row per owner and validity interval: owner_id, manager_id, name, level, valid_*
    current: pd.DataFrame  # one row per owner (its latest validity), indexed by owner_id
    time_dependent: bool

    @classmethod
    def from_owners(cls, owners: pd.DataFrame) -> Org:
        """Build the hierarchy from an owners table; raise OrgError on unknown managers, cycles or overlaps."""
        df = _normalise(owners)
        if df.empty:
            raise OrgError("table owners is empty: the hierarchy needs at least one owner")
        _validate(df)
        time_dependent = bool(df["valid_from"].notna().any() or df["valid_to"].notna().any())
        current = (df.assign(_vf=df["valid_from"].fillna(_LOW)).sort_values(["owner_id", "_vf"], kind="stable")
                   .drop_duplicates("owner_id", keep="last").drop(columns="_vf").set_index("owner_id"))
        return cls(rows=df, current=current, time_dependent=time_dependent)

    # ------------------------------------------------------------ the ancestor map
    def ancestors(self, as_of: date | None = None) -> pd.DataFrame:
        """(owner_id, scope_id, distance, valid_from, valid_to): every owner with each scope it counts in.

        One row per owner and ancestor, the owner itself included at distance 0, with the days on which the whole
        chain between them holds (NaT = open-ended). Given `as_of`, only the rows valid on that day.
        """
        links = self.rows[["owner_id", "manager_id", "valid_from", "valid_to"]].assign(
            _vf=lambda d: d["valid_from"].fillna(_LOW), _vt=lambda d: d["valid_to"].fillna(_HIGH))
        frontier = pd.DataFrame({"owner_id": links["owner_id"], "scope_id": links["owner_id"], "distance": 0,
                                 "_vf": links["_vf"], "_vt": links["_vt"]})
        parts = [frontier]
        up = links[links["manager_id"].notna()].rename(columns={"owner_id": "scope_id", "_vf": "_lf", "_vt": "_lt"})
        for _ in range(self.rows["owner_id"].nunique()):
            step = frontier.merge(up[["scope_id", "manager_id", "_lf", "_lt"]], on="scope_id", how="inner")
            step = pd.DataFrame({"owner_id": step["owner_id"], "scope_id": step["manager_id"],
                                 "distance": step["distance"] + 1,
                                 "_vf": step[["_vf", "_lf"]].max(axis=1), "_vt": step[["_vt", "_lt"]].min(axis=1)})
            frontier = step[step["_vf"] <= step["_vt"]]
            if frontier.empty:
                break
            parts.append(frontier)
        else:
            raise OrgError("table owners: the hierarchy is deeper than the number of owners (a cycle?); "
                           "check manager_id")
        out = pd.concat(parts, ignore_index=True)
        if as_of is not None:
            day = pd.Timestamp(as_of)
            out = out[(out["_vf"] <= day) & (out["_vt"] >= day)]
        out = out.assign(valid_from=out["_vf"].mask(out["_vf"] == _LOW).astype("datetime64[ns]"),
                         valid_to=out["_vt"].mask(out["_vt"] == _HIGH).astype("datetime64[ns]"),
                         owner_id=out["owner_id"].astype("string"), scope_id=out["scope_id"].astype("string"),
                         distance=out["distance"].astype("int64"))
        return out[ANCESTOR_COLUMNS].sort_values(["owner_id", "distance", "valid_from"], kind="stable",
                                                 na_position="first").reset_index(drop=True)

    def at(self, as_of: date) -> Org:
        """The hierarchy as it stood on `as_of` (owners not valid that day left out), without validity dates."""
        day = pd.Timestamp(as_of)
        r = self.rows
        valid = r[(r["valid_from"].isna() | (r["valid_from"] <= day)) & (r["valid_to"].isna() | (r["valid_to"] >= day))]
        return Org.from_owners(valid.drop(columns=["valid_from", "valid_to"]))

    # ------------------------------------------------------------ the current hierarchy
    @cached_property
    def _current_ancestors(self) -> pd.DataFrame:
        cur = self.current.reset_index()[["owner_id", "manager_id", "name", "level"]]
        open_ended = pd.Series(pd.NaT, index=cur.index, dtype="datetime64[ns]")
        return Org(rows=cur.assign(valid_from=open_ended, valid_to=open_ended), current=self.current,
                   time_dependent=False).ancestors()

    @property
    def owner_ids(self) -> list[str]:
        """Every owner id, sorted."""
        return sorted(self.current.index.astype(str))

    def check_owner(self, owner_id: str) -> str:
        """Return `owner_id` (stripped) when it is an owner, else raise OrgError suggesting the closest id."""
        key = str(owner_id).strip()
        if key in self.current.index:
            return key
        by_name = self.current.index[self.current["name"].astype(str) == key]
        hint = (f" ({key!r} is the name of owner {by_name[0]!r}: use the id)" if len(by_name)
                else did_you_mean(key, self.current.index))
        raise OrgError(f"unknown owner {key!r}{hint}; owner ids come from table owners, column owner_id")

    def direct_reports(self, owner_id: str) -> list[str]:
        """Owners whose current manager is `owner_id`, sorted."""
        key = self.check_owner(owner_id)
        return sorted(self.current.index[self.current["manager_id"] == key].astype(str))

    def subtree(self, owner_id: str) -> list[str]:
        """`owner_id` and everyone below them, nearest first (the owners of their scope)."""
        key = self.check_owner(owner_id)
        a = self._current_ancestors
        below = a[a["scope_id"] == key].sort_values(["distance", "owner_id"])
        return [str(o) for o in below["owner_id"]]

    def chain(self, owner_id: str) -> list[str]:
        """`owner_id` and their managers up to the top, in that order."""
        key = self.check_owner(owner_id)
        a = self._current_ancestors
        return [str(s) for s in a[a["owner_id"] == key].sort_values("distance")["scope_id"]]

    def level_or_tree(self, owner_id: str) -> str:
        """The owner's level, or when not given the one its place in the tree stands for (see `scope_kind`)."""
        return self.level_of(owner_id) or LEVEL_OF_SCOPE[self.scope_kind(owner_id)]

    def level_of(self, owner_id: str) -> str | None:
        """The owner's level (rep/manager/director/executive or the company's own names); None when not given."""
        level: Any = self.current.at[self.check_owner(owner_id), "level"]
        return None if pd.isna(level) else str(level)

    def top_ids(self) -> list[str]:
        """Owners without a manager in the current hierarchy, sorted."""
        return sorted(self.current.index[self.current["manager_id"].isna()].astype(str))

    @property
    def depth(self) -> int:
        """Number of levels of the current hierarchy (1 for a single owner)."""
        return int(self._current_ancestors["distance"].max()) + 1

    def scope_kind(self, owner_id: str) -> ScopeKind:
        """What the owner's numbers cover: own (rep), team (manager), unit (director), org (executive).

        Levels outside rep/manager/director/executive (or missing) are read from the tree: the top is `org`,
        an owner without reports `own`, one whose reports have no reports `team`, anyone else `unit`.
        """
        return self._scope_kinds[self.check_owner(owner_id)]

    @cached_property
    def _scope_kinds(self) -> dict[str, ScopeKind]:
        """`scope_kind` of every owner, worked out once for the whole tree."""
        cur = self.current
        managers = cur["manager_id"]
        has_reports = cur.index.isin(managers.dropna())
        above_managers = cur.index.isin(managers[has_reports].dropna())  # a report of theirs has reports
        kinds: dict[str, ScopeKind] = {}
        for owner, level, manager, reports, above in zip(cur.index, cur["level"], managers, has_reports,
                                                         above_managers, strict=True):
            named = None if pd.isna(level) else SCOPE_KIND.get(str(level).lower())
            kinds[str(owner)] = named or ("org" if pd.isna(manager) else "unit" if above
                                          else "team" if reports else "own")
        return kinds


_ORGS: dict[int, tuple[pd.DataFrame, Org]] = {}


def org_of(owners: pd.DataFrame) -> Org:
    """Org.from_owners, built once per owners table object (live kernels check subtrees on every request)."""
    hit = _ORGS.get(id(owners))
    if hit is None or hit[0] is not owners:
        if len(_ORGS) > 4:
            _ORGS.clear()
        hit = (owners, Org.from_owners(owners))
        _ORGS[id(owners)] = hit
    return hit[1]
