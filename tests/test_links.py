"""Signed report links: round trip, every way a token can be refused, who may open whose report."""

from __future__ import annotations

import base64
import json
import math
import secrets
import zlib
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from spm_lib.config import LiveConfig
from spm_lib.domain.links import (
    Claims,
    LinkError,
    allowed,
    link_url,
    parse_duration,
    secret_bits,
    secret_from_env,
    sign,
    verify,
)

SECRET = "s3cret-for-tests-0123456789"
OTHER = "another-secret-abcdefghijklmn"
NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
EXPIRES = datetime(2026, 11, 9, 8, 0, tzinfo=UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decode(body: str) -> dict[str, object]:
    """The JSON payload of a token's body (itsdangerous zlib-compresses it, marked by a leading dot, when shorter)."""
    raw = _unb64(body.lstrip("."))
    return dict(json.loads(zlib.decompress(raw) if body.startswith(".") else raw))


def _encode(payload: dict[str, object], compressed: bool) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return "." + _b64(zlib.compress(raw)) if compressed else _b64(raw)


def test_round_trip_gives_back_the_claims() -> None:
    token = sign(SECRET, "M1", "monthly", date(2026, 10, 31), EXPIRES)
    claims = verify(SECRET, token, now=NOW)
    assert claims == Claims("M1", "monthly", date(2026, 10, 31), EXPIRES, claims.link_id, claims.issued_at)


def test_round_trip_without_as_of_and_with_a_zoned_expiry() -> None:
    from zoneinfo import ZoneInfo

    paris = datetime(2026, 11, 9, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))  # = 08:00 UTC (winter time)
    claims = verify(SECRET, sign(SECRET, "R7", "quarterly", None, paris), now=NOW)
    assert claims.as_of is None and claims.cadence == "quarterly"
    assert claims.expires_at == EXPIRES


def _refused(token: str, now: datetime = NOW, secret: str = SECRET) -> str:
    with pytest.raises(LinkError) as e:
        verify(secret, token, now=now)
    assert token not in str(e.value)
    assert not any(part in str(e.value) for part in token.split(".") if part)
    return str(e.value)


def test_a_flipped_signature_character_is_refused() -> None:
    token = sign(SECRET, "M1", "monthly", date(2026, 10, 31), EXPIRES)
    i = len(token) - 3
    flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    assert "not valid" in _refused(flipped)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    assert "not valid" in _refused(sign(OTHER, "M1", "monthly", date(2026, 10, 31), EXPIRES))


def test_a_modified_payload_resigned_with_another_secret_is_refused() -> None:
    token = sign(SECRET, "R1", "monthly", date(2026, 10, 31), EXPIRES)
    payload = _decode(token.rpartition(".")[0])
    payload["o"] = "EXEC"  # try to open the executive's report
    forged = sign(OTHER, str(payload["o"]), str(payload["c"]), date.fromisoformat(str(payload["a"])), EXPIRES)
    assert "not valid" in _refused(forged)


@pytest.mark.parametrize("field,value", [("o", "M2"), ("c", "annual"), ("e", int(EXPIRES.timestamp()) + 86400 * 365)])
def test_a_changed_owner_cadence_or_expiry_keeps_the_old_signature_and_is_refused(field: str, value: object) -> None:
    token = sign(SECRET, "M1", "monthly", date(2026, 10, 31), EXPIRES)
    body, _, sig = token.rpartition(".")
    payload = _decode(body)
    assert _encode(payload, body.startswith(".")) == body  # re-encoding alone changes nothing
    payload[field] = value
    tampered = _encode(payload, body.startswith(".")) + "." + sig
    assert "not valid" in _refused(tampered)


def test_an_expired_token_is_refused_and_one_second_before_it_is_not() -> None:
    token = sign(SECRET, "M1", "monthly", None, EXPIRES)
    assert verify(SECRET, token, now=EXPIRES - timedelta(seconds=1)).owner_id == "M1"
    assert "expired on 2026-11-09 08:00 UTC" in _refused(token, now=EXPIRES)
    assert "expired" in _refused(token, now=datetime(2027, 1, 1, tzinfo=UTC))


def test_garbage_is_refused() -> None:
    assert "not valid" in _refused("xYz.garbage-123")


def test_signing_refuses_an_unknown_cadence() -> None:
    from spm_lib.errors import PeriodError

    with pytest.raises(PeriodError, match="monthly"):
        sign(SECRET, "M1", "montly", None, EXPIRES)


def test_secret_from_env_needs_128_bits() -> None:
    strong = secrets.token_urlsafe(32)
    assert secret_from_env({"SPM_LINK_SECRET": strong}) == strong
    with pytest.raises(LinkError, match="SPM_LINK_SECRET is not set"):
        secret_from_env({})
    for weak in ("a" * 16, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "abc" * 20, "short-secret",
                 "live-test-secret-0123456789", "correct horse battery staple", "P@ssw0rd!" * 4, "0123456789" * 5):
        with pytest.raises(LinkError, match="SPM_LINK_SECRET is too weak") as e:
            secret_from_env({"SPM_LINK_SECRET": weak})
        assert weak not in str(e.value) and "secrets.token_urlsafe(32)" in str(e.value)


def test_secret_bits_by_hand() -> None:
    assert secret_bits("") == 0 and secret_bits("ab" * 40) == 0  # a repeated unit carries nothing
    # 43 characters of the URL-safe alphabet (lower, upper, digits, symbols: 95 symbols) without runs
    token = "Xq7-vR2kLp9sWm4TzB8nHc6JdF3gYa5E_u1NtKo0Qw"
    assert secret_bits(token) == pytest.approx(len(token) * math.log2(95), rel=0.2)
    # hex: 4 bits a character; "0123" and "cba" are runs counted once (2 + 1 characters lost)
    assert secret_bits("f3a90123e7cba5d8") == pytest.approx((16 - 3) * 4)


def test_tokens_carry_a_link_id_and_issue_time() -> None:
    a, b = sign(SECRET, "M1", "monthly", None, EXPIRES), sign(SECRET, "M1", "monthly", None, EXPIRES)
    ca, cb = verify(SECRET, a, now=NOW), verify(SECRET, b, now=NOW)
    assert ca.link_id and cb.link_id and ca.link_id != cb.link_id  # two links of one owner are told apart
    assert ca.issued_at is not None and abs((ca.issued_at - datetime.now(UTC)).total_seconds()) < 5


def test_link_url_joins_public_url_base_url_and_path() -> None:
    live = LiveConfig(public_url="https://spm.example.com/", base_url="/spm")
    assert link_url(live, "TOKEN", "voila/render/report.ipynb") == \
        "https://spm.example.com/spm/voila/render/report.ipynb?t=TOKEN"
    assert link_url(LiveConfig(), "TOKEN") == "http://127.0.0.1:8866/?t=TOKEN"
    assert link_url(LiveConfig(base_url="/spm/"), "T", "/x") == "http://127.0.0.1:8866/spm/x?t=T"


def test_parse_duration() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration(" 30m ") == timedelta(minutes=30)
    for bad in ("7", "1w", "-1d", "0d", "1.5h", ""):
        with pytest.raises(LinkError, match="e.g. 7d, 12h, 30m"):
            parse_duration(bad)


# EXEC
# ├── M1 (manager) ── R1, R2
# └── M2 (manager) ── R3
OWNERS = pd.DataFrame({"owner_id": ["EXEC", "M1", "M2", "R1", "R2", "R3"],
                       "manager_id": [None, "EXEC", "EXEC", "M1", "M1", "M2"]})


def test_a_manager_opens_their_own_reps_but_never_a_peers_team() -> None:
    assert allowed("M1", "M1", OWNERS)
    assert allowed("M1", "R1", OWNERS) and allowed("M1", "R2", OWNERS)
    assert not allowed("M1", "R3", OWNERS)
    assert not allowed("M1", "M2", OWNERS)
    assert not allowed("M1", "EXEC", OWNERS)


def test_the_executive_opens_everyone() -> None:
    assert all(allowed("EXEC", o, OWNERS) for o in OWNERS["owner_id"])


def test_a_rep_opens_only_their_own_report() -> None:
    assert allowed("R1", "R1", OWNERS)
    assert not any(allowed("R1", o, OWNERS) for o in ["EXEC", "M1", "M2", "R2", "R3"])


def test_unknown_viewer_or_target_is_refused() -> None:
    assert not allowed("GONE", "R1", OWNERS)
    assert not allowed("EXEC", "GONE", OWNERS)
