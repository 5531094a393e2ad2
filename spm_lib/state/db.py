"""The state database: what must outlive runs (actions, the send ledger, schedule state), one SQL database.

`cfg.state.url` is any SQLAlchemy URL; the default `sqlite:///state/spm.sqlite` lives under the project root
(relative SQLite paths resolve there; `${VAR}` is taken from the environment). SQLite runs in WAL mode with a
busy timeout, because several live kernels are separate processes writing at once. Modules declare their tables
on the shared `METADATA`; `ensure_schema` creates what is missing. Every unit of work goes through `transact`,
which runs it in one transaction and retries it with backoff while the database is locked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from spm_lib.config import expand_env
from spm_lib.errors import ConfigError, SpmError

T = TypeVar("T")
METADATA = sa.MetaData()
BUSY_TIMEOUT_MS = 30_000
LOCK_ATTEMPTS = 8  # each attempt already waits up to BUSY_TIMEOUT_MS inside SQLite
_ENGINES: dict[tuple[str, int], Engine] = {}  # (url, pid): a forked child never reuses its parent's connections
_READY: dict[tuple[str, int], frozenset[str]] = {}  # tables known to exist, per engine


class StateError(SpmError):
    """The state database cannot be opened, created or written."""


def state_url(cfg: Any) -> URL:
    """The SQLAlchemy URL of the state database, ${VAR} expanded, a relative SQLite path under the project root."""
    where = "config/state.yml: url"
    try:
        url = make_url(expand_env(cfg.state.url, where))
    except sa.exc.ArgumentError as e:
        raise ConfigError(f"{where} is not a SQLAlchemy URL ({e}); e.g. sqlite:///state/spm.sqlite or "
                          "postgresql+psycopg://user:${SPM_STATE_PASSWORD}@host/db") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not url.database.startswith("file:"):
        path = Path(url.database).expanduser()
        url = url.set(database=str(path if path.is_absolute() else Path(cfg.root) / path))
    return url


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _sqlite_hooks(eng: Engine) -> None:
    """WAL, busy timeout and synchronous=NORMAL on every connection; real transactions (BEGIN IMMEDIATE to write)."""

    @event.listens_for(eng, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (see `_begin`)
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(eng, "begin")
    def _begin(conn: Connection) -> None:
        # a writer takes the write lock up front: it waits (busy_timeout) instead of failing when it would have
        # to upgrade a stale read snapshot
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("spm_write") else "BEGIN")


def engine(cfg: Any) -> Engine:
    """The state database's engine (one per URL per process); SQLite: folder created, WAL, busy timeout."""
    url = state_url(cfg)
    key = (url.render_as_string(hide_password=False), os.getpid())
    eng = _ENGINES.get(key)
    if eng is not None:
        return eng
    if _is_sqlite(url) and url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        folder = Path(url.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"cannot create the state folder {folder}: {e.strerror}; "
                             "check config/state.yml `url` and the folder's permissions") from None
    try:
        eng = sa.create_engine(url, pool_pre_ping=not _is_sqlite(url))
    except (sa.exc.ArgumentError, ImportError) as e:
        raise ConfigError(f"config/state.yml: url {url.render_as_string(hide_password=True)} cannot be used: {e}") \
            from None
    if _is_sqlite(url):
        _sqlite_hooks(eng)
    _ENGINES[key] = eng
    return eng


def _locked(e: BaseException) -> bool:
    """True for SQLite's 'database is locked/busy' (a writer held the lock longer than the busy timeout)."""
    return isinstance(e, OperationalError) and any(w in str(e.orig).lower() for w in ("locked", "busy"))


def transact(eng: Engine, work: Callable[[Connection], T], *, write: bool = True) -> T:
    """Run `work(conn)` in one transaction, retried with backoff while the database is locked."""
    try:
        for attempt in Retrying(retry=retry_if_exception(_locked), stop=stop_after_attempt(LOCK_ATTEMPTS),
                                wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05), reraise=True):
            with attempt:
                with eng.connect().execution_options(spm_write=write) as conn, conn.begin():
                    return work(conn)
    except OperationalError as e:
        if not _locked(e):
            raise
        raise StateError(f"the state database {eng.url.render_as_string(hide_password=True)} stayed locked after "
                         f"{LOCK_ATTEMPTS} attempts: another process holds a long write; retry, or look for a "
                         "stuck `spm` process") from None
    raise AssertionError("unreachable")  # pragma: no cover


def ensure_schema(eng: Engine) -> None:
    """Create every table declared on METADATA that the database lacks (safe when processes race)."""
    key = (eng.url.render_as_string(hide_password=False), os.getpid())
    declared = frozenset(METADATA.tables)
    if declared <= _READY.get(key, frozenset()):
        return
    # two processes may both see a table missing and both create it: the loser retries and then finds it
    for attempt in Retrying(retry=retry_if_exception(lambda e: isinstance(e, DBAPIError)),
                            stop=stop_after_attempt(LOCK_ATTEMPTS),
                            wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05), reraise=True):
        with attempt:
            transact(eng, lambda conn: METADATA.create_all(conn, checkfirst=True))
    _READY[key] = declared


def ready_engine(cfg: Any) -> Engine:
    """The state database's engine with every declared table created."""
    eng = engine(cfg)
    ensure_schema(eng)
    return eng


def utc_now() -> datetime:
    """Now in UTC as the naive datetime the state tables store."""
    return datetime.now(UTC).replace(tzinfo=None)
