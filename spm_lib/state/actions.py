"""The action register: the actions the owner of the numbers agrees with their leader in a session.

The person who owns the numbers owns the actions (the report's owner); the leader's part is the support asked of
them. Actions are recorded in the live session (each rendered form carries a `form_key`, so a double click records
one action), shown in the next report of the same owner and cadence, and followed up there: open ones (overdue
when due before the as-of day) and those closed since the last session.

"The last session" of a report is the start of the closed period of its run (00:00 company time on the first day of
the week/month/quarter/year containing as_of, SPEC §4): a session reviews one period, so whatever was closed since
that period began was closed after the previous session reviewing the period before.

Times are stored as UTC without a zone; dates (due_date) as plain dates. The register is shown as it stands when
the report is rendered.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from spm_lib.domain.periods import CADENCE_GRAIN, FiscalCalendar, as_date, check_cadence
from spm_lib.errors import PeriodError, SpmError, did_you_mean
from spm_lib.metrics import kpis as registry
from spm_lib.state import db as state
from spm_lib.util.spreadsheet import to_safe_csv

STATUSES = ("open", "done", "dropped")
FORMATS = ("csv", "json")
MAX_TEXT = 2000
MAX_KEY = 200

ACTIONS = sa.Table(
    "actions", state.METADATA,
    sa.Column("action_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("form_key", sa.String(MAX_KEY), nullable=False),
    sa.Column("owner_id", sa.String(200), nullable=False),
    sa.Column("text", sa.String(MAX_TEXT), nullable=False),
    sa.Column("support_asked", sa.String(MAX_TEXT)),
    sa.Column("due_date", sa.Date, nullable=False),
    sa.Column("kpi", sa.String(100)),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("cadence", sa.String(20), nullable=False),
    sa.Column("period", sa.String(20), nullable=False),
    sa.Column("recorded_by", sa.String(200), nullable=False),
    sa.Column("recorded_at", sa.DateTime, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("closed_at", sa.DateTime),
    sa.UniqueConstraint("form_key", name="uq_actions_form_key"),
    sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="ck_actions_status"),
    sa.Index("ix_actions_owner_cadence", "owner_id", "cadence", "status"),
)
COLUMNS = [c.name for c in ACTIONS.columns]
_DTYPES: dict[str, Any] = {"action_id": "Int64", "due_date": "datetime64[ns]", "recorded_at": "datetime64[ns]",
           "updated_at": "datetime64[ns]", "closed_at": "datetime64[ns]"}


class ActionError(SpmError):
    """An action cannot be recorded or changed as asked (what to fill in or fix is in the message)."""


@dataclass(frozen=True)
class Action:
    """One recorded action (times in UTC)."""

    action_id: int
    form_key: str
    owner_id: str
    text: str
    support_asked: str | None
    due_date: date
    kpi: str | None
    status: str
    cadence: str
    period: str
    recorded_by: str
    recorded_at: datetime
    updated_by: str
    updated_at: datetime
    closed_at: datetime | None


# ---------------------------------------------------------------- helpers
def _engine(cfg: Any) -> Engine:
    eng = state.engine(cfg)
    state.ensure_schema(eng)
    return eng


def _utc(at: datetime | None) -> datetime:
    """`at` (default now) as a naive UTC datetime; a naive `at` is taken as UTC already."""
    at = at or datetime.now(UTC)
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


def _required(value: object, field: str, hint: str) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise ActionError(f"the action's {field} is empty: {hint}")
    return text


def _optional(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return text[:MAX_TEXT] or None


def _check_cadence(cadence: str) -> str:
    try:
        return check_cadence(cadence)
    except PeriodError as e:  # the same message, as an error of the action register
        raise ActionError(str(e)) from None


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise ActionError(f"unknown action status {status!r}{did_you_mean(str(status), STATUSES)}; "
                          f"allowed: {', '.join(STATUSES)}")
    return status


def _check_kpi(cfg: Any, kpi: str | None) -> str | None:
    kpi = _optional(kpi)
    if kpi is None:
        return None
    known = {k for k, d in registry.REGISTRY.items() if not d.hidden} | set(cfg.kpis.custom)
    if kpi not in known:
        raise ActionError(f"unknown KPI {kpi!r}{did_you_mean(kpi, known)}: name the KPI the action is meant to "
                          "move by its id (config/kpis.yml, SPEC §5), or leave it empty")
    return kpi


def _check_period(cfg: Any, period: str, cadence: str) -> str:
    label = _required(period, "period", "give the label of the period the session reviews, e.g. 2026-10")
    try:
        p = FiscalCalendar.from_config(cfg).parse(label)
    except PeriodError as e:
        raise ActionError(f"the action's period: {e}") from None
    if p.grain != CADENCE_GRAIN[cadence]:
        raise ActionError(f"period {label!r} is a {p.grain}, but a {cadence} session reviews a "
                          f"{CADENCE_GRAIN[cadence]}: give the label of the report's closed period")
    return p.label


def _due(due_date: date | str) -> date:
    if due_date is None or str(due_date).strip() == "":
        raise ActionError("the action's due date is empty: say by when it will be done (YYYY-MM-DD)")
    try:
        return as_date(due_date)
    except PeriodError as e:
        raise ActionError(f"the action's due date: {e}") from None


def _action(row: Any) -> Action:
    return Action(**{c: row._mapping[c] for c in COLUMNS})


def _get(conn: Connection, where: sa.ColumnElement[bool]) -> Action | None:
    row = conn.execute(sa.select(ACTIONS).where(where)).first()
    return None if row is None else _action(row)


def _frame(rows: list[Any]) -> pd.DataFrame:
    """Rows of the actions table as a DataFrame with the project's dtypes."""
    df = pd.DataFrame([tuple(r) for r in rows], columns=COLUMNS)
    for c in COLUMNS:
        df[c] = df[c].astype(_DTYPES.get(c, "string"))
    return df


def _query(cfg: Any, where: sa.ColumnElement[bool], *order: Any) -> pd.DataFrame:
    stmt = sa.select(ACTIONS).where(where).order_by(*order, ACTIONS.c.action_id)
    return _frame(state.transact(_engine(cfg), lambda conn: list(conn.execute(stmt)), write=False))


# ---------------------------------------------------------------- writing
def record(cfg: Any, *, form_key: str, owner_id: str, text: str, due_date: date | str, cadence: str, period: str,
           recorded_by: str, kpi: str | None = None, support_asked: str | None = None,
           at: datetime | None = None) -> Action:
    """Record an action agreed in a session (the same form_key returns the action already recorded)."""
    key = _required(form_key, "form key", "the form must carry the key it was rendered with")
    if len(key) > MAX_KEY:
        raise ActionError(f"the form key is {len(key)} characters long; at most {MAX_KEY} are allowed")
    body = _required(text, "text", "write what will be done, e.g. 'Call the 3 stalled Proposal deals'")[:MAX_TEXT]
    owner = _required(owner_id, "owner", "give the owner id of the report (the owner of the numbers)")
    by = _required(recorded_by, "recorded_by", "give who records it (the owner or their leader)")
    cadence = _check_cadence(cadence)
    now = _utc(at)
    row: dict[str, Any] = {
        "form_key": key, "owner_id": owner, "text": body, "support_asked": _optional(support_asked),
        "due_date": _due(due_date), "kpi": _check_kpi(cfg, kpi), "status": "open", "cadence": cadence,
        "period": _check_period(cfg, period, cadence), "recorded_by": by, "recorded_at": now,
        "updated_by": by, "updated_at": now, "closed_at": None}
    eng = _engine(cfg)

    def insert(conn: Connection) -> Action:
        action_id = conn.execute(sa.insert(ACTIONS).values(**row)).inserted_primary_key[0]  # type: ignore[index] # one row inserted
        return Action(action_id=int(action_id), **row)

    try:
        return state.transact(eng, insert)
    except IntegrityError:  # the same form was submitted before (double click, second kernel): return that one
        existing = state.transact(eng, lambda conn: _get(conn, ACTIONS.c.form_key == key), write=False)
        if existing is None:
            raise
        return existing


def set_status(cfg: Any, action_id: int, status: str, by: str, *, at: datetime | None = None) -> Action:
    """Mark an action open, done or dropped (closing stamps closed_at; reopening clears it)."""
    status = _check_status(status)
    who = _required(by, "changed-by", "give who changes the status")
    now = _utc(at)

    def update(conn: Connection) -> Action:
        current = _get(conn, ACTIONS.c.action_id == int(action_id))
        if current is None:
            raise ActionError(f"there is no action {action_id!r} in the register: take the id from "
                              "`spm actions list`")
        closed = None if status == "open" else current.closed_at if current.status == status else now
        conn.execute(sa.update(ACTIONS).where(ACTIONS.c.action_id == int(action_id))
                     .values(status=status, updated_by=who, updated_at=now, closed_at=closed))
        return Action(**{**asdict(current), "status": status, "updated_by": who, "updated_at": now,
                         "closed_at": closed})

    return state.transact(_engine(cfg), update)


# ---------------------------------------------------------------- reading
def _mine(owner_id: str, cadence: str) -> sa.ColumnElement[bool]:
    return sa.and_(ACTIONS.c.owner_id == str(owner_id), ACTIONS.c.cadence == _check_cadence(cadence))


def open_actions(cfg: Any, owner_id: str, cadence: str) -> pd.DataFrame:
    """The open actions of an owner at a cadence, by due date."""
    return _query(cfg, sa.and_(_mine(owner_id, cadence), ACTIONS.c.status == "open"), ACTIONS.c.due_date)


def closed_since(cfg: Any, owner_id: str, cadence: str, since: datetime) -> pd.DataFrame:
    """The actions of an owner at a cadence marked done or dropped at or after `since`, oldest first."""
    return _query(cfg, sa.and_(_mine(owner_id, cadence), ACTIONS.c.status != "open",
                               ACTIONS.c.closed_at >= _utc(since)), ACTIONS.c.closed_at)


def last_session_start(cfg: Any, cadence: str, as_of: date | str) -> datetime:
    """When 'the last session' of a report ended: 00:00 company time on the first day of its closed period (UTC)."""
    start = FiscalCalendar.from_config(cfg).windows(_check_cadence(cadence), as_of).closed.start
    return _utc(datetime.combine(start, time.min, tzinfo=ZoneInfo(cfg.company.timezone)))


def for_report(cfg: Any, owner_id: str, cadence: str, as_of: date | str) -> pd.DataFrame:
    """Open actions and those closed since the last session, open first, with `overdue` (open, due before as_of)."""
    since = last_session_start(cfg, cadence, as_of)
    df = _query(cfg, sa.and_(_mine(owner_id, cadence),
                             sa.or_(ACTIONS.c.status == "open", ACTIONS.c.closed_at >= since)),
                ACTIONS.c.status != "open", ACTIONS.c.closed_at, ACTIONS.c.due_date)
    df["overdue"] = ((df["status"] == "open") & (df["due_date"] < pd.Timestamp(as_date(as_of)))).astype("boolean")
    return df


def list_actions(cfg: Any, owner_id: str | None = None, cadence: str | None = None,
                 status: str | None = None) -> pd.DataFrame:
    """Every action, or those of one owner / cadence / status, by owner and recording time."""
    where: list[sa.ColumnElement[bool]] = [sa.true()]
    if owner_id is not None:
        where.append(ACTIONS.c.owner_id == str(owner_id))
    if cadence is not None:
        where.append(ACTIONS.c.cadence == _check_cadence(cadence))
    if status is not None:
        where.append(ACTIONS.c.status == _check_status(status))
    return _query(cfg, sa.and_(*where), ACTIONS.c.owner_id, ACTIONS.c.recorded_at)


def export(cfg: Any, owner_id: str | None = None, fmt: Literal["csv", "json"] | str = "csv", *,
           cadence: str | None = None, status: str | None = None) -> str:
    """The actions of `list_actions` as CSV or JSON text (dates YYYY-MM-DD, times UTC)."""
    if fmt not in FORMATS:
        raise ActionError(f"unknown export format {fmt!r}{did_you_mean(str(fmt), FORMATS)}; "
                          f"allowed: {', '.join(FORMATS)}")
    df = list_actions(cfg, owner_id, cadence, status)
    df["due_date"] = df["due_date"].dt.strftime("%Y-%m-%d")
    for c in ("recorded_at", "updated_at", "closed_at"):
        df[c] = df[c].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = df.astype("object").where(df.notna(), None)
    if fmt == "json":
        return json.dumps(out.to_dict(orient="records"), ensure_ascii=False, indent=2) + "\n"
    return to_safe_csv(out)  # free text a spreadsheet would run as a formula is prefixed with ' (shown, never run)
