"""`spm serve`: Voila on templates/, each report opened from a signed link, verified before a kernel is handed out.

The HTTP layer is Voila's own tornado application; every one of its handlers is wrapped by a gate that runs before
Voila's code (see `Gate` and the rules below):
- a report page (`/voila/render/<level>_<cadence>.ipynb`) must carry a valid, unrevoked link of its cadence (and
  its as-of, if pinned) opening the viewer or someone below them, of the template's level, and nothing but `t`,
  `owner` and `as_of` (no template or theme switching); opens are rate-limited per link and admitted only while a
  kernel is free or fits under the cap (429 / 503 with Retry-After otherwise);
- a static report page (`/report/<level>_<cadence>`, the read path) passes the same link checks and sends the
  owner's batch report of the run at once, without a kernel (spm_lib.live.static);
- the browser gets an opaque session id (HttpOnly, SameSite=Lax, Secure over TLS), never the link; every kernel
  handed to a page is bound to that session, and the kernel's endpoints (`/api/kernels/<id>`, its channels
  websocket, Voila's shutdown) answer that session only;
- Voila's query websocket, which hands a preheated kernel its request (with the link), answers only the kernel
  itself: its URL carries a key derived from the secret and the kernel id;
- our own pages: the landing page at the root (the reports a link may open, trust at a glance) and the refusal
  page (Voila's file browser and contents API are removed);
- every page is sent with anti-framing, no-referrer and no-sniff headers; logs never carry a link token, a session
  id or a kernel id (spm_lib.live.log_redact).
Kernels verify the request again (spm_lib.live.request) and fail closed.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pandas as pd
from jupyter_server.auth.identity import IdentityProvider, User
from markupsafe import escape
from tornado import web
from traitlets.config import Config as TConfig

from spm_lib.config import Config, LiveConfig
from spm_lib.domain import links
from spm_lib.domain.org import Org
from spm_lib.domain.periods import CADENCES, FiscalCalendar
from spm_lib.engine.trust import worst_by_owner
from spm_lib.errors import ConfigError, SpmError, did_you_mean
from spm_lib.live import log_redact
from spm_lib.live.kernels import BudgetedManager, KernelBudget, default_max_kernels
from spm_lib.live.request import (
    AS_OF_ENV,
    LIVE_ENV,
    REFUSAL_TITLE,
    LiveRequestError,
    check_claims,
    check_query,
    query_key,
)
from spm_lib.live.sessions import Session, Sessions, link_key
from spm_lib.live.static import RenderedReports, with_live_bar
from spm_lib.project import templates_dir
from spm_lib.state import revocations
from spm_lib.store.runfolder import ensure_cube, has_cube, run_dir

SESSION_COOKIE = "spm-session"
TEMPLATE_NAME = "spm"  # the Voila page template under spm_lib/share/jupyter/voila/templates/
SHARE_DIR = Path(__file__).resolve().parents[1] / "share" / "jupyter"
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
_NOTEBOOK = re.compile(r"^(rep|manager|director|executive)_(weekly|monthly|quarterly|annual)\.ipynb$")
_LEVEL_ORDER = {"executive": 0, "director": 1, "manager": 2, "rep": 3}
_KERNEL_ID = r"\w+-\w+-\w+-\w+-\w+"  # Voila's own kernel id pattern
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                    "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
access_log = logging.getLogger("spm.serve.access")


class ServeError(SpmError):
    """`spm serve` cannot start as configured."""


# ---------------------------------------------------------------- what a link may open
class Runs:
    """The latest run of each cadence under runs/ and their owners and trust, re-read when a newer run appears."""

    def __init__(self, project: Path, as_of: date | None = None) -> None:
        self.project = project
        self.as_of = as_of
        self._cache: dict[Path, tuple[float, pd.DataFrame, pd.Series]] = {}

    def folder(self, cadence: str, as_of: date | None = None) -> Path | None:
        """The run folder live pages of `cadence` read (a link's as-of, the server's, or the newest), None if none."""
        base = self.project / "runs" / cadence
        pinned = as_of or self.as_of
        if pinned is not None:
            f = base / pinned.isoformat()
            return f if has_cube(f) else None
        runs = sorted(p for p in base.glob("????-??-??") if has_cube(p)) if base.is_dir() else []
        return runs[-1] if runs else None

    def read(self, cadence: str, as_of: date | None = None) -> tuple[Path, pd.DataFrame, pd.Series] | None:
        """(run folder, owners, worst trust status per owner) of `cadence`'s live run (or as of `as_of`), or None."""
        folder = self.folder(cadence, as_of)
        if folder is None:
            return None
        stamp = (folder / "cube.json").stat().st_mtime
        hit = self._cache.get(folder)
        if hit is None or hit[0] != stamp:
            owners = pd.read_parquet(folder / "owners.parquet")
            owners["owner_id"] = owners["owner_id"].astype(str)
            trust = pd.read_parquet(folder / "trust.parquet", columns=["owner_id", "status"])
            hit = (stamp, owners, worst_by_owner(trust))
            self._cache[folder] = hit
        return folder, hit[1], hit[2]


def notebook_of(path: str) -> tuple[str, str] | None:
    """(level, cadence) of a template file name like `rep_monthly.ipynb`, None otherwise."""
    m = _NOTEBOOK.match(path.rsplit("/", 1)[-1])
    return (m.group(1), m.group(2)) if m else None


# ---------------------------------------------------------------- the gate
class Refused(Exception):  # noqa: N818 - a decision, not a failure
    """The gate's answer to a request it does not let through: status, reason in words, extra headers."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class Gate:
    """What the HTTP layer knows and decides: the secret, the runs, the sessions, revocations and the kernel budget."""

    def __init__(self, secret: str, runs: Runs, templates: Path, live: LiveConfig,
                 revoked: Callable[[links.Claims], bool]) -> None:
        self.secret = secret
        self.runs = runs
        self.templates = templates
        self.live = live
        self.revoked = revoked
        self.sessions = Sessions(live.opens_per_minute)
        self.budget: KernelBudget | None = None  # set when the kernel manager exists
        self.rendered = RenderedReports()
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in live.trusted_proxies]

    # ---------------------------------------------------------------- links and sessions
    def link(self, token: str | None) -> links.Claims:
        """The claims of a valid, unexpired, unrevoked link; Refused (403, the reason in words) otherwise."""
        if not token:
            raise Refused(403, "this address carries no valid link")
        try:
            claims = links.verify(self.secret, token)
        except links.LinkError as e:
            raise Refused(403, str(e).split(";")[0]) from None
        if self.revoked(claims):
            raise Refused(403, "this link was revoked")
        return claims

    def session(self, handler: web.RequestHandler) -> Session | None:
        """The live session of the request's cookie (None when absent, unknown, expired or revoked)."""
        raw = handler.get_secure_cookie(SESSION_COOKIE, max_age_days=31)
        session = self.sessions.get(raw.decode() if raw else None)
        if session is not None and self.revoked(session.claims):
            self.sessions.end(session.sid)
            return None
        return session

    def viewer(self, handler: web.RequestHandler) -> links.Claims | None:
        """Who is asking: the link in the query if there is one, else the session's link; None when neither holds."""
        token = handler.get_query_argument("t", None)
        if token is not None:
            try:
                return self.link(token)
            except Refused:
                return None
        session = self.session(handler)
        return session.claims if session else None

    def over_tls(self, handler: web.RequestHandler) -> bool:
        """True when the browser reached us over TLS (X-Forwarded-Proto is believed from trusted proxies only)."""
        if handler.request.protocol == "https":
            return True
        forwarded = handler.request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if forwarded != "https" or not self._proxies:
            return False
        try:
            peer = ipaddress.ip_address(handler.request.remote_ip or "")
        except ValueError:
            return False
        return any(peer in net for net in self._proxies)

    def begin(self, handler: web.RequestHandler, claims: links.Claims, token: str) -> Session:
        """The session of this browser for this link (a new opaque id in the cookie unless it has one already)."""
        session = self.session(handler)
        if session is None or session.link_key != link_key(claims, token):
            session = self.sessions.start(claims, token)
            handler.set_secure_cookie(SESSION_COOKIE, session.sid, expires_days=None, httponly=True, samesite="Lax",
                                      path=handler.settings.get("base_url", "/"), secure=self.over_tls(handler))
        return session

    def refuse_busy(self) -> Refused:
        """503: every kernel is taken; the page says when to try again."""
        return Refused(503, "the live server is busy: every report kernel is in use; this page tries again shortly",
                       {"Retry-After": str(self.live.busy_retry_s)})


class LinkIdentityProvider(IdentityProvider):
    """Authenticates a request by its signed link or its session (the gate has already refused anything else)."""

    @property
    def auth_enabled(self) -> bool:
        """Always: there is no anonymous access."""
        return True

    @property
    def login_available(self) -> bool:
        """No login form: a link is the only way in."""
        return False

    def get_handlers(self) -> list[tuple[str, object]]:
        """None: the refusal page is mounted by SpmVoila under the base URL."""
        return []

    def should_check_origin(self, handler: web.RequestHandler) -> bool:
        """Always check the origin of websocket requests."""
        return True

    def get_user(self, handler: web.RequestHandler) -> User | None:
        """The viewer of a valid link (query `t`) or of the request's session; None refuses the request."""
        claims = gate_of(handler).viewer(handler)
        if claims is None:
            return None
        return User(username=claims.owner_id, name=claims.owner_id, display_name=claims.owner_id)


def gate_of(handler: web.RequestHandler) -> Gate:
    """The server's gate (in the tornado settings)."""
    gate: Gate = handler.settings["spm"]["gate"]
    return gate


def may_open(runs: Runs, claims: links.Claims, level: str, cadence: str, owner: str | None) -> bool:
    """True when `claims` may open the `level` `cadence` report of `owner` (default: the link's own)."""
    read = runs.read(cadence, claims.as_of)
    if read is None:
        return False
    _, owners, _ = read
    target = (owner or claims.owner_id).strip()
    levels = dict(zip(owners["owner_id"], owners["level"].astype(str), strict=True))
    return levels.get(target) == level and links.allowed(claims.owner_id, target, owners)


# ---------------------------------------------------------------- the rules, one per kind of endpoint
@dataclass(frozen=True)
class Opening:
    """A report address that passed the link checks: the verified link, the template's level and cadence, whose."""

    claims: links.Claims
    token: str
    level: str
    cadence: str
    owner: str  # the owner whose report opens (the link's own, or `owner=` someone below them)


def link_checks(handler: web.RequestHandler, kind: tuple[str, str] | None) -> Opening:
    """The checks every report address passes, static or interactive: nothing but `t`, `owner` and `as_of`, a
    valid link of the page's cadence (and pinned as-of), an owner the link opens, of the template's level."""
    gate = gate_of(handler)
    params = parse_qs(handler.request.query, keep_blank_values=True)
    try:
        check_query(params)
    except LiveRequestError as e:
        raise Refused(403, str(e)) from None
    token = (params.get("t") or [""])[0]
    claims = gate.link(token)
    if kind is None or not (gate.templates / f"{kind[0]}_{kind[1]}.ipynb").is_file():
        raise Refused(404, "there is no such report")
    level, cadence = kind
    try:
        check_claims(claims, cadence=cadence, as_of_text=_param(params, "as_of"))
    except LiveRequestError as e:
        raise Refused(403, str(e)) from None
    owner = (_param(params, "owner") or claims.owner_id).strip()
    if not may_open(gate.runs, claims, level, cadence, owner):
        raise Refused(403, "this link does not open that report: it opens its owner's reports and those of the "
                           "people below them")
    return Opening(claims, token, level, cadence, owner)


def count_open(gate: Gate, opening: Opening) -> None:
    """Count one open of the link; Refused (429, Retry-After) beyond live.opens_per_minute."""
    wait = gate.sessions.retry_after(link_key(opening.claims, opening.token))
    if wait:
        raise Refused(429, f"this link opened too many reports in the last minute; try again in {wait:.0f} s",
                      {"Retry-After": str(int(wait + 0.999))})


def report_rule(handler: web.RequestHandler) -> None:
    """The interactive report page: the link checks, the rate, and a kernel free or under the cap."""
    gate = gate_of(handler)
    opening = link_checks(handler, notebook_of(handler.request.path))
    count_open(gate, opening)
    notebook = f"{opening.level}_{opening.cadence}.ipynb"
    admitted = gate.budget.admit(notebook) if gate.budget is not None else "new"
    if admitted is None:
        raise gate.refuse_busy()
    session = gate.begin(handler, opening.claims, opening.token)
    handler.spm_open = (notebook, admitted, session.sid)  # type: ignore[attr-defined] # a ReportHandler attribute


def static_rule(handler: web.RequestHandler) -> None:
    """The static report page (the read path): the same link checks; the rate is counted when the page is sent."""
    kind = notebook_of(handler.request.path.rsplit("/", 1)[-1] + ".ipynb")
    handler.spm_opening = link_checks(handler, kind)  # type: ignore[attr-defined] # a StaticReportHandler attribute


def _param(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[0] if values else None


def kernel_rule(handler: web.RequestHandler) -> None:
    """A kernel endpoint (model, channels, shutdown): only the session the kernel was handed to."""
    gate = gate_of(handler)
    kernel_id = str(handler.path_kwargs.get("kernel_id") or (handler.path_args or [""])[0])
    session = gate.session(handler)
    if session is None or not gate.sessions.owns(session.sid, kernel_id):
        raise Refused(403, "this report's connection belongs to another page; open the report from your link")


def query_rule(handler: web.RequestHandler) -> None:
    """Voila's query socket (a preheated kernel receives its request): only the kernel, by its key."""
    key, kernel_id = (str(a) for a in [*handler.path_args, "", ""][:2])
    if not hmac.compare_digest(key, query_key(gate_of(handler).secret, kernel_id)):
        raise Refused(403, "not a kernel of this server")


def open_rule(handler: web.RequestHandler) -> None:
    """Assets and our own pages: no check here (they carry no numbers, or check the viewer themselves)."""


def guarded(base: type, rule: Callable[[web.RequestHandler], None]) -> type:
    """`base` with `rule` run before its own prepare (a refusal is answered at once) and the security headers."""

    class Guarded(base):  # a base chosen at run time
        def set_default_headers(self) -> None:
            super().set_default_headers()
            for name, value in SECURITY_HEADERS.items():
                self.set_header(name, value)

        async def prepare(self, *args: Any, **kwargs: Any) -> None:
            try:
                rule(self)
            except Refused as r:
                answer_refusal(self, r)
                return
            out = super().prepare(*args, **kwargs)
            if inspect.isawaitable(out):
                await out

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def answer_refusal(handler: web.RequestHandler, refusal: Refused) -> None:
    """Finish the request with the refusal page (status, reason, Retry-After), never a redirect."""
    handler.clear()
    handler.set_status(refusal.status)
    for name, value in {**SECURITY_HEADERS, "Cache-Control": "no-store", **refusal.headers}.items():
        handler.set_header(name, value)
    handler.set_header("Content-Type", "text/html; charset=UTF-8")
    if refusal.status == 503:
        body = (f'<div class="refusal" role="status"><h1>Starting your report …</h1><p>{escape(refusal.reason)}.</p>'
                f'</div><meta http-equiv="refresh" content="{escape(refusal.headers.get("Retry-After", "15"))}">')
        handler.finish(page("Busy", body))
    else:
        handler.finish(page(REFUSAL_TITLE, refusal_body(refusal.reason)))


def url_join(base: str, *parts: str) -> str:
    """`base` (a URL path ending in /) joined with `parts`."""
    out = "/" + base.strip("/") + "/" if base.strip("/") else "/"
    return out + "/".join(p.strip("/") for p in parts) + ("/" if parts and parts[-1].endswith("/") else "")


# ---------------------------------------------------------------- pages
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">
<style>body{{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;max-width:920px;
margin:32px auto;padding:0 20px}}h1{{font-size:24px;margin:0 0 4px}}h2{{font-size:18px;margin:28px 0 8px}}
.muted{{color:#5f6b7a}}table{{border-collapse:collapse;width:100%}}th,td{{text-align:left;padding:6px 10px;
border-bottom:1px solid #e4e7eb}}th{{font-size:13px;color:#5f6b7a;font-weight:600}}a{{color:#1d5fbf}}
.b{{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}}
.pass{{background:#e3f4e8;color:#1b6b36}}.warn{{background:#fdf1d8;color:#8a5a00}}.fail{{background:#fde2e1;color:#a4231c}}
.refusal{{border-left:4px solid #a4231c;background:#fdf3f2;padding:16px 20px;border-radius:4px}}</style>
</head><body>{body}</body></html>"""
_TRUST_WORDS = {"pass": "trusted", "warn": "check", "fail": "fix data first"}


def page(title: str, body: str) -> str:
    """A plain page of the live server (landing, refusal): own CSS, no scripts."""
    return _PAGE.format(title=escape(title), body=body)


def refusal_body(reason: str) -> str:
    """The refusal: what happened and what to do, no numbers, no traceback."""
    return (f'<div class="refusal" role="alert"><h1>{escape(REFUSAL_TITLE)}</h1><p>{escape(reason)}.</p>'
            "<p>Ask the person who sent you the link for a new one.</p></div>")


def refusal_reason(secret: str, url: str) -> str:
    """Why the link in `url` (its query `t`) was refused, in words."""
    token = (parse_qs(urlsplit(url).query).get("t") or [""])[0]
    if not token:
        return "this address carries no valid link"
    try:
        links.verify(secret, token)
    except links.LinkError as e:
        return str(e).split(";")[0]
    return "this link does not open that report: it opens its owner's reports and those of the people below them"


class RefusalHandler(web.RequestHandler):
    """The refusal page (Voila's login URL, reached only if a Jupyter handler redirects): HTTP 403, nothing else."""

    def get(self) -> None:
        """Render the refusal (the refused address in `next` only says why; it is never echoed)."""
        answer_refusal(self, Refused(403, refusal_reason(gate_of(self).secret, self.get_query_argument("next", ""))))


class StaticHandler(web.StaticFileHandler):
    """spm_lib/static (plotly.js finance bundle, report CSS), cached by browsers for a day."""

    def set_extra_headers(self, path: str) -> None:
        """Cache for a day (the files change only with a new spm release)."""
        self.set_header("Cache-Control", "public, max-age=86400")


class NotFoundHandler(web.RequestHandler):
    """Any other address: 404, with the security headers."""

    def prepare(self) -> None:
        """Answer 404 for every method."""
        answer_refusal(self, Refused(404, "there is no such page"))


class LandingHandler(web.RequestHandler):
    """The server root: the reports a valid link (or its session) may open, with trust status at a glance."""

    def get(self) -> None:
        """Landing page for the link's viewer, or the refusal page (403)."""
        gate = gate_of(self)
        token = self.get_query_argument("t", None)
        try:
            if token is not None:
                session = gate.begin(self, gate.link(token), token)
            else:
                found = gate.session(self)
                if found is None:
                    raise Refused(403, "this address carries no valid link")
                session = found
            body = landing_body(gate.runs, gate.templates, session.claims, session.token,
                                self.settings.get("base_url", "/"))
        except Refused as r:
            answer_refusal(self, r)
            return
        self.set_header("Cache-Control", "no-store")
        self.finish(page("Your reports", body))


def report_url(base: str, level: str, cadence: str, token: str, owner: str | None = None, *,
               interactive: bool = False) -> str:
    """The address of a report page: the static one (the read path) or the interactive one (a kernel's)."""
    q = f"t={quote(token)}" + (f"&owner={quote(owner)}" if owner else "")
    path = url_join(base, "voila/render", f"{level}_{cadence}.ipynb") if interactive else \
        url_join(base, "report", f"{level}_{cadence}")
    return path + "?" + q


def _report_href(base: str, level: str, cadence: str, token: str, owner: str | None = None) -> str:
    return escape(report_url(base, level, cadence, token, owner))


class StaticReportHandler(web.RequestHandler):
    """The read path: the owner's batch report of the run, sent at once (no kernel), with the live bar on top."""

    spm_opening: Opening | None = None

    def get(self, name: str) -> None:
        """The batch page of the verified link's owner; the interactive page when the run has not rendered it."""
        gate, opening = gate_of(self), self.spm_opening
        assert opening is not None  # static_rule ran (a refusal finishes the request before get)
        base = self.settings.get("base_url", "/")
        owner = None if opening.owner == opening.claims.owner_id else opening.owner
        interactive = report_url(base, opening.level, opening.cadence, opening.token, owner, interactive=True)
        found = self._batch_page(gate, opening)
        if found is None:  # no batch report of this cube for the owner: the interactive page checks everything again
            self.redirect(interactive)
            return
        try:
            count_open(gate, opening)
        except Refused as r:
            answer_refusal(self, r)
            return
        gate.begin(self, opening.claims, opening.token)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(with_live_bar(found.read_bytes(), interactive, url_join(base) + "?t=" + quote(opening.token)))

    @staticmethod
    def _batch_page(gate: Gate, opening: Opening) -> Path | None:
        """The owner's batch HTML in the run the link opens (the owner checked again against that run's owners)."""
        read = gate.runs.read(opening.cadence, opening.claims.as_of)
        if read is None:
            return None
        folder, owners, _ = read
        mine = owners[owners["owner_id"] == opening.owner]
        if mine.empty or str(mine["level"].iloc[0]) != opening.level or \
                not links.allowed(opening.claims.owner_id, opening.owner, owners):
            return None
        return gate.rendered.find(folder, opening.level, opening.owner)


def landing_body(runs: Runs, templates: Path, claims: links.Claims, token: str, base: str) -> str:
    """The landing page's body: the viewer's own report of the link's cadence, then their subtree's, trust at a glance.

    Refused (403) when the link's run or owner is not there: a link opens its own cadence (and as-of) only.
    """
    read = runs.read(claims.cadence, claims.as_of)
    if read is None:
        pinned = f" as of {claims.as_of}" if claims.as_of else ""
        raise Refused(403, f"there is no {claims.cadence} report{pinned} to open yet: that run has not been computed")
    folder, owners, trust = read
    me = owners.set_index("owner_id")
    if claims.owner_id not in me.index:
        raise Refused(403, f"this link's owner has no report in the {claims.cadence} run as of {folder.name}")
    level = str(me.loc[claims.owner_id, "level"])
    name = str(me.loc[claims.owner_id, "name"])
    cadence = claims.cadence
    mine = ""
    if (templates / f"{level}_{cadence}.ipynb").is_file():
        status = str(trust.get(claims.owner_id, "pass"))
        mine = (f'<tr><td><a href="{_report_href(base, level, cadence, token)}">{escape(cadence.capitalize())} '
                f'report</a></td><td>{escape(folder.name)}</td><td>{_badge(status)}</td></tr>')
    parts = [f"<h1>{escape(name)}</h1><p class='muted'>{escape(level.capitalize())} · {escape(cadence)} reports as "
             f"of {escape(folder.name)}</p><h2>Your report</h2><table><tr><th>Report</th><th>As of</th><th>Trust</th>"
             f"</tr>{mine}</table>"]
    below = [o for o in _subtree(claims.owner_id, owners) if o != claims.owner_id]
    if below:
        team = me.loc[below].reset_index()
        team = team[[(templates / f"{lv}_{cadence}.ipynb").is_file() for lv in team["level"].astype(str)]]
        team = team.assign(order=team["level"].map(_LEVEL_ORDER)).sort_values(["order", "name"])
        rows = [f'<tr><td><a href="{_report_href(base, str(r.level), cadence, token, str(r.owner_id))}">'
                f'{escape(str(r.name))}</a></td><td>{escape(str(r.level).capitalize())}</td>'
                f'<td>{_badge(str(trust.get(r.owner_id, "pass")))}</td></tr>' for r in team.itertuples()]
        parts.append(f"<h2>Your team ({len(rows)}) — {escape(cadence)} reports as of {escape(folder.name)}</h2>"
                     f"<table><tr><th>Owner</th><th>Level</th><th>Trust</th></tr>{''.join(rows)}</table>")
    return "".join(parts)


def _subtree(owner_id: str, owners: pd.DataFrame) -> list[str]:
    return Org.from_owners(owners).subtree(owner_id)


def _badge(status: str) -> str:
    return f'<span class="b {escape(status)}">{escape(_TRUST_WORDS.get(status, status))}</span>'


# ---------------------------------------------------------------- logging without tokens
def log_request(handler: web.RequestHandler) -> None:
    """One access-log line per request: status, method, path (never the query string: it carries the link)."""
    status = handler.get_status()
    ms = 1000.0 * handler.request.request_time()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(level, "%d %s %s %.0fms", status, handler.request.method, handler.request.path, ms)


# ---------------------------------------------------------------- the application
def report_handler(base: type) -> type:
    """Voila's report handler whose kernel manager counts and hands over the kernel this open receives."""

    class ReportHandler(base):  # a base chosen at run time
        _spm_km: BudgetedManager | None = None
        spm_open: tuple[str, str | None, str] | None = None

        async def prepare(self, *args: Any, **kwargs: Any) -> None:
            out = super().prepare(*args, **kwargs)
            if inspect.isawaitable(out):
                await out
            if not self._finished:
                _ = self.xsrf_token  # sets the _xsrf cookie the page sends back when it releases its kernel

        @property
        def kernel_manager(self) -> Any:
            opened = self.spm_open
            gate = gate_of(self)
            if opened is None or gate.budget is None:
                return self.settings["kernel_manager"]
            if self._spm_km is None:
                notebook, kind, sid = opened
                self._spm_km = BudgetedManager(gate.budget, notebook, kind,
                                               lambda kernel_id: gate.sessions.bind(sid, kernel_id))
            return self._spm_km

        def _release(self) -> None:
            if self._spm_km is not None:
                self._spm_km.release()
            elif self.spm_open is not None and gate_of(self).budget is not None:
                notebook, kind, _ = self.spm_open
                gate_of(self).budget.withdraw(notebook, kind)  # type: ignore[union-attr] # checked just above
            self.spm_open = None

        def on_finish(self) -> None:
            self._release()
            super().on_finish()

        def on_connection_close(self) -> None:
            self._release()
            super().on_connection_close()

    return ReportHandler


def _rule_for(pattern: str) -> Callable[[web.RequestHandler], None]:
    """Which rule guards one of Voila's routes."""
    if "/voila/render/" in pattern:
        return report_rule
    if any(k in pattern for k in ("/api/kernels/", "/voila/api/shutdown/", "/voila/execution/")):
        return kernel_rule
    return open_rule


def _voila_class() -> type:
    # here: importing voila takes ~3 s (measured), which the commands and tests that never serve do not pay
    from voila.app import Voila
    from voila.request_info_handler import RequestInfoSocketHandler

    class KernelQuerySocket(RequestInfoSocketHandler):
        """Voila's query socket behind the kernel's key: /voila/query/<key>/<kernel id>."""

        def open(self, key: str, kernel_id: str) -> None:  # the route's own path kwargs
            """Wait for (or receive at once) the request this kernel serves."""
            super().open(kernel_id)

    class SpmVoila(Voila):
        """Voila behind the gate: our pages in front, every route guarded, file browser and contents API removed."""

        def init_handlers(self) -> list[Any]:
            """Our pages first (tornado takes the first match); Voila's own guarded, minus tree, contents, files."""
            base = self.server_url
            out: list[Any] = [
                (url_join(base), guarded(LandingHandler, open_rule)),
                (url_join(base, "login"), guarded(RefusalHandler, open_rule)),
                (url_join(base, "spm/static/(.*)"), guarded(StaticHandler, open_rule), {"path": str(STATIC_DIR)}),
                (url_join(base, r"report/(\w+)"), guarded(StaticReportHandler, static_rule)),
                (url_join(base, f"voila/query/([0-9a-f]{{64}})/({_KERNEL_ID})"),
                 guarded(KernelQuerySocket, query_rule)),
            ]
            for pattern, cls, *extra in super().init_handlers():
                if any(k in pattern for k in ("/voila/tree", "/voila/api/contents", "/voila/files", "/voila/query/")) \
                        or pattern == base:
                    continue
                rule = _rule_for(pattern)
                out.append((pattern, guarded(report_handler(cls) if rule is report_rule else cls, rule), *extra))
            return out

        def init_settings(self) -> dict[str, Any]:
            """Voila's settings; then the kernel budget around the kernel manager it has just created."""
            settings: dict[str, Any] = super().init_settings()
            gate: Gate = self.tornado_settings["spm"]["gate"]
            gate.budget = KernelBudget(self.kernel_manager, self.tornado_settings["spm"]["max_kernels"],
                                       [p.name for p in gate.templates.glob("*.ipynb")], gate.sessions.release)
            settings["default_handler_class"] = guarded(NotFoundHandler, open_rule)
            settings.setdefault("headers", {}).update(SECURITY_HEADERS)
            return settings

    return SpmVoila


def pooled_kernels(live: LiveConfig, templates: Path) -> int:
    """How many preheated kernels the pools hold when full."""
    return sum(live.pools.get(p.stem, live.pool_size) for p in templates.glob("*.ipynb"))


def max_kernels(live: LiveConfig, templates: Path) -> int:
    """The kernel cap: live.max_kernels, or what fits in live.memory_share of the machine at live.kernel_mb each."""
    pooled = pooled_kernels(live, templates)
    if live.max_kernels is None:
        return default_max_kernels(pooled, live.kernel_mb, live.memory_share)
    if live.max_kernels <= pooled:
        raise ConfigError(f"config/live.yml: max_kernels {live.max_kernels} leaves no kernel for a page: the pools "
                          f"hold {pooled} preheated kernels (pool_size and pools); raise max_kernels above {pooled} "
                          "or shrink the pools")
    return live.max_kernels


def voila_config(cfg: Config, templates: Path, *, host: str, port: int, secret: str) -> Any:
    """The traitlets config of the live server (pools, culling, page template, identity provider)."""
    live = cfg.live
    c = TConfig()
    c.Voila.ip = host
    c.Voila.port = port
    c.Voila.port_retries = 0
    c.Voila.open_browser = False
    c.Voila.base_url = url_join(live.base_url)
    c.Voila.root_dir = str(templates)
    c.Voila.identity_provider_class = LinkIdentityProvider
    c.Voila.cookie_secret = hashlib.sha256(("spm-cookie:" + secret).encode()).digest()
    c.VoilaConfiguration.preheat_kernel = True
    c.VoilaConfiguration.default_pool_size = live.pool_size
    c.VoilaConfiguration.template = TEMPLATE_NAME
    c.VoilaConfiguration.theme = "light"
    c.VoilaConfiguration.show_tracebacks = False
    c.VoilaConfiguration.strip_sources = True
    c.VoilaConfiguration.extension_denylist = ["jupyterlab-plotly"]
    c.VoilaConfiguration.file_allowlist = []
    pools = {f"{name}.ipynb": {"pool_size": size} for name, size in live.pools.items()}
    c.VoilaKernelManager.kernel_pools_config = {"default": {"pool_size": live.pool_size}, **pools}
    c.VoilaKernelManager.fill_delay = 1.0  # refill once the page that took a kernel has rendered
    c.VoilaConfiguration.allow_template_override = "NO"
    c.VoilaConfiguration.allow_theme_override = "NO"
    if live.cull_idle_s > 0:  # idle kernels are culled, a connected tab's too (its page keeps its numbers)
        c.MappingKernelManager.cull_idle_timeout = live.cull_idle_s
        c.MappingKernelManager.cull_interval = max(1, min(60, live.cull_idle_s // 2))
        c.MappingKernelManager.cull_connected = True
    return c


def check_pools(cfg: Config, templates: Path) -> None:
    """Every template named in live.pools exists."""
    known = sorted(p.stem for p in templates.glob("*.ipynb"))
    for name in cfg.live.pools:
        if name not in known:
            raise ConfigError(f"config/live.yml: pools.{name}: no template templates/{name}.ipynb"
                              f"{did_you_mean(name, known)}; templates: {', '.join(known)}")


def ensure_runs(cfg: Config, as_of: date | None, echo: Any = print) -> dict[str, Path]:
    """Make sure the run of each cadence live pages read exists (computing the cube when missing)."""
    cal = FiscalCalendar.from_config(cfg)
    out = {}
    for cadence in CADENCES:
        day = as_of or cal.last_closed_end(cadence, date.today())
        folder = run_dir(cfg, cadence, day)
        if not has_cube(folder):
            echo(f"computing the {cadence} run as of {day} (live pages read it) …")
            t0 = time.perf_counter()
            ensure_cube(cfg, cadence, day)
            echo(f"  done in {time.perf_counter() - t0:.1f} s")
        out[cadence] = folder
    return out


def serve(cfg: Config, *, host: str | None = None, port: int | None = None, as_of: date | None = None,
          echo: Any = print) -> None:
    """Start the live server (blocks until stopped); refuses to start without a strong SPM_LINK_SECRET."""
    secret = links.secret_from_env()
    root = cfg.root
    templates = templates_dir(root)  # the project's templates/, else the packaged ones
    check_pools(cfg, templates)
    cap = max_kernels(cfg.live, templates)
    ensure_runs(cfg, as_of, echo)
    host = host or cfg.live.host
    port = port or cfg.live.port
    os.environ.update({LIVE_ENV: "1", "SPM_PROJECT_DIR": str(root), "VOILA_APP_IP": host,
                       "JUPYTER_PATH": os.pathsep.join(filter(None, [str(SHARE_DIR), os.environ.get("JUPYTER_PATH")]))})
    if as_of is not None:
        os.environ[AS_OF_ENV] = as_of.isoformat()
    else:
        os.environ.pop(AS_OF_ENV, None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log_redact.install(secret)
    cached = revocations.CachedRevocations(lambda: revocations.read(cfg))
    gate = Gate(secret, Runs(root, as_of), templates, cfg.live, cached.revoked)
    app_class = _voila_class()
    app = app_class(config=voila_config(cfg, templates, host=host, port=port, secret=secret))
    app.tornado_settings = {"log_function": log_request, "spm": {"gate": gate, "max_kernels": cap}}
    app.initialize([])
    log_redact.install(secret, app.log)
    echo(f"spm serve: live reports at http://{host}:{app.port}{url_join(cfg.live.base_url)} "
         f"(links carry {cfg.live.public_url}); at most {cap} kernels; open a link from `spm link --owner ID`")
    try:
        app.start()
    except Exception:  # noqa: BLE001 - logged through the redacting filter (a raw traceback would name kernel ids)
        logging.getLogger("spm.serve").exception("the live server stopped with an error")
        raise SystemExit(1) from None
