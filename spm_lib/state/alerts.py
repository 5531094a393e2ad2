"""The alert ledger: which alert of which owner is open or cleared, and whether its latest email was sent.

One row per (cadence, rule, owner, subject). An alert that becomes true is `open`, one that stops being true is
`cleared`; `mail` is the state of the email of that latest change: pending -> sending -> sent | failed, or `skipped`
(nobody to tell: an excluded or inactive owner, or an alert that cleared before its opening was ever mailed). As in
the send ledger, a row left `sending` by a crash is unknown and never resent by itself. `alert_runs` records each
evaluation (cadence, as-of), which tells the schedule that a daily alerts job is done. No secret is stored.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from spm_lib.state import db as state

MAILS = ("pending", "sending", "sent", "failed", "skipped")
MAX_TEXT = 1000

ALERTS = sa.Table(
    "alert_ledger", state.METADATA,
    sa.Column("cadence", sa.String(20), primary_key=True),
    sa.Column("rule_id", sa.String(60), primary_key=True),
    sa.Column("owner_id", sa.String(200), primary_key=True),
    sa.Column("subject", sa.String(200), primary_key=True),  # '' (KPI, gap), a check id or an opportunity id
    sa.Column("state", sa.String(10), nullable=False),
    sa.Column("opened_as_of", sa.Date, nullable=False),
    sa.Column("cleared_as_of", sa.Date),
    sa.Column("message", sa.String(MAX_TEXT), nullable=False),  # what the alert said when it opened
    sa.Column("mail", sa.String(10), nullable=False),
    sa.Column("message_id", sa.String(300)),
    sa.Column("recipients", sa.String(2000)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.String(MAX_TEXT)),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.CheckConstraint("state IN ('open', 'cleared')", name="ck_alert_ledger_state"),
    sa.CheckConstraint(f"mail IN ({', '.join(repr(m) for m in MAILS)})", name="ck_alert_ledger_mail"),
)
RUNS = sa.Table(
    "alert_runs", state.METADATA,
    sa.Column("cadence", sa.String(20), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("evaluated_at", sa.DateTime, nullable=False),
    sa.Column("opened", sa.Integer, nullable=False),
    sa.Column("cleared", sa.Integer, nullable=False),
)
COLUMNS = [c.name for c in ALERTS.columns]
Key = tuple[str, str, str, str]  # cadence, rule_id, owner_id, subject


def _where(key: Key) -> sa.ColumnElement[bool]:
    cadence, rule_id, owner_id, subject = key
    return sa.and_(ALERTS.c.cadence == cadence, ALERTS.c.rule_id == rule_id, ALERTS.c.owner_id == owner_id,
                   ALERTS.c.subject == subject)


def rows(cfg: Any, cadence: str) -> pd.DataFrame:
    """Every alert of a cadence, open or cleared."""
    stmt = sa.select(ALERTS).where(ALERTS.c.cadence == cadence).order_by(ALERTS.c.rule_id, ALERTS.c.owner_id,
                                                                         ALERTS.c.subject)
    found = state.transact(state.ready_engine(cfg), lambda conn: [tuple(r) for r in conn.execute(stmt)], write=False)
    return pd.DataFrame(found, columns=COLUMNS)


def record(cfg: Any, key: Key, *, state_: str, as_of: date, message: str, mail: str, message_id: str | None = None,
           recipients: str | None = None) -> None:
    """Record the alert as `state_` ('open' or 'cleared') as of `as_of`, its email `mail` (pending or skipped)."""
    values: dict[str, Any] = {"state": state_, "mail": mail, "message_id": message_id,
                              "recipients": (recipients or "")[:2000], "error": None, "updated_at": state.utc_now()}
    if state_ == "open":
        values.update(opened_as_of=as_of, cleared_as_of=None, message=message[:MAX_TEXT])
    else:
        values.update(cleared_as_of=as_of)

    def work(conn: Connection) -> None:
        if not conn.execute(sa.update(ALERTS).where(_where(key)).values(**values)).rowcount:
            cadence, rule_id, owner_id, subject = key
            conn.execute(sa.insert(ALERTS).values(cadence=cadence, rule_id=rule_id, owner_id=owner_id,
                                                  subject=subject, attempts=0,
                                                  **{"opened_as_of": as_of, "message": message[:MAX_TEXT],
                                                     **values}))

    state.transact(state.ready_engine(cfg), work)


def mark(cfg: Any, key: Key, mail: str, error: str | None = None) -> None:
    """The alert's email is now `mail` (sending counts one more attempt); `error` says why it failed."""
    extra: dict[str, Any] = {"attempts": ALERTS.c.attempts + 1} if mail == "sending" else {}

    def work(conn: Connection) -> None:
        done = conn.execute(sa.update(ALERTS).where(_where(key)).values(
            mail=mail, error=error[:MAX_TEXT] if error else None, updated_at=state.utc_now(), **extra))
        if not done.rowcount:
            raise state.StateError(f"no alert-ledger row for {key}: record() it before mailing")

    state.transact(state.ready_engine(cfg), work)


def record_run(cfg: Any, cadence: str, as_of: date, opened: int, cleared: int) -> None:
    """Remember that the alerts of (cadence, as_of) were evaluated and mailed."""
    def work(conn: Connection) -> None:
        conn.execute(sa.delete(RUNS).where(sa.and_(RUNS.c.cadence == cadence, RUNS.c.as_of == as_of)))
        conn.execute(sa.insert(RUNS).values(cadence=cadence, as_of=as_of, evaluated_at=state.utc_now(), opened=opened,
                                            cleared=cleared))

    state.transact(state.ready_engine(cfg), work)


def evaluated(cfg: Any, cadence: str, as_of: date) -> bool:
    """True when the alerts of (cadence, as_of) were evaluated and mailed (`record_run`)."""
    stmt = sa.select(sa.func.count()).select_from(RUNS).where(sa.and_(RUNS.c.cadence == cadence,
                                                                      RUNS.c.as_of == as_of))
    return bool(state.transact(state.ready_engine(cfg), lambda conn: conn.execute(stmt).scalar(), write=False))
