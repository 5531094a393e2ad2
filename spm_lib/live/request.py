"""The kernel side of a live report: who asked for which owner's report, verified again inside the kernel.

`spm serve` starts Voila with SPM_LIVE=1 in the environment of every kernel. A live kernel warms up before anyone
asks (preheating: the cube of the latest run read, indexes built, plotly imported), then blocks in
`voila.utils.wait_for_request()` until Voila hands it a request. The request's query string carries the signed
link (`t`) and optionally the owner to open (`owner`, someone in the viewer's subtree) and the as-of (`as_of`).

The kernel fails closed: when no request reached it (wait_for_request only warns when it cannot reach the server,
e.g. when Voila binds another address than VOILA_APP_IP), when the link does not verify, or when the owner is
outside the viewer's subtree, the report is a refusal, never a default owner. The HTTP layer (spm_lib.live.serve)
checks all of this before a kernel is handed out; this module checks it again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs

import pandas as pd

from spm_lib.domain import links
from spm_lib.errors import SpmError

LIVE_ENV = "SPM_LIVE"  # "1" in the kernels spm serve starts
AS_OF_ENV = "SPM_LIVE_AS_OF"  # spm serve --as-of pins the run live pages read
REFUSAL_TITLE = "This report cannot be opened"
QUERY_KEYS = frozenset({"t", "owner", "as_of"})  # all a report page's address may carry (no template, no theme)


class LiveRequestError(SpmError):
    """A live request cannot be served: no verified request, a bad link, or an owner outside the viewer's subtree."""


@dataclass(frozen=True)
class LiveRequest:
    """A verified live request: the viewer (from the signed link), the owner whose report opens, and the as-of."""

    viewer_id: str
    owner_id: str
    as_of: date | None


def live_mode() -> bool:
    """True in a kernel started by `spm serve`."""
    return os.environ.get(LIVE_ENV) == "1"


def pinned_as_of() -> date | None:
    """The as-of `spm serve --as-of` pinned, if any."""
    text = os.environ.get(AS_OF_ENV, "").strip()
    return date.fromisoformat(text) if text else None


def query_key(secret: str, kernel_id: str) -> str:
    """The key a preheated kernel shows to receive its request (only the server and that kernel can compute it)."""
    return hmac.new(secret.encode(), f"spm.kernel-query:{kernel_id}".encode(), hashlib.sha256).hexdigest()


def query_url(secret: str, environ: dict[str, str] | None = None) -> str:
    """Where this preheated kernel waits for its request: Voila's query socket, behind the kernel's own key."""
    env = os.environ if environ is None else environ
    ip = env.get("VOILA_APP_IP", "127.0.0.1")
    port = env.get("VOILA_APP_PORT", "8866")
    base = env.get("VOILA_WS_BASE_URL") or env.get("VOILA_SERVER_URL") or "/"
    return f"ws://{ip}:{port}{base}voila/query/{query_key(secret, env.get('VOILA_KERNEL_ID', ''))}"


def receive_query() -> str:
    """The query string of the request this kernel serves ('' when none arrived): waits for it when preheated."""
    if os.environ.get("VOILA_PREHEAT") == "True":
        os.environ.pop("QUERY_STRING", None)  # only what wait_for_request delivers counts
        from voila.utils import wait_for_request  # here: voila takes ~3 s to import (measured); preheated kernels only

        stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115 - its warning names the server URL
        try:
            wait_for_request(query_url(links.secret_from_env()))
        except Exception:  # noqa: BLE001 - any failure to receive the request means: no request
            return ""
        finally:
            sys.stderr.close()
            sys.stderr = stderr
    return os.environ.get("QUERY_STRING", "")


def _one(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key) or []
    return values[0].strip() if values and values[0].strip() else None


def check_query(params: dict[str, list[str]]) -> None:
    """Refuse a report address that carries anything but its link, the owner and the as-of (no template or theme)."""
    extra = sorted(set(params) - QUERY_KEYS)
    if extra:
        raise LiveRequestError(f"the address carries {', '.join(extra)}, which a report page does not take; "
                               "open the report from the link you received")
    if any(len(v) > 1 for v in params.values()):
        raise LiveRequestError("the address repeats a parameter; open the report from the link you received")


def check_claims(claims: links.Claims, *, cadence: str, as_of_text: str | None) -> date | None:
    """The as-of a link opens on a `cadence` page: the link's own cadence only, and its pinned as-of only."""
    if claims.cadence != cadence:
        raise LiveRequestError(f"this link opens {claims.cadence} reports, not {cadence} ones; ask for a "
                               f"{cadence} link")
    if as_of_text is not None:
        try:
            asked = date.fromisoformat(as_of_text)
        except ValueError:
            raise LiveRequestError(f"as_of {as_of_text!r} is not a date (YYYY-MM-DD)") from None
        if asked != claims.as_of:
            pinned = f"the run as of {claims.as_of}" if claims.as_of else "the latest run"
            raise LiveRequestError(f"this link opens {pinned}, not the one as of {asked}; ask for a link to it")
    return claims.as_of


def parse_request(query: str, owners: pd.DataFrame, *, secret: str, level: str | None, cadence: str,
                  revoked: Callable[[links.Claims], bool] | None = None) -> LiveRequest:
    """Verify the query string of a live request against the run's owners; LiveRequestError when it must be refused."""
    if not query:
        raise LiveRequestError("no verified request reached this report; open it again from your link")
    params = parse_qs(query, keep_blank_values=False)
    check_query(params)
    token = _one(params, "t")
    if token is None:
        raise LiveRequestError("the address carries no link; open the report from the link you received")
    try:
        claims = links.verify(secret, token)
    except links.LinkError as e:
        raise LiveRequestError(str(e)) from None
    if revoked is not None and revoked(claims):
        raise LiveRequestError("this link was revoked")
    as_of = check_claims(claims, cadence=cadence, as_of_text=_one(params, "as_of"))
    target = _one(params, "owner") or claims.owner_id
    if not links.allowed(claims.owner_id, target, owners):
        raise LiveRequestError("this link does not open that owner's report: a link opens its owner's report and "
                               "the reports of the people below them")
    if level is not None:
        levels = dict(zip(owners["owner_id"].astype(str), owners["level"].astype(str), strict=True))
        if levels.get(target) != level:
            raise LiveRequestError(f"this page shows {level} reports; open the report from the list your link shows")
    return LiveRequest(viewer_id=claims.owner_id, owner_id=target, as_of=as_of)


def owners_of(run_dir: Path) -> pd.DataFrame:
    """The owners table of a run folder (the hierarchy live requests are checked against)."""
    return pd.read_parquet(run_dir / "owners.parquet")
