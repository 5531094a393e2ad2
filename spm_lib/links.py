"""Signed, expiring links to an owner's live report, and who may open which owner's report.

A link carries a token: the owner, cadence, as-of and expiry signed with itsdangerous under a salt of its own
(a token signed for another purpose never verifies here). The expiry sits inside the signed payload, so changing
it breaks the signature. The secret comes from the environment (SPM_LINK_SECRET), never from config or outputs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
from itsdangerous import BadSignature, URLSafeSerializer

from spm_lib.errors import OrgError, SpmError
from spm_lib.periods import CADENCES, check_cadence

SECRET_ENV = "SPM_LINK_SECRET"
MIN_SECRET_CHARS = 16
SALT = "spm.report-link.v1"
_DURATION = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class LinkError(SpmError):
    """A report link is invalid, tampered with or expired, or links cannot be signed as configured."""


@dataclass(frozen=True)
class Claims:
    """What a verified link grants: one owner's report of one cadence (and as-of, None = the latest)."""

    owner_id: str
    cadence: str
    as_of: date | None
    expires_at: datetime  # UTC


def _serializer(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=SALT)


def _utc(t: datetime) -> datetime:
    """`t` in UTC; a naive datetime is taken as UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def sign(secret: str, owner_id: str, cadence: str, as_of: date | None, expires_at: datetime) -> str:
    """A URL-safe token granting `owner_id`'s `cadence` report (as of `as_of`) until `expires_at`."""
    check_cadence(cadence)
    if not str(owner_id).strip():
        raise LinkError("cannot sign a link without an owner id; pass --owner with an id from table owners")
    payload = {"o": str(owner_id).strip(), "c": cadence, "a": as_of.isoformat() if as_of else None,
               "e": int(_utc(expires_at).timestamp())}
    return str(_serializer(secret).dumps(payload))


def verify(secret: str, token: str, now: datetime | None = None) -> Claims:
    """The claims of a valid, unexpired `token`; LinkError (never quoting the token) otherwise."""
    try:
        payload: Any = _serializer(secret).loads(token)
    except BadSignature:
        raise LinkError("this link is not valid (altered, truncated or signed with another key); "
                        "ask for a new link") from None
    try:
        claims = Claims(owner_id=str(payload["o"]), cadence=str(payload["c"]),
                        as_of=date.fromisoformat(payload["a"]) if payload["a"] else None,
                        expires_at=datetime.fromtimestamp(int(payload["e"]), UTC))
    except (KeyError, TypeError, ValueError):
        raise LinkError("this link is not valid (unreadable content); ask for a new link") from None
    if claims.cadence not in CADENCES:
        raise LinkError("this link is not valid (unknown cadence); ask for a new link")
    if _utc(now or datetime.now(UTC)) >= claims.expires_at:
        raise LinkError(f"this link expired on {claims.expires_at:%Y-%m-%d %H:%M} UTC; ask for a new link")
    return claims


def secret_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The link-signing secret from SPM_LINK_SECRET (at least 16 characters)."""
    secret = (os.environ if environ is None else environ).get(SECRET_ENV, "")
    if len(secret) < MIN_SECRET_CHARS:
        state = "is not set" if not secret else f"is shorter than {MIN_SECRET_CHARS} characters"
        raise LinkError(f"{SECRET_ENV} {state}: set {SECRET_ENV} in the environment to a random secret of at least "
                        f"{MIN_SECRET_CHARS} characters, e.g. `export {SECRET_ENV}=$(python -c "
                        "'import secrets; print(secrets.token_urlsafe(32))')`")
    return secret


def link_url(cfg: Any, token: str, path: str = "") -> str:
    """The public address of `path` under the live server's base URL, carrying `token` (cfg: Config or LiveConfig)."""
    live = getattr(cfg, "live", cfg)
    base = "/" + str(live.base_url).strip("/")
    base = base if base == "/" else base + "/"
    return f"{str(live.public_url).rstrip('/')}{base}{path.lstrip('/')}?t={token}"


def parse_duration(text: str) -> timedelta:
    """A positive duration written `7d`, `12h` or `30m`."""
    m = _DURATION.match(str(text))
    if not m or int(m.group(1)) == 0:
        raise LinkError(f"duration {text!r} is not valid: write a positive whole number followed by d (days), "
                        "h (hours) or m (minutes), e.g. 7d, 12h, 30m")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def allowed(viewer_owner_id: str, target_owner_id: str, org_owners: pd.DataFrame) -> bool:
    """True when `target_owner_id` is the viewer or anyone below them in the current hierarchy."""
    from spm_lib.org import org_of

    try:
        return str(target_owner_id).strip() in org_of(org_owners).subtree(viewer_owner_id)
    except OrgError:  # the viewer is not (or no longer) an owner
        return False
