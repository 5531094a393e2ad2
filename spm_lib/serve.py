"""`spm serve`: Voila on templates/, each report opened from a signed link, verified before a kernel is handed out.

The HTTP layer is Voila's own tornado application with three changes:
- an identity provider (`LinkIdentityProvider`) that accepts a request only with a valid signed link (`?t=`) or the
  session cookie it set for one; a report page (`/voila/render/<level>_<cadence>.ipynb`) must carry its link and may
  only open the viewer or someone below them, of the template's level. Voila's render handler requires an
  authenticated user, so an invalid request never reaches a preheated kernel;
- our own pages: the landing page at the root (the reports a link may open, trust at a glance) and the refusal page
  (Voila's root would be a file browser; its file browser and contents API are removed);
- a request log without query strings, so link tokens never reach a log.
Kernels verify the request again (spm_lib.live) and fail closed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pandas as pd
from jupyter_server.auth.identity import IdentityProvider, User
from jupyter_server.base.handlers import JupyterHandler
from markupsafe import escape
from tornado import web

from spm_lib import links
from spm_lib.config import Config
from spm_lib.errors import SpmError
from spm_lib.live import AS_OF_ENV, LIVE_ENV, REFUSAL_TITLE
from spm_lib.report import worst_trust

SESSION_COOKIE = "spm-session"
TEMPLATE_NAME = "spm"  # the Voila page template under spm_lib/share/jupyter/voila/templates/
SHARE_DIR = Path(__file__).parent / "share" / "jupyter"
STATIC_DIR = Path(__file__).parent / "static"
_NOTEBOOK = re.compile(r"^(rep|manager|director|executive)_(weekly|monthly|quarterly|annual)\.ipynb$")
_LEVEL_ORDER = {"executive": 0, "director": 1, "manager": 2, "rep": 3}
_CADENCE_ORDER = {"weekly": 0, "monthly": 1, "quarterly": 2, "annual": 3}
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

    def folder(self, cadence: str) -> Path | None:
        """The run folder live pages of `cadence` read (pinned as-of or the newest with a cube), None if none."""
        from spm_lib.runfolder import has_cube

        base = self.project / "runs" / cadence
        if self.as_of is not None:
            f = base / self.as_of.isoformat()
            return f if has_cube(f) else None
        runs = sorted(p for p in base.glob("????-??-??") if has_cube(p)) if base.is_dir() else []
        return runs[-1] if runs else None

    def read(self, cadence: str) -> tuple[Path, pd.DataFrame, pd.Series] | None:
        """(run folder, owners, worst trust status per owner) of `cadence`'s live run, or None."""
        folder = self.folder(cadence)
        if folder is None:
            return None
        stamp = (folder / "cube.json").stat().st_mtime
        hit = self._cache.get(folder)
        if hit is None or hit[0] != stamp:
            owners = pd.read_parquet(folder / "owners.parquet")
            owners["owner_id"] = owners["owner_id"].astype(str)
            trust = pd.read_parquet(folder / "trust.parquet", columns=["owner_id", "status"])
            hit = (stamp, owners, worst_trust(trust))
            self._cache[folder] = hit
        return folder, hit[1], hit[2]


def notebook_of(path: str) -> tuple[str, str] | None:
    """(level, cadence) of a template file name like `rep_monthly.ipynb`, None otherwise."""
    m = _NOTEBOOK.match(path.rsplit("/", 1)[-1])
    return (m.group(1), m.group(2)) if m else None


# ---------------------------------------------------------------- identity: the signed link
class LinkIdentityProvider(IdentityProvider):
    """Authenticates a request by its signed link (or the session cookie set for one); anything else is refused."""

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

    def _server(self, handler: web.RequestHandler) -> dict[str, Any]:
        return dict(handler.settings["spm"])

    def _claims(self, handler: web.RequestHandler, token: str) -> links.Claims | None:
        try:
            return links.verify(self._server(handler)["secret"], token)
        except links.LinkError:
            return None

    def get_user(self, handler: web.RequestHandler) -> User | None:
        """The viewer of a valid link (query `t` or session cookie); None refuses the request."""
        token = handler.get_query_argument("t", None)
        from_query = token is not None
        if token is None:
            raw = handler.get_secure_cookie(SESSION_COOKIE, max_age_days=31)
            token = raw.decode() if raw else None
        claims = self._claims(handler, token) if token else None
        if claims is None:
            if not from_query and handler.get_cookie(SESSION_COOKIE):
                handler.clear_cookie(SESSION_COOKIE, path=handler.settings.get("base_url", "/"))
            return None
        render = url_join(handler.settings.get("base_url", "/"), "voila/render/")
        if handler.request.path.startswith(render):
            if not from_query or not may_open(self._server(handler)["runs"], claims, handler):
                return None  # a report page must carry its link, and open only the viewer's subtree
        if from_query:
            handler.set_secure_cookie(SESSION_COOKIE, str(token), expires_days=None, httponly=True, samesite="Lax",
                                      path=handler.settings.get("base_url", "/"),
                                      secure=handler.request.protocol == "https")
        return User(username=claims.owner_id, name=claims.owner_id, display_name=claims.owner_id)


def may_open(runs: Runs, claims: links.Claims, handler: web.RequestHandler) -> bool:
    """True when the report page requested may be opened with `claims` (owner in the subtree, template's level)."""
    kind = notebook_of(handler.request.path)
    if kind is None:
        return False
    level, cadence = kind
    read = runs.read(cadence)
    if read is None:
        return False
    _, owners, _ = read
    target = (handler.get_query_argument("owner", None) or claims.owner_id).strip()
    levels = dict(zip(owners["owner_id"], owners["level"].astype(str), strict=True))
    return levels.get(target) == level and links.allowed(claims.owner_id, target, owners)


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
    """The refusal page (Voila's login URL): HTTP 403, the reason in words, nothing else."""

    def get(self) -> None:
        """Render the refusal for the refused address in `next`."""
        self.set_status(403)
        self.set_header("Cache-Control", "no-store")
        reason = refusal_reason(self.settings["spm"]["secret"], self.get_query_argument("next", ""))
        self.finish(page(REFUSAL_TITLE, refusal_body(reason)))


class StaticHandler(web.StaticFileHandler):
    """spm_lib/static (plotly.js finance bundle, report CSS), cached by browsers for a day."""

    def set_extra_headers(self, path: str) -> None:
        """Cache for a day (the files change only with a new spm release)."""
        self.set_header("Cache-Control", "public, max-age=86400")


class LandingHandler(JupyterHandler):
    """The server root: the reports a valid link may open, with trust status at a glance."""

    def get(self) -> None:
        """Landing page for the link's viewer, or the refusal page."""
        self.set_header("Cache-Control", "no-store")
        spm = self.settings["spm"]
        user = self.current_user
        if user is None:
            self.set_status(403)
            self.finish(page(REFUSAL_TITLE, refusal_body(refusal_reason(spm["secret"], self.request.uri or ""))))
            return
        token = self.get_query_argument("t", None) or (self.get_secure_cookie(SESSION_COOKIE) or b"").decode()
        claims = links.verify(spm["secret"], token)
        self.finish(page("Your reports", landing_body(spm["runs"], spm["templates"], claims, token,
                                                       self.settings.get("base_url", "/"))))


def _report_href(base: str, level: str, cadence: str, token: str, owner: str | None = None) -> str:
    q = f"t={quote(token)}" + (f"&owner={quote(owner)}" if owner else "")
    return escape(url_join(base, "voila/render", f"{level}_{cadence}.ipynb") + "?" + q)


def landing_body(runs: Runs, templates: Path, claims: links.Claims, token: str, base: str) -> str:
    """The landing page's body: the viewer's own reports by cadence, then their subtree's, trust at a glance."""
    cadences = sorted((c for c in _CADENCE_ORDER if runs.read(c) is not None), key=_CADENCE_ORDER.__getitem__)
    if not cadences:
        return refusal_body("there is no report to open yet: no run has been computed")
    main = claims.cadence if claims.cadence in cadences else cadences[0]
    folder, owners, trust = runs.read(main)  # type: ignore[misc]
    me = owners.set_index("owner_id")
    if claims.owner_id not in me.index:
        return refusal_body("this link's owner has no report in the latest run")
    level = str(me.loc[claims.owner_id, "level"])
    name = str(me.loc[claims.owner_id, "name"])
    mine = []
    for c in cadences:
        if not (templates / f"{level}_{c}.ipynb").is_file():
            continue
        f, _, tr = runs.read(c)  # type: ignore[misc]
        status = str(tr.get(claims.owner_id, "pass"))
        mine.append(f'<tr><td><a href="{_report_href(base, level, c, token)}">{escape(c.capitalize())} report</a>'
                    f'</td><td>{escape(f.name)}</td><td>{_badge(status)}</td></tr>')
    parts = [f"<h1>{escape(name)}</h1><p class='muted'>{escape(level.capitalize())} · reports as of the latest "
             f"run of each cadence</p><h2>Your reports</h2><table><tr><th>Report</th><th>As of</th><th>Trust</th>"
             f"</tr>{''.join(mine)}</table>"]
    below = [o for o in _subtree(claims.owner_id, owners) if o != claims.owner_id]
    if below:
        team = me.loc[below].reset_index()
        team = team.assign(order=team["level"].map(_LEVEL_ORDER)).sort_values(["order", "name"])
        rows = [f'<tr><td><a href="{_report_href(base, str(r.level), main, token, str(r.owner_id))}">'
                f'{escape(str(r.name))}</a></td><td>{escape(str(r.level).capitalize())}</td>'
                f'<td>{_badge(str(trust.get(r.owner_id, "pass")))}</td></tr>' for r in team.itertuples()]
        parts.append(f"<h2>Your team ({len(below)}) — {escape(main)} reports as of {escape(folder.name)}</h2>"
                     f"<table><tr><th>Owner</th><th>Level</th><th>Trust</th></tr>{''.join(rows)}</table>")
    return "".join(parts)


def _subtree(owner_id: str, owners: pd.DataFrame) -> list[str]:
    from spm_lib.org import Org

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
def _voila_class() -> type:
    from voila.app import Voila

    class SpmVoila(Voila):  # type: ignore[misc]
        """Voila with the landing and refusal pages in front and the file browser and contents API removed."""

        def init_handlers(self) -> list[Any]:
            """Our pages first (tornado takes the first match); Voila's own, minus the tree and contents API."""
            base = self.server_url
            ours: list[Any] = [
                (url_join(base), LandingHandler),
                (url_join(base, "login"), RefusalHandler),
                (url_join(base, "spm/static/(.*)"), StaticHandler, {"path": str(STATIC_DIR)}),
            ]
            keep = [h for h in super().init_handlers()
                    if not any(k in h[0] for k in ("/voila/tree", "/voila/api/contents", "/voila/files"))
                    and h[0] != base]
            return ours + keep

    return SpmVoila


def voila_config(cfg: Config, templates: Path, *, host: str, port: int, secret: str) -> Any:
    """The traitlets config of the live server (pools, culling, page template, identity provider)."""
    from traitlets.config import Config as TConfig

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
    if live.cull_idle_s > 0:
        c.MappingKernelManager.cull_idle_timeout = live.cull_idle_s
        c.MappingKernelManager.cull_interval = max(1, min(60, live.cull_idle_s // 2))
        c.MappingKernelManager.cull_connected = False
    return c


def check_pools(cfg: Config, templates: Path) -> None:
    """Every template named in live.pools exists."""
    from spm_lib.errors import ConfigError, did_you_mean

    known = sorted(p.stem for p in templates.glob("*.ipynb"))
    for name in cfg.live.pools:
        if name not in known:
            raise ConfigError(f"config/live.yml: pools.{name}: no template templates/{name}.ipynb"
                              f"{did_you_mean(name, known)}; templates: {', '.join(known)}")


def ensure_runs(cfg: Config, as_of: date | None, echo: Any = print) -> dict[str, Path]:
    """Make sure the run of each cadence live pages read exists (computing the cube when missing)."""
    from spm_lib.periods import CADENCES, FiscalCalendar
    from spm_lib.runfolder import ensure_cube, has_cube, run_dir

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
    """Start the live server (blocks until stopped); refuses to start without SPM_LINK_SECRET."""
    secret = links.secret_from_env()
    root = cfg.root
    templates = root / "templates"
    check_pools(cfg, templates)
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
    app_class = _voila_class()
    app = app_class(config=voila_config(cfg, templates, host=host, port=port, secret=secret))
    app.tornado_settings = {"log_function": log_request,
                            "spm": {"secret": secret, "runs": Runs(root, as_of), "templates": templates}}
    app.initialize([])
    echo(f"spm serve: live reports at http://{host}:{app.port}{url_join(cfg.live.base_url)} "
         f"(links carry {cfg.live.public_url}); open a link from `spm link --owner ID`")
    app.start()
