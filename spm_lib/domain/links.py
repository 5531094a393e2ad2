"""Signed, expiring links to an owner's live report, and who may open which owner's report.

A link carries a token: the owner, cadence, as-of, expiry, a random link id and the issue time, signed with
itsdangerous under a salt of its own (a token signed for another purpose never verifies here). The expiry sits
inside the signed payload, so changing it breaks the signature. The link id and issue time let one link, or every
link of an owner issued before a moment, be revoked (spm_lib.state.revocations). The secret comes from the environment
(SPM_LINK_SECRET), never from config or outputs, and must carry at least 128 bits of entropy: HMAC-SHA1 under a
guessable secret can be recovered offline from a single link and then used to forge any owner's link.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
from itsdangerous import BadSignature, URLSafeSerializer

from spm_lib.domain.org import org_of
from spm_lib.domain.periods import CADENCES, check_cadence
from spm_lib.errors import OrgError, SpmError

SECRET_ENV = "SPM_LINK_SECRET"
MIN_SECRET_BITS = 128
GENERATE_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
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
    link_id: str = ""  # random id of this link ('' for links signed before link ids existed)
    issued_at: datetime | None = None  # UTC; None for links signed before issue times existed


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
               "e": int(_utc(expires_at).timestamp()), "i": secrets.token_urlsafe(9),
               "n": int(datetime.now(UTC).timestamp())}
    return str(_serializer(secret).dumps(payload))


def verify(secret: str, token: str, now: datetime | None = None) -> Claims:
    """The claims of a valid, unexpired `token`; LinkError (never quoting the token) otherwise."""
    claims = verify_signature(secret, token)
    if _utc(now or datetime.now(UTC)) >= claims.expires_at:
        raise LinkError(f"this link expired on {claims.expires_at:%Y-%m-%d %H:%M} UTC; ask for a new link")
    return claims


def verify_signature(secret: str, token: str) -> Claims:
    """The claims of a `token` signed with `secret`, expired or not; LinkError otherwise."""
    try:
        payload: Any = _serializer(secret).loads(token)
    except BadSignature:
        raise LinkError("this link is not valid (altered, truncated or signed with another key); "
                        "ask for a new link") from None
    try:
        claims = Claims(owner_id=str(payload["o"]), cadence=str(payload["c"]),
                        as_of=date.fromisoformat(payload["a"]) if payload["a"] else None,
                        expires_at=datetime.fromtimestamp(int(payload["e"]), UTC),
                        link_id=str(payload.get("i") or ""),
                        issued_at=datetime.fromtimestamp(int(payload["n"]), UTC) if payload.get("n") else None)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise LinkError("this link is not valid (unreadable content); ask for a new link") from None
    if claims.cadence not in CADENCES:
        raise LinkError("this link is not valid (unknown cadence); ask for a new link")
    return claims


def secret_bits(secret: str) -> float:
    """A conservative estimate of the entropy of `secret` in bits (the weakest of three views of the string)."""
    if not secret:
        return 0.0
    if re.fullmatch(r"(.+?)\1+", secret):  # one unit repeated ("abcabcabc…", "aaaa…")
        return 0.0
    length = _effective_length(secret)
    classes = [(r"[a-z]", 26), (r"[A-Z]", 26), (r"[0-9]", 10), (r"[^a-zA-Z0-9]", 33)]
    alphabet = 16 if re.fullmatch(r"[0-9a-f]+|[0-9A-F]+", secret) else \
        sum(size for pattern, size in classes if re.search(pattern, secret))
    by_alphabet = length * math.log2(max(alphabet, 2))
    counts = Counter(secret)
    shannon = -sum(c / len(secret) * math.log2(c / len(secret)) for c in counts.values())
    by_symbols = length * min(math.log2(max(alphabet, 2)), shannon + 1.0)  # few distinct symbols: low
    compressed = len(zlib.compress(secret.encode(), 9)) - 8  # zlib's own header and checksum
    by_compression = 8.0 * max(compressed, 0) * (math.log2(max(alphabet, 2)) / 8.0) * 1.6
    return min(by_alphabet, by_symbols, by_compression)


def _effective_length(text: str) -> int:
    """The length of `text` with each run of 3+ characters in a row ("0123", "cba", "xxxx") counted once."""
    length, run = len(text), 1
    for i in range(1, len(text)):
        step = ord(text[i]) - ord(text[i - 1])
        same = i >= 2 and step == ord(text[i - 1]) - ord(text[i - 2]) and abs(step) <= 1
        run = run + 1 if same else 2 if abs(step) <= 1 else 1
        if run >= 3:
            length -= 1
    return length


def check_secret(secret: str) -> str:
    """`secret` when it is strong enough to sign links (>= 128 bits); LinkError saying how to make one otherwise."""
    if not secret:
        raise LinkError(f"{SECRET_ENV} is not set: set it in the environment to a random secret of at least "
                        f"{MIN_SECRET_BITS} bits, e.g. `export {SECRET_ENV}=$({GENERATE_HINT})`")
    bits = secret_bits(secret)
    if bits < MIN_SECRET_BITS:
        raise LinkError(f"{SECRET_ENV} is too weak (about {bits:.0f} bits of entropy; at least {MIN_SECRET_BITS} "
                        "are needed, or one link is enough to recover it offline and forge any owner's link): "
                        "use a random secret, not a word, a pattern or a repeated string, e.g. "
                        f"`export {SECRET_ENV}=$({GENERATE_HINT})`")
    return secret


def secret_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The link-signing secret from SPM_LINK_SECRET, refused when unset or weaker than 128 bits."""
    return check_secret((os.environ if environ is None else environ).get(SECRET_ENV, ""))


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
    try:
        return str(target_owner_id).strip() in org_of(org_owners).subtree(viewer_owner_id)
    except OrgError:  # the viewer is not (or no longer) an owner
        return False
