"""Everything one cube computation shares: config, data, calendar, windows, org, as-of snapshot, DuckDB views."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date
from typing import cast

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from spm_lib.config import Config
from spm_lib.data.asof import SortedHistory, snapshot, sort_history
from spm_lib.domain.contract import Dataset, empty_table
from spm_lib.domain.org import Org
from spm_lib.domain.periods import CadenceWindows, FiscalCalendar
from spm_lib.util.frames import nat_last_key
from spm_lib.util.tasks import in_background

KPI_COLUMNS = ["scope", "owner_id", "level", "period", "kpi", "dim", "dim_value", "value", "target",
               "attainment", "status", "kind", "available", "na_reason"]

MATERIALISED = frozenset({"ancestors", "owners"})  # registered as DuckDB tables, not views of frames


@dataclass
class CubeContext:
    """The inputs of one cube run (one as-of, one cadence), prepared once and shared by every computation.

    DuckDB views registered on `con` (all columns are contract columns unless noted):
      opp          the as-of snapshot (asof.snapshot) of opportunities: + pushes, amount_decreased,
                   stage_entered_at, max_stage_index, days_in_stage, asof_from_history, and snapshot_row (the
                   deal's row number in `snapshot`)
      ancestors    org.ancestors(): owner_id, scope_id, distance, valid_from, valid_to
      owners       owner_id, manager_id, name, level, email
      <table>      every other contract table present in the dataset, under its contract name
    """

    cfg: Config
    data: Dataset
    cadence: str
    as_of: date
    calendar: FiscalCalendar
    windows: CadenceWindows
    org: Org
    snapshot: pd.DataFrame
    ancestors: pd.DataFrame
    con: duckdb.DuckDBPyConnection
    owners: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    cache: dict[str, object] = field(default_factory=dict)  # things computed once per run (e.g. reached stages)

    def sorted_history(self) -> SortedHistory | None:
        """The history up to as_of, sorted and integer-coded (asof.sort_history), built once per run; None without."""
        if "sorted_history" not in self.cache:
            history = self.data.tables.get("opportunity_history")
            has = history is not None and not history.empty
            self.cache["sorted_history"] = sort_history(history, self.as_of) if history is not None and has else None
        return cast("SortedHistory | None", self.cache["sorted_history"])

    def history_codes(self) -> np.ndarray:
        """Per snapshot deal, its opportunity code in `sorted_history()` (-1: no history row); built once."""
        if "history_codes" not in self.cache:
            h = self.sorted_history()
            self.cache["history_codes"] = (h.codes_of(self.snapshot["opportunity_id"]) if h is not None
                                           else np.full(len(self.snapshot), -1, dtype=np.int64))
        return cast(np.ndarray, self.cache["history_codes"])

    def last_activity(self) -> np.ndarray:
        """Per snapshot deal (rows of `snapshot`), the day of its last activity up to as_of (NaT: none); built once
        (build_context starts it in the background)."""
        found = self.cache.get("last_activity")
        if found is None:
            found = self.cache["last_activity"] = last_activity_day(self.snapshot, self.data, self.as_of)
        elif isinstance(found, Future):
            found = self.cache["last_activity"] = found.result()
        return cast(np.ndarray, found)

    def scope_join(self, alias: str, date_expr: str) -> str:
        """SQL joining `ancestors a` to fact alias `alias` on owner and on the hierarchy valid at `date_expr`."""
        return (f"JOIN ancestors a ON a.owner_id = {alias}.owner_id "
                f"AND (a.valid_from IS NULL OR {date_expr} >= a.valid_from) "
                f"AND (a.valid_to IS NULL OR {date_expr} <= a.valid_to)")


def last_activity_day(snapshot: pd.DataFrame, data: Dataset, as_of: date) -> np.ndarray:
    """`CubeContext.last_activity`: the activities joined to the snapshot deals and grouped in DuckDB (own
    connection: two threads on ids as text, instead of hashing every activity's id in Python's thread; the GIL is
    free meanwhile, so build_context runs it beside the rest of the cube)."""
    nat = np.iinfo(np.int64).min  # NaT as int64
    out = np.full(len(snapshot), nat, dtype=np.int64)
    act = data.tables.get("activities")
    if act is None or "opportunity_id" not in act or "date" not in act or not len(out):
        return out.view("datetime64[ns]")
    end = (pd.Timestamp(as_of) + pd.Timedelta(days=1)).isoformat()
    with duckdb.connect() as con:
        con.register("acts", _scannable(pd.DataFrame({"opportunity_id": act["opportunity_id"].astype(str),
                                                      "date": pd.to_datetime(act["date"]).astype("datetime64[ns]")})))
        con.register("deals", _scannable(pd.DataFrame({"opportunity_id": snapshot["opportunity_id"].astype(str),
                                                       "row": np.arange(len(out))})))
        last = con.execute(f"""
            SELECT min(d.row) AS row, max(CAST(a.date AS DATE)) AS day  -- a deal listed twice: its first row
            FROM acts a JOIN deals d ON d.opportunity_id = a.opportunity_id
            WHERE a.date < TIMESTAMP '{end}' GROUP BY a.opportunity_id""").fetchnumpy()
    out[np.asarray(last["row"], dtype=np.int64)] = np.asarray(last["day"]).astype("datetime64[ns]").view("int64")
    return out.view("datetime64[ns]")


def as_of_date(value: date | str) -> date:
    """Parse an as-of date given as a date or YYYY-MM-DD text."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def latest_change(opportunities: pd.DataFrame, history: pd.DataFrame | None) -> date | None:
    """The latest day anything changed: a deal created, modified or closed (`is_closed` known), or a history entry."""
    days = []
    for column in ("created_date", "last_modified_date", "close_date"):
        if column not in opportunities:
            continue
        values = pd.to_datetime(opportunities[column], errors="coerce")
        if column == "close_date":  # an open deal's close date is a plan, not a change
            values = values[opportunities["is_closed"].fillna(False).astype(bool)] if "is_closed" in opportunities \
                else values.iloc[0:0]
        if values.notna().any():
            days.append(values.max().date())
    if history is not None and "changed_at" in history and history["changed_at"].notna().any():
        days.append(pd.to_datetime(history["changed_at"], errors="coerce").max().date())
    return max(days) if days else None


def data_end_note(opportunities: pd.DataFrame, history: pd.DataFrame | None, closed_start: date,
                  as_of: date) -> str | None:
    """A note when the data ends before the run's closed period begins (every figure would be 0), None otherwise."""
    last = latest_change(opportunities, history)
    if last is None or last >= closed_start:
        return None
    return (f"The data ends on {last}: the latest deal change is before this run's closed period, so its figures "
            f"are empty. Pass --as-of {last} (or another day inside the data) instead of {as_of}.")


def build_context(cfg: Config, data: Dataset, cadence: str, as_of: date) -> CubeContext:
    """Prepare the shared inputs of one cube run and register them as DuckDB views."""
    calendar = FiscalCalendar.from_config(cfg)
    windows = calendar.windows(cadence, as_of)
    org = Org.from_owners(data.table("owners"))
    # every contract column (a source without `email` still has the column, empty); a level not given is read
    # from the tree (the template of an owner without reports is the rep's), see Org.scope_kind
    owners = all_columns("owners", data.table("owners").drop_duplicates("owner_id", keep="last").reset_index(drop=True))
    owners["level"] = owners["level"].fillna(owners["owner_id"].map(org.level_or_tree))
    owners["name"] = owners["name"].fillna(owners["owner_id"])  # shown by id when the source has no name
    history = data.tables.get("opportunity_history")
    notes: list[str] = []
    if history is None or history.empty:
        notes.append("No opportunity history: numbers use each deal's current stage, amount and close date.")
    if not org.time_dependent:
        notes.append("No owner validity dates: the current hierarchy applies to all periods.")
    sorted_history = sort_history(history, as_of) if history is not None and not history.empty else None
    snap = snapshot(data.table("opportunities"), history, as_of, cfg.stages, sorted_history=sorted_history)
    ended = data_end_note(snap, history, windows.closed.start, as_of)
    if ended:
        notes.insert(0, ended)
    last_activity = in_background(last_activity_day, snap, data, as_of)  # in DuckDB, beside what follows
    account_codes = _account_codes(snap)
    snap = _enrich_snapshot(snap, data, account_codes)
    ancestors = org.ancestors()
    con = duckdb.connect()
    ctx = CubeContext(cfg=cfg, data=data, cadence=cadence, as_of=as_of, calendar=calendar, windows=windows,
                      org=org, snapshot=snap, ancestors=ancestors, con=con, owners=owners, notes=notes,
                      cache={"sorted_history": sorted_history,  # shared with the trust checks
                             "last_activity": last_activity, "account_codes": account_codes})
    _register_views(ctx)
    return ctx


AccountCodes = tuple[np.ndarray, pd.Index]  # pd.factorize of the snapshot's account_id: (codes, uniques)


def _account_codes(snap: pd.DataFrame) -> AccountCodes:
    """Each snapshot deal's account as a code into the distinct account ids (-1: none; all -1 without the column)."""
    if "account_id" not in snap.columns:
        return np.full(len(snap), -1, dtype=np.intp), pd.Index([], dtype=object)
    codes, uniques = pd.factorize(snap["account_id"])
    return codes, pd.Index(uniques)


def _enrich_snapshot(snap: pd.DataFrame, data: Dataset, accounts: AccountCodes) -> pd.DataFrame:
    """Add segment (from accounts) and is_expansion (account had a won deal before this deal was created);
    `accounts`: _account_codes(snap)."""
    snap = snap.copy(deep=False)  # new columns only: the caller's frame is not changed
    codes, uniques = accounts
    if data.has("accounts", "segment") and "account_id" in snap.columns:
        seg = data.table("accounts").drop_duplicates("account_id").set_index("account_id")["segment"]
        at = seg.index.get_indexer(uniques)  # like Series.map: each distinct account looked up once
        per_deal = np.where(codes >= 0, at[np.maximum(codes, 0)] if len(at) else -1, -1)
        snap["segment"] = pd.Series(seg.array.take(per_deal, allow_fill=True), index=snap.index).astype("string")
    else:
        snap["segment"] = pd.Series(pd.NA, index=snap.index, dtype="string")
    if (codes >= 0).any() and "created_date" in snap.columns:  # expansion: created after the account's first win
        won = snap["is_won"].fillna(False).to_numpy(dtype=bool) & (codes >= 0)
        first_win = snap["close_date"][won].groupby(codes[won]).min()
        fw = first_win.reindex(codes).set_axis(snap.index)  # code -1 or no won deal is no label: NaN
        snap["is_expansion"] = (fw.notna() & snap["created_date"].notna() & (fw < snap["created_date"])).astype(bool)
    else:
        snap["is_expansion"] = False
    return snap


def _register_views(ctx: CubeContext) -> None:
    """Register the snapshot, ancestors, owners and every present contract table on ctx.con.

    Those in MATERIALISED (small, joined by every query) are copied once into DuckDB temp tables; the others stay
    Arrow views of their frames (no copy; DuckDB scans Arrow about as fast as its own tables). opp_static is a view
    of opp's static columns."""
    top = ctx.org.top_ids()[0]
    opp = all_columns("opportunities", ctx.snapshot).assign(snapshot_row=np.arange(len(ctx.snapshot)))
    tables: dict[str, pd.DataFrame] = {"opp": opp, "ancestors": ctx.ancestors, "owners": ctx.owners}
    for name, df in ctx.data.tables.items():
        if name != "owners":
            tables[name] = all_columns(name, df)
    if ctx.data.has("accounts"):
        accounts = _accounts_with_owner(ctx.data.table("accounts"), ctx.snapshot, top,
                                        cast(AccountCodes, ctx.cache["account_codes"]))
        tables["accounts"] = accounts
        if ctx.data.has("surveys"):
            surveys = ctx.data.table("surveys").merge(accounts[["account_id", "owner_id"]], on="account_id",
                                                      how="left")
            surveys["owner_id"] = _filled(surveys["owner_id"], top)
            tables["surveys"] = surveys
    elif ctx.data.has("surveys"):
        tables["surveys"] = ctx.data.table("surveys").assign(owner_id=top)
    if ctx.data.has("leads"):
        leads = ctx.data.table("leads")
        tables["leads"] = leads.assign(owner_id=_filled(leads["owner_id"], top) if "owner_id" in leads else top)
    if ctx.data.has("costs"):
        costs = ctx.data.table("costs").copy()
        labels = costs["period"].dropna().unique()
        starts = {lab: ctx.calendar.parse(str(lab)).start for lab in labels}
        costs["period_start"] = pd.to_datetime(costs["period"].map(starts))
        tables["costs"] = costs
    for name, df in tables.items():
        if name in MATERIALISED:
            _load_table(ctx.con, name, df)
        else:
            ctx.con.register(name, _scannable(df))
    ctx.con.execute("CREATE TEMP VIEW opp_static AS SELECT opportunity_id, owner_id, account_id, created_date, "
                    "product, lead_source, margin, cost, list_amount, segment, is_expansion FROM opp")


def _scannable(df: pd.DataFrame) -> pa.Table | pd.DataFrame:
    """`df` as an Arrow table (no copy of its Arrow-backed text; DuckDB scans it about twice as fast as the
    frame), or the frame itself when a column cannot be typed for Arrow (mixed objects)."""
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return df


def _load_table(con: duckdb.DuckDBPyConnection, name: str, df: pd.DataFrame) -> None:
    """Copy `df` into DuckDB temp table `name`."""
    con.register("_load_src", _scannable(df))
    try:
        con.execute(f'CREATE TEMP TABLE "{name}" AS SELECT * FROM _load_src')
    finally:
        con.unregister("_load_src")


def all_columns(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """`df` with every contract column of table `name` (absent ones empty), so SQL can name any of them."""
    missing = [c for c in empty_table(name).columns if c not in df.columns]
    if not missing:
        return df
    blank = empty_table(name)[missing].reindex(df.index)
    return pd.concat([df, blank], axis=1)


def _accounts_with_owner(accounts: pd.DataFrame, snap: pd.DataFrame, top: str,
                         deal_accounts: AccountCodes) -> pd.DataFrame:
    """Accounts with the owner of their latest won deal (else latest deal, else the top owner);
    `deal_accounts`: _account_codes(snap)."""
    acc = accounts.drop_duplicates("account_id").copy()
    s = snap[["owner_id", "is_won", "close_date", "created_date"]]
    codes, uniques = deal_accounts
    keep = (codes >= 0) & s["owner_id"].notna().to_numpy(dtype=bool)
    s, codes = s[keep], codes[keep]
    won = s["is_won"].fillna(False).to_numpy(dtype=bool)
    rows = _last_by(codes, len(uniques), [won, nat_last_key(s["close_date"]), nat_last_key(s["created_date"])])
    owner = pd.Series(s["owner_id"].array.take(rows, allow_fill=True), index=uniques)  # -1: no deal with an owner
    acc["owner_id"] = _filled(acc["account_id"].map(owner), top)
    return acc


def _filled(s: pd.Series, value: str) -> pd.Series:
    """`s.fillna(value)`; Arrow-backed text is filled by Arrow, several times faster than pandas' fillna."""
    if not s.hasnans:
        return s
    if isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow":
        return pd.Series(pd.array(pc.fill_null(pa.array(s), value), dtype=s.dtype), index=s.index, name=s.name)
    return s.fillna(value)


def _last_by(codes: np.ndarray, groups: int, keys: list[np.ndarray]) -> np.ndarray:
    """Per group code (0..groups-1), the row that a stable sort by `keys` (most significant first) puts last in
    its group: the largest key, the later row on ties (-1: a group without rows)."""
    rows = np.arange(len(codes))
    for key in keys:  # keep, per group, the rows holding the group's largest key
        best = np.full(groups, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(best, codes[rows], key[rows].astype(np.int64))
        rows = rows[key[rows] == best[codes[rows]]]
    last = np.full(groups, -1, dtype=np.int64)
    np.maximum.at(last, codes[rows], rows)
    return last
