"""The send ledger: which owner's email of which run was planned, is being sent, was sent or failed.

One row per run folder (`run_key`, e.g. "monthly/2026-10-31"), generation of its reports and owner. The manifest's
run id changes each time the cube is recomputed, so rows are keyed by the run folder and the generation; the run id
is kept beside them. A row moves pending -> sending -> sent | failed. A row left `sending` (a crash between handing
the message to the server and hearing back) is *unknown*: the owner may or may not have the email, so it is
reported and never resent unless asked. The ledger holds ids, hashes and addresses, never a secret.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from spm_lib.state import db as state

STATUSES = ("pending", "sending", "sent", "failed")
MAX_ERROR = 1000

LEDGER = sa.Table(
    "send_ledger", state.METADATA,
    sa.Column("run_key", sa.String(100), primary_key=True),
    sa.Column("generation", sa.Integer, primary_key=True),
    sa.Column("owner_id", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(300), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("recipients", sa.String(2000), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("error", sa.String(MAX_ERROR)),
    sa.Column("permanent", sa.Boolean, nullable=False, default=False),  # a failure resending cannot fix
    sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="ck_send_ledger_status"),
    sa.Index("ix_send_ledger_run_owner", "run_key", "owner_id"),
)
COLUMNS = [c.name for c in LEDGER.columns]


def _engine(cfg: Any) -> Engine:
    eng = state.engine(cfg)
    state.ensure_schema(eng)
    return eng


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _key(run_key: str, generation: int, owner_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(LEDGER.c.run_key == run_key, LEDGER.c.generation == int(generation),
                   LEDGER.c.owner_id == str(owner_id))


def plan(cfg: Any, run_key: str, generation: int, owner_id: str, *, run_id: str, message_id: str,
         content_hash: str, recipients: str) -> None:
    """Record (or reset) the owner's email of this run and generation as pending, keeping its attempt count."""
    values = {"run_id": run_id, "message_id": message_id, "content_hash": content_hash,
              "recipients": recipients[:2000], "status": "pending", "updated_at": _now(), "error": None,
              "permanent": False}

    def work(conn: Connection) -> None:
        done = conn.execute(sa.update(LEDGER).where(_key(run_key, generation, owner_id)).values(**values))
        if not done.rowcount:
            conn.execute(sa.insert(LEDGER).values(run_key=run_key, generation=int(generation),
                                                  owner_id=str(owner_id), attempts=0, **values))

    state.transact(_engine(cfg), work)


def _set(cfg: Any, run_key: str, generation: int, owner_id: str, **values: Any) -> None:
    def work(conn: Connection) -> None:
        done = conn.execute(sa.update(LEDGER).where(_key(run_key, generation, owner_id))
                            .values(updated_at=_now(), **values))
        if not done.rowcount:
            raise state.StateError(f"no send-ledger row for owner {owner_id!r} of {run_key} generation "
                                   f"{generation}: plan() it before sending")

    state.transact(_engine(cfg), work)


def mark_sending(cfg: Any, run_key: str, generation: int, owner_id: str) -> None:
    """The message is about to be handed to the SMTP server (one more attempt)."""
    _set(cfg, run_key, generation, owner_id, status="sending", attempts=LEDGER.c.attempts + 1)


def mark_sent(cfg: Any, run_key: str, generation: int, owner_id: str, note: str | None = None, *,
              tries: int = 1) -> None:
    """The server accepted the message after `tries` SMTP attempts (`note`: e.g. a Cc it refused)."""
    _set(cfg, run_key, generation, owner_id, status="sent", error=note[:MAX_ERROR] if note else None,
         attempts=LEDGER.c.attempts + (max(tries, 1) - 1))


def mark_failed(cfg: Any, run_key: str, generation: int, owner_id: str, error: str, *, tries: int = 1,
                permanent: bool = False) -> None:
    """The message was not delivered after `tries` SMTP attempts; `error` says why.

    A later send tries it again, unless the failure is `permanent` (a 5xx refusal, an invalid address) and the
    recipients are still the same.
    """
    _set(cfg, run_key, generation, owner_id, status="failed", error=error[:MAX_ERROR], permanent=permanent,
         attempts=LEDGER.c.attempts + (max(tries, 1) - 1))


def rows(cfg: Any, run_key: str) -> pd.DataFrame:
    """Every ledger row of a run folder, by owner and generation."""
    stmt = sa.select(LEDGER).where(LEDGER.c.run_key == run_key).order_by(LEDGER.c.owner_id, LEDGER.c.generation)
    found = state.transact(_engine(cfg), lambda conn: [tuple(r) for r in conn.execute(stmt)], write=False)
    df = pd.DataFrame(found, columns=COLUMNS)
    return df.astype({"generation": "Int64", "attempts": "Int64", "updated_at": "datetime64[ns]",
                      "permanent": "boolean"})


def unknown(cfg: Any, run_key: str) -> list[str]:
    """Owners whose email was left `sending` by an interrupted send: delivered or not, nobody knows."""
    df = rows(cfg, run_key)
    return sorted(df.loc[df["status"] == "sending", "owner_id"].unique().tolist())


def last_sent(cfg: Any, run_key: str) -> dict[str, tuple[int, str]]:
    """Per owner: the generation and content hash of the latest email sent from this run folder."""
    df = rows(cfg, run_key)
    sent = df[df["status"] == "sent"].sort_values("generation")
    last = sent.groupby("owner_id").tail(1)
    return {str(o): (int(g), str(h)) for o, g, h in zip(last["owner_id"], last["generation"].astype("int64"),
                                                         last["content_hash"], strict=True)}
