"""Revoked links: one link by its id, or every link of an owner issued up to a moment, kept in the state database.

A signed link stays valid until it expires; revoking is how a leaked link is stopped before then without rotating
SPM_LINK_SECRET (which ends every link). `spm link --revoke LINK` records the link's id; `spm link --revoke-owner ID`
records that every link of that owner issued up to now is void. The live server checks both on every request that
presents a link or a session (cached for a few seconds), and the kernel checks again before it opens a report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa

from spm_lib.domain import links
from spm_lib.state.db import METADATA, engine, ensure_schema, transact

REVOKED = sa.Table(
    "revoked_links", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(8), nullable=False),  # 'link' (value = link id) or 'owner' (value = owner id)
    sa.Column("value", sa.String(200), nullable=False),
    sa.Column("issued_before", sa.DateTime(timezone=True), nullable=True),  # kind 'owner': links issued up to then
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("note", sa.String(500), nullable=True),
)
CACHE_S = 5.0  # how long the live server trusts its copy of the list


@dataclass(frozen=True)
class Revocations:
    """The revocation list at one moment: revoked link ids, and per owner the latest 'issued up to' moment."""

    link_ids: frozenset[str]
    owners: dict[str, datetime]

    def revoked(self, claims: links.Claims) -> bool:
        """True when the link of `claims` was revoked, by its id or by its owner."""
        if claims.link_id and claims.link_id in self.link_ids:
            return True
        until = self.owners.get(claims.owner_id)
        if until is None:
            return False
        return claims.issued_at is None or claims.issued_at <= until  # links without an issue time: revoked too


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def read(cfg: Any) -> Revocations:
    """The current revocation list of the project's state database."""
    eng = engine(cfg)
    ensure_schema(eng)
    rows = transact(eng, lambda c: c.execute(sa.select(REVOKED.c.kind, REVOKED.c.value,
                                                         REVOKED.c.issued_before)).all(), write=False)
    ids = frozenset(str(v) for k, v, _ in rows if k == "link")
    owners: dict[str, datetime] = {}
    for kind, value, before in rows:
        if kind == "owner" and before is not None:
            owners[str(value)] = max(owners.get(str(value), _utc(before)), _utc(before))
    return Revocations(link_ids=ids, owners=owners)


def claims_of(text: str, secret: str) -> links.Claims:
    """The claims of a link given as a full URL, a token, or a bare link id (then only `link_id` is meaningful)."""
    text = text.strip()
    token = (parse_qs(urlsplit(text).query).get("t") or [""])[0] if "?" in text else text
    try:
        return links.verify_signature(secret, token)
    except links.LinkError:
        if "." in token or len(token) > 20:
            raise
        return links.Claims(owner_id="", cadence="", as_of=None, expires_at=datetime.now(UTC), link_id=token)


def revoke_link(cfg: Any, link_id: str, note: str | None = None) -> None:
    """Record that the link with `link_id` is void from now on."""
    if not link_id:
        raise links.LinkError("this link carries no link id (it was signed by an older version): revoke every link "
                              "of its owner with `spm link --revoke-owner OWNER`, or rotate SPM_LINK_SECRET")
    eng = engine(cfg)
    ensure_schema(eng)
    transact(eng, lambda c: c.execute(REVOKED.insert().values(kind="link", value=link_id, issued_before=None,
                                                              revoked_at=datetime.now(UTC), note=note)))


def revoke_owner(cfg: Any, owner_id: str, note: str | None = None) -> datetime:
    """Record that every link of `owner_id` issued up to now is void; returns that moment."""
    now = datetime.now(UTC)
    eng = engine(cfg)
    ensure_schema(eng)
    transact(eng, lambda c: c.execute(REVOKED.insert().values(kind="owner", value=str(owner_id), issued_before=now,
                                                              revoked_at=now, note=note)))
    return now


class CachedRevocations:
    """The revocation list re-read at most every CACHE_S seconds (the live server asks on every request)."""

    def __init__(self, reader: Callable[[], Revocations], ttl_s: float = CACHE_S) -> None:
        self._reader = reader
        self._ttl = ttl_s
        self._value: Revocations | None = None
        self._at = 0.0

    def revoked(self, claims: links.Claims) -> bool:
        """True when `claims`' link is revoked according to a list at most `ttl_s` old."""
        if self._value is None or time.monotonic() - self._at > self._ttl:
            self._value = self._reader()
            self._at = time.monotonic()
        return self._value.revoked(claims)
