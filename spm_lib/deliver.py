"""`spm send`: email each owner their report of a run: the headline in the body, the key charts inline, the full report
attached, a signed link to the live report.

The body reads right in any mail client: no JavaScript, no remote content, inline styles only, the charts as PNG
parts referenced by cid. Each owner's email is built, planned in the send ledger, handed to the SMTP server and
marked sent, one after another under the run folder's lock, so a send that stops half-way resumes where it
stopped and never mails anyone twice. Names and addresses come from the CRM and are untrusted: control characters
are stripped from every header value and an invalid address fails that owner with a message saying what to fix.
Secrets (the SMTP password, the link-signing key) come from the environment and never reach a log, an .eml or
the ledger.
"""

from __future__ import annotations

import hashlib
import html as _html
import logging
import os
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email import policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import escape
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from spm_lib import html, ledger
from spm_lib.config import Config
from spm_lib.errors import RunError, SpmError

log = logging.getLogger("spm.send")

PASSWORD_ENV = "SPM_SMTP_PASSWORD"
HOST_ENV = "SPM_SMTP_HOST"
PORT_ENV = "SPM_SMTP_PORT"
EMAIL_CHARTS = ("attainment", "forecast", "trend", "pipeline-stage")  # the key charts, in this order, at most 4
CHART_WIDTH = 600  # layout pixels: the body is 640 px wide
CHART_SCALE = 2  # sharp on high-density screens
RETRY_BASE_S = 2.0  # first back-off after a temporary SMTP failure (doubles each time)
RETRY_MAX_S = 60.0
OFFENDERS_SHOWN = 5
STATUS_COLOURS = {"green": "#1a9850", "amber": "#f5a623", "red": "#d73027", "none": "#9e9e9e"}
STATUS_WORDS = {"green": "on track", "amber": "at risk", "red": "behind", "none": "no target"}
LEVEL_TITLES = {"rep": "Sales executive", "manager": "Manager", "director": "Director", "executive": "Executive"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_ADDR = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
_FONT = "font-family:Arial,Helvetica,sans-serif;"
_TD = "padding:6px 8px;border-bottom:1px solid #e5e5e5;"


class DeliveryError(SpmError):
    """An email cannot be built or sent as configured (bad address, SMTP refusal, missing secret)."""


class SendFailed(DeliveryError):
    """The SMTP server did not take a message after `tries` attempts; `permanent` for a 5xx refusal."""

    def __init__(self, message: str, tries: int, permanent: bool) -> None:
        super().__init__(message)
        self.tries = tries
        self.permanent = permanent


# ---------------------------------------------------------------- headers and addresses
def clean_header(text: object) -> str:
    """`text` fit for an email header: control characters (CR, LF, tab …) replaced by spaces, spaces collapsed."""
    return re.sub(r" {2,}", " ", _CONTROL.sub(" ", "" if text is None else str(text))).strip()


def make_address(name: object, email: object, *, who: str = "") -> Address:
    """A validated address with a display name cleaned of control characters (DeliveryError when invalid)."""
    where = f"{who}: " if who else ""
    addr = "" if email is None or (isinstance(email, float) and email != email) else str(email).strip()
    if not addr or addr in ("<NA>", "nan"):
        raise DeliveryError(f"{where}no email address; fill in column email of table owners in the CRM, "
                            "or add the owner id to delivery.exclude (config/delivery.yml)")
    if not _ADDR.fullmatch(addr):
        raise DeliveryError(f"{where}email address {addr!r} is not valid (expected name@domain); fix column "
                            "email of table owners in the CRM, or add the owner id to delivery.exclude")
    local, domain = addr.rsplit("@", 1)
    try:
        return Address(display_name=clean_header(name), username=local, domain=domain)
    except (ValueError, IndexError, HeaderParseError) as e:
        raise DeliveryError(f"{where}email address {addr!r} cannot be used: {e}") from None


def _as_addresses(items: Address | str | Sequence[Address | str] | None, who: str) -> list[Address]:
    if items is None:
        return []
    if isinstance(items, Address | str):
        items = [items]
    return [a if isinstance(a, Address) else make_address("", a, who=who) for a in items]


def _domain(cfg: Config) -> str:
    """The domain of the sender address (for Message-IDs and content ids)."""
    m = re.search(r"@([A-Za-z0-9.-]+)", cfg.delivery.from_address)
    return m.group(1) if m else "spm.invalid"


# ---------------------------------------------------------------- what the email says
def _fmt(value: object, unit: str, currency: str) -> str:
    return html.fmt_value(value, unit if unit in html.UNITS else "count", currency)


def _attainment(value: object) -> str:
    return html.fmt_value(value * 100 if not html.is_missing(value) else value, "pct")  # type: ignore[operator]


def headline(rpt: Any) -> str:
    """The subject's headline: bookings against target, and 'fix the data first' when a trust check fails."""
    att = rpt.value("quota_attainment")
    words = f"bookings at {att:.0f} % of target" if att == att else "no bookings target for the period"
    return f"{words} · fix the data first" if rpt.trust_status() == "fail" else words


def subject(rpt: Any) -> str:
    """The email's subject line: owner, cadence, period and headline."""
    return clean_header(f"{rpt.name} · {rpt.cadence} report {rpt.closed}: {headline(rpt)}")


def _offenders(rpt: Any) -> pd.DataFrame:
    """The largest offending deals of the owner's scope, one row per deal, at most OFFENDERS_SHOWN."""
    off = rpt.offenders()
    t = rpt.cube.trust
    failing = t.loc[(t["owner_id"] == rpt.owner_id) & (t["status"] == "fail"), "check"]
    off = off[off["check"].isin(set(failing))]
    if off.empty:
        return off
    first = off.groupby("opportunity_id", sort=False).first().reset_index()
    first["detail"] = off.groupby("opportunity_id", sort=False)["detail"].agg(
        lambda s: "; ".join(dict.fromkeys(map(str, s)))).to_numpy()
    names = rpt.cube.owners.set_index("owner_id")["name"]
    first["owner"] = first["owner_id"].map(names).fillna(first["owner_id"])
    return first.head(OFFENDERS_SHOWN)


def _failing_checks(rpt: Any) -> list[str]:
    t = rpt.cube.trust
    return t.loc[(t["owner_id"] == rpt.owner_id) & (t["status"] == "fail"), "label"].astype(str).tolist()


def _e(text: object) -> str:
    return str(escape("" if text is None else str(text)))


def _trust_html(rpt: Any) -> str:
    status = rpt.trust_status()
    if status == "pass":
        return (f'<p style="{_FONT}margin:12px 0;padding:10px 12px;background:#e8f5e9;border-left:4px solid '
                f'{STATUS_COLOURS["green"]};">The numbers can be trusted: every trust check passes.</p>')
    if status == "warn":
        return (f'<p style="{_FONT}margin:12px 0;padding:10px 12px;background:#fff8e1;border-left:4px solid '
                f'{STATUS_COLOURS["amber"]};"><b>Check the data:</b> some trust checks warn; the deals are listed '
                "in the attached report.</p>")
    off = _offenders(rpt)
    rows = "".join(
        f'<tr><td style="{_TD}">{_e(r.name)}<br><span style="color:#6b6b6b;">{_e(r.opportunity_id)} · '
        f'{_e(r.owner)}</span></td><td style="{_TD}text-align:right;white-space:nowrap;">'
        f'{_e(_fmt(r.amount, "currency", rpt.currency))}</td><td style="{_TD}">{_e(r.detail)}</td></tr>'
        for r in off.itertuples())
    table = (f'<table role="presentation" cellpadding="0" cellspacing="0" style="{_FONT}font-size:13px;'
             f'border-collapse:collapse;width:100%;margin-top:8px;background:#ffffff;"><tr>'
             f'<th align="left" style="{_TD}">Deal</th><th align="right" style="{_TD}">Amount</th>'
             f'<th align="left" style="{_TD}">What is wrong</th></tr>{rows}</table>') if rows else ""
    return (f'<div style="{_FONT}margin:12px 0;padding:10px 12px;background:#fdecea;border-left:4px solid '
            f'{STATUS_COLOURS["red"]};"><p style="margin:0 0 4px 0;font-size:16px;"><b>Fix the data first</b></p>'
            f'<p style="margin:0;">These checks fail: {_e(", ".join(_failing_checks(rpt)))}. Correct these deals '
            f"in the CRM before deciding anything else"
            f"{f' (the {len(off)} largest shown)' if len(off) else ''}.</p>{table}</div>")


def _kpi_html(rpt: Any) -> str:
    rows = rpt.kpi_rows(rpt.above_the_line_ids())
    body = []
    for r in rows.itertuples():
        colour = STATUS_COLOURS.get(str(r.status), STATUS_COLOURS["none"])
        value = _fmt(r.value, r.unit, rpt.currency) if not html.is_missing(r.value) else (r.na_reason or "—")
        body.append(
            f'<tr><td style="{_TD}">{_e(r.label)}</td>'
            f'<td style="{_TD}text-align:right;white-space:nowrap;"><b>{_e(value)}</b></td>'
            f'<td style="{_TD}text-align:right;white-space:nowrap;">{_e(_fmt(r.target, r.unit, rpt.currency))}</td>'
            f'<td style="{_TD}text-align:right;white-space:nowrap;">{_e(_attainment(r.attainment))}</td>'
            f'<td style="{_TD}"><span style="display:inline-block;padding:2px 8px;border-radius:10px;'
            f'background:{colour};color:#ffffff;font-size:12px;white-space:nowrap;">'
            f'{_e(STATUS_WORDS.get(str(r.status), str(r.status)))}</span></td></tr>')
    head = "".join(f'<th align="{a}" style="{_TD}color:#6b6b6b;font-weight:normal;">{t}</th>'
                   for t, a in (("KPI", "left"), ("Value", "right"), ("Target", "right"), ("Attainment", "right"),
                                ("Status", "left")))
    return (f'<table role="presentation" cellpadding="0" cellspacing="0" style="{_FONT}font-size:14px;'
            f'border-collapse:collapse;width:100%;"><tr>{head}</tr>{"".join(body)}</table>')


def _kpi_text(rpt: Any) -> str:
    rows = rpt.kpi_rows(rpt.above_the_line_ids())
    return "\n".join(
        f"- {r.label}: {_fmt(r.value, r.unit, rpt.currency) if not html.is_missing(r.value) else r.na_reason or '—'}"
        f" (target {_fmt(r.target, r.unit, rpt.currency)}, attainment {_attainment(r.attainment)}, "
        f"{STATUS_WORDS.get(str(r.status), str(r.status))})" for r in rows.itertuples())


def _trust_text(rpt: Any) -> str:
    status = rpt.trust_status()
    if status == "pass":
        return "The numbers can be trusted: every trust check passes."
    if status == "warn":
        return "Check the data: some trust checks warn; the deals are listed in the attached report."
    lines = [f"FIX THE DATA FIRST. These checks fail: {', '.join(_failing_checks(rpt))}.",
             "Correct these deals in the CRM before deciding anything else:"]
    lines += [f"- {r.name} ({r.opportunity_id}, {r.owner}), {_fmt(r.amount, 'currency', rpt.currency)}: {r.detail}"
              for r in _offenders(rpt).itertuples()]
    return "\n".join(lines)


def _html_to_text(fragment: str) -> str:
    """Readable plain text of a small HTML fragment (rows and list items on their own lines)."""
    text = re.sub(r"(?i)<\s*(br|/tr|/li|/p|/h\d)\s*/?>", "\n", fragment)
    text = re.sub(r"(?i)<\s*li[^>]*>", "- ", text)
    text = re.sub(r"(?i)</t[dh]>", " ", text)
    text = _html.unescape(re.sub(r"<[^>]+>", "", text))
    return "\n".join(ln.strip() for ln in text.splitlines() if ln.strip())


def plain_text(rpt: Any, *, link_url: str | None, actions_html: str = "", attached: bool = True) -> str:
    """The plain-text alternative of the email."""
    parts = [f"{clean_header(rpt.name)} · {rpt.cadence} report",
             f"Closed period {rpt.closed} · forward look {rpt.forward} · as of {rpt.as_of}", "",
             _trust_text(rpt), "", "Above the line", _kpi_text(rpt), ""]
    if actions_html:
        parts += ["Open actions", _html_to_text(actions_html), ""]
    if link_url:
        parts += [f"Your live report: {link_url}", ""]
    if attached:
        parts.append("The full interactive report is attached: open it in a web browser.")
    return "\n".join(parts) + "\n"


def html_body(rpt: Any, *, link_url: str | None, images: Mapping[str, bytes], actions_html: str = "",
              alts: Mapping[str, str] | None = None, attached: bool = True) -> str:
    """The HTML body: inline styles only, charts as cid: images, no script and no remote content."""
    from spm_lib.images import png_size

    charts = []
    for cid, png in images.items():
        w, h = png_size(png)
        alt = (alts or {}).get(cid) or "Chart"
        charts.append(f'<tr><td style="padding:8px 0;"><img src="cid:{_e(cid)}" alt="{_e(alt)}" '
                      f'width="{CHART_WIDTH}" height="{round(h * CHART_WIDTH / w)}" '
                      f'style="display:block;width:100%;max-width:{CHART_WIDTH}px;height:auto;border:0;"></td></tr>')
    link = (f'<p style="{_FONT}margin:20px 0;"><a href="{_e(link_url)}" style="display:inline-block;'
            f'padding:10px 18px;background:#4c78a8;color:#ffffff;text-decoration:none;border-radius:4px;">'
            f'Open your live report</a></p>') if link_url else ""
    actions = (f'<h2 style="{_FONT}font-size:16px;margin:20px 0 6px 0;">Open actions</h2>'
               f'<div style="{_FONT}font-size:14px;">{actions_html}</div>') if actions_html else ""
    foot = ("The full interactive report is attached: open it in a web browser." if attached else "")
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><meta name="viewport" '
        'content="width=device-width,initial-scale=1"><title>' + _e(subject(rpt)) + "</title></head>"
        '<body style="margin:0;padding:0;background:#f4f4f4;">'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="background:#f4f4f4;">'
        '<tr><td align="center" style="padding:16px 8px;">'
        '<table role="presentation" width="640" cellpadding="0" cellspacing="0" style="max-width:640px;width:100%;'
        'background:#ffffff;"><tr><td style="padding:20px 20px 8px 20px;color:#2b2b2b;">'
        f'<h1 style="{_FONT}font-size:22px;margin:0 0 4px 0;">{_e(rpt.name)}</h1>'
        f'<p style="{_FONT}font-size:13px;color:#6b6b6b;margin:0;">{_e(LEVEL_TITLES.get(rpt.level, rpt.level))} · '
        f"{_e(rpt.cadence)} report · closed period <b>{_e(rpt.closed)}</b> · forward look "
        f"<b>{_e(rpt.forward)}</b> · as of {_e(rpt.as_of)}</p>"
        f"{_trust_html(rpt)}"
        f'<h2 style="{_FONT}font-size:16px;margin:20px 0 6px 0;">Above the line</h2>{_kpi_html(rpt)}'
        f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0">{"".join(charts)}</table>'
        f"{actions}{link}"
        f'<p style="{_FONT}font-size:12px;color:#6b6b6b;margin:16px 0;">{foot}</p>'
        "</td></tr></table></td></tr></table></body></html>")


def content_hash(text: str, attachment_html: str | None, parts: Sequence[bytes]) -> str:
    """A digest of what an email says (its text without the link, the attached report, the charts)."""
    h = hashlib.sha256()
    for chunk in (text.encode("utf-8"), (attachment_html or "").encode("utf-8"), *parts):
        h.update(len(chunk).to_bytes(8, "big"))
        h.update(chunk)
    return h.hexdigest()


def message_token(rpt: Any, digest: str) -> str:
    """A stable token of (run folder, owner, content): the Message-ID's and the content ids' local part."""
    return hashlib.sha256(f"{rpt.cadence}/{rpt.as_of}\0{rpt.owner_id}\0{digest}".encode()).hexdigest()[:32]


def chart_cid(cfg: Config, token: str, key: str) -> str:
    """The content id of one chart of one email."""
    return f"{re.sub(r'[^a-z0-9-]', '-', key.lower())}.{token[:16]}@{_domain(cfg)}"


def build_message(cfg: Config, rpt: Any, *, to: Address | str | Sequence[Address | str],
                  cc: Sequence[Address | str] = (), link_url: str | None, images: Mapping[str, bytes],
                  attachment_html: str | None, actions_html: str = "", alts: Mapping[str, str] | None = None,
                  digest: str | None = None) -> EmailMessage:
    """One owner's email: subject, HTML body with inline charts (cid → PNG), plain-text alternative, report attached."""
    to_list = _as_addresses(to, f"owner {rpt.owner_id!r}")
    if not to_list:
        raise DeliveryError(f"owner {rpt.owner_id!r}: no recipient")
    cc_list = _as_addresses(list(cc), f"owner {rpt.owner_id!r} (cc)")
    attach = attachment_html if cfg.delivery.attach_report else None
    text = plain_text(rpt, link_url=link_url, actions_html=actions_html, attached=attach is not None)
    if digest is None:
        digest = content_hash(plain_text(rpt, link_url=None, actions_html=actions_html, attached=attach is not None),
                              attach, list(images.values()))
    msg = EmailMessage(policy=policy.SMTP)
    msg["Subject"] = subject(rpt)
    msg["From"] = clean_header(cfg.delivery.from_address)
    msg["To"] = to_list
    if cc_list:
        msg["Cc"] = cc_list
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{message_token(rpt, digest)}@{_domain(cfg)}>"
    msg["X-SPM-Run"] = clean_header(f"{rpt.cadence}/{rpt.as_of}")
    msg["X-SPM-Content-Hash"] = digest
    msg.set_content(text)
    msg.add_alternative(html_body(rpt, link_url=link_url, images=images, actions_html=actions_html, alts=alts,
                                  attached=attach is not None), subtype="html")
    body = msg.get_payload()[1]  # type: ignore[index]
    assert isinstance(body, EmailMessage)
    for cid, png in images.items():
        body.add_related(png, "image", "png", cid=f"<{cid}>", disposition="inline",
                         filename=f"{cid.split('.', 1)[0]}.png")
    if attach is not None:
        from spm_lib.runner import safe_name

        msg.add_attachment(attach.encode("utf-8"), "text", "html",
                           filename=f"{safe_name(rpt.owner_id)}-{rpt.cadence}-{rpt.as_of}.html")
    return msg


# ---------------------------------------------------------------- the charts of an email
def email_figures(rpt: Any) -> dict[str, Any]:
    """The 2-4 key charts of an owner's email (attainment, forecast, trend, pipeline by stage), by key."""
    rpt.above_the_line()
    rpt.forward_look()
    figs = rpt.figures()
    return {k: figs[k] for k in EMAIL_CHARTS if k in figs}


def _alt(fig: Any, key: str) -> str:
    title = getattr(getattr(getattr(fig, "layout", None), "title", None), "text", None)
    return clean_header(_html.unescape(re.sub(r"<[^>]+>", " ", str(title)))) if title else key.replace("-", " ")


def _figure_json(fig: Any) -> bytes:
    return (fig.to_json() if hasattr(fig, "to_json") else str(fig)).encode("utf-8")


def _figure_height(fig: Any) -> int:
    h = getattr(getattr(fig, "layout", None), "height", None)
    return int(h) if h else 300


# ---------------------------------------------------------------- SMTP
def _temporary(e: BaseException) -> bool:
    """True for failures worth retrying: 4xx replies, dropped or refused connections, time-outs."""
    if isinstance(e, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        return bool(e.recipients) and all(400 <= int(c) < 500 for c, _ in e.recipients.values())
    if isinstance(e, smtplib.SMTPResponseException):
        return 400 <= int(e.smtp_code) < 500
    if isinstance(e, smtplib.SMTPException | ssl.SSLCertVerificationError):
        return False
    return isinstance(e, OSError)  # refused or reset connections, time-outs


def _describe(e: BaseException) -> str:
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        return "recipients refused: " + "; ".join(
            f"{a} ({c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m})"
            for a, (c, m) in e.recipients.items())
    if isinstance(e, smtplib.SMTPResponseException):
        err = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
        return f"SMTP {e.smtp_code} {err}"
    return f"{type(e).__name__}: {e}"


class SmtpSender:
    """One SMTP connection for a batch, reopened after a drop; 4xx and dropped connections retried with back-off."""

    def __init__(self, cfg: Config) -> None:
        smtp = cfg.delivery.smtp
        self.host = os.environ.get(HOST_ENV) or smtp.host
        try:
            self.port = int(os.environ.get(PORT_ENV) or smtp.port)
        except ValueError:
            raise DeliveryError(f"{PORT_ENV}={os.environ.get(PORT_ENV)!r} is not a port number") from None
        self.security = smtp.security
        self.user = smtp.user
        self.timeout = smtp.timeout_s
        self.max_attempts = cfg.delivery.max_attempts
        self._password = os.environ.get(PASSWORD_ENV)
        if self.user and not self._password:
            raise DeliveryError(f"config/delivery.yml sets smtp.user {self.user!r} but {PASSWORD_ENV} is not set: "
                                f"export {PASSWORD_ENV} in the environment of `spm send` (never in a config file)")
        self._conn: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> smtplib.SMTP:
        if self._conn is not None:
            return self._conn
        if self.security == "ssl":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                  context=ssl.create_default_context())
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.security == "starttls":
                conn.starttls(context=ssl.create_default_context())
        if self.user:
            try:
                conn.login(self.user, self._password or "")
            except smtplib.SMTPAuthenticationError as e:
                conn.close()
                raise DeliveryError(f"the SMTP server {self.host}:{self.port} refused the login of {self.user!r} "
                                    f"({e.smtp_code}); check smtp.user and {PASSWORD_ENV}") from None
        self._conn = conn
        return conn

    def close(self) -> None:
        """Say goodbye to the server (or just drop a broken connection)."""
        if self._conn is not None:
            try:
                self._conn.quit()
            except (smtplib.SMTPException, OSError):
                self._conn.close()
            self._conn = None

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def send(self, msg: EmailMessage, recipients: Sequence[str]) -> tuple[int, dict[str, Any]]:
        """Hand `msg` to the server for `recipients`: (tries, refused recipients); DeliveryError when it failed."""
        tries = 0

        def attempt() -> dict[str, Any]:
            nonlocal tries
            tries += 1
            try:
                return dict(self._connect().send_message(msg, to_addrs=list(recipients)))
            except BaseException:
                self._drop()  # the next attempt starts on a fresh connection
                raise

        try:
            refused = Retrying(retry=retry_if_exception(_temporary), stop=stop_after_attempt(self.max_attempts),
                               wait=wait_exponential(multiplier=RETRY_BASE_S, max=RETRY_MAX_S),
                               reraise=True)(attempt)
        except (smtplib.SMTPException, OSError) as e:
            temporary = _temporary(e)
            kind = "temporary, gave up" if temporary else "permanent"
            raise SendFailed(f"{_describe(e)} ({kind} after {tries} attempt{'s' * (tries != 1)})", tries,
                             not temporary) from None
        return tries, refused


class _Pace:
    """At most `per_minute` messages a minute."""

    def __init__(self, per_minute: int) -> None:
        self.gap = 60.0 / per_minute
        self.last = float("-inf")

    def wait(self) -> None:
        pause = self.last + self.gap - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        self.last = time.monotonic()


# ---------------------------------------------------------------- sending a run
@dataclass
class Summary:
    """What `send_all` did: owners sent (or written, in a dry run), skipped, failed, or of unknown state."""

    run_key: str
    generation: int
    dry_run: bool
    sent: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed and no email is of unknown state."""
        return not self.failed and not self.unknown

    def text(self) -> str:
        """The summary in words, for the terminal and the operator's email."""
        verb = "written as .eml (dry run)" if self.dry_run else "sent"
        lines = [f"{self.run_key} (generation {self.generation}): {len(self.sent)} {verb}, "
                 f"{len(self.skipped)} skipped, {len(self.failed)} failed, {len(self.unknown)} unknown"]
        lines += [f"  failed  {o}: {why}" for o, why in sorted(self.failed.items())]
        lines += [f"  unknown {o}: left 'sending' by an interrupted send; check the mailbox, then send again "
                  "with --resend-unknown if it did not arrive" for o in self.unknown]
        lines += [f"  skipped {o}: {why}" for o, why in sorted(self.skipped.items())]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@contextmanager
def _project_env(root: Path) -> Iterator[None]:
    """SPM_PROJECT_DIR set to `root` while reports are read (Report reads the config of the project)."""
    old = os.environ.get("SPM_PROJECT_DIR")
    os.environ["SPM_PROJECT_DIR"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SPM_PROJECT_DIR", None)
        else:
            os.environ["SPM_PROJECT_DIR"] = old


@contextmanager
def _send_log(run_dir: Path) -> Iterator[None]:
    handler = logging.FileHandler(run_dir / "send.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()


def _actions_html(cfg: Config, rpt: Any) -> str:
    """The owner's open actions as a small inline-styled list ('' when there are none)."""
    try:
        from spm_lib import actions
    except ImportError:
        return ""
    df = actions.for_report(cfg, rpt.owner_id, rpt.cadence, rpt.as_of)
    df = df[df["status"] == "open"]
    late = ' <b style="color:#d73027;">overdue</b>'
    items = [f'<li style="margin:2px 0;">{_e(r.text)} — due {_e(str(r.due_date)[:10])}'
             f'{late if bool(r.overdue) else ""}</li>' for r in df.itertuples()]
    return f'<ul style="margin:0;padding-left:20px;">{"".join(items)}</ul>' if items else ""


def _link(cfg: Config, rpt: Any, secret: str | None) -> str | None:
    if not secret:
        return None
    from spm_lib import links

    expires = datetime.now(UTC) + timedelta(days=cfg.live.link_days)
    token = links.sign(secret, rpt.owner_id, rpt.cadence, date.fromisoformat(rpt.as_of), expires)
    return links.link_url(cfg, token)


def _recipients(cfg: Config, owners: pd.DataFrame, owner_id: str) -> tuple[list[Address], list[Address]]:
    """To and Cc of an owner's email (redirect_to and cc_leader applied); DeliveryError for a bad address."""
    row = owners.loc[owner_id]
    who = f"owner {owner_id!r}"
    if cfg.delivery.redirect_to:
        return [make_address(row.get("name"), cfg.delivery.redirect_to, who="delivery.redirect_to")], []
    to = [make_address(row.get("name"), row.get("email"), who=who)]
    cc: list[Address] = []
    manager = row.get("manager_id")
    if cfg.delivery.cc_leader and isinstance(manager, str) and manager in owners.index:
        m = owners.loc[manager]
        if m.get("active") is not False and not html.is_missing(m.get("email")):
            cc.append(make_address(m.get("name"), m.get("email"), who=f"{who}'s leader {manager!r}"))
    return to, cc


def _skip_reason(cfg: Config, owners: pd.DataFrame, entry: Mapping[str, Any] | None, owner_id: str,
                 report: Path) -> str | None:
    """Why an owner gets no email from this run (None: they get one)."""
    if owner_id in cfg.delivery.exclude:
        return "excluded (delivery.exclude)"
    active = owners.loc[owner_id, "active"] if "active" in owners.columns else None
    if active is not None and not bool(active):
        return "inactive owner (owners.active is false)"
    if entry is None:
        return "no report in this run (render it with `spm run`)"
    if entry.get("status") != "ok":
        return f"its report failed to render: {entry.get('error') or 'see run.log'}"
    if not report.is_file():
        return f"its report {report} is missing; render it again with `spm run --resume`"
    return None


def _recipient_key(cfg: Config, owners: pd.DataFrame, owner_id: str) -> str:
    """The addresses an owner's email would go to, as given (before validation): what the ledger remembers."""
    if cfg.delivery.redirect_to:
        return clean_header(cfg.delivery.redirect_to)
    row = owners.loc[owner_id]
    key = clean_header(row.get("email"))
    manager = row.get("manager_id")
    if cfg.delivery.cc_leader and isinstance(manager, str) and manager in owners.index:
        key += f", cc {clean_header(owners.loc[manager].get('email'))}"
    return key


def _ledger_decision(history: pd.DataFrame, generation: int, recipients: str, resend_unknown: bool) -> str:
    """What the ledger says of an owner: send, unknown, sent (this generation), sent-before or refused."""
    if (history["status"] == "sending").any() and not resend_unknown:
        return "unknown"
    sent = history[history["status"] == "sent"]
    if (sent["generation"] == generation).any():
        return "sent"
    if not sent.empty:
        return "sent-before"
    last = history.sort_values("updated_at").tail(1)
    if not last.empty and last["status"].iloc[0] == "failed" and bool(last["permanent"].iloc[0]) \
            and last["recipients"].iloc[0] == recipients:
        return "refused"
    return "send"


def _write_eml(path: Path, msg: EmailMessage) -> str:
    from spm_lib.export import write_atomic

    return str(write_atomic(path, msg.as_bytes().decode("utf-8", "surrogateescape")))


def send_all(cfg: Config, run_dir: Path, *, owner: str | None = None, level: str | None = None,
             dry_run: bool = False, resend_unknown: bool = False, resend_changed: bool = False,
             progress: bool = True, on_sent: Callable[[str], None] | None = None) -> Summary:
    """Email every owner of a run their report (or one owner / one level); never twice; a dry run writes .eml files."""
    import json

    from tqdm import tqdm

    from spm_lib.images import Exporter, ImageError
    from spm_lib.report import load
    from spm_lib.runfolder import has_cube, locked
    from spm_lib.runner import plan, safe_name

    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not has_cube(run_dir) or not manifest_path.is_file():
        raise RunError(f"{run_dir} holds no rendered run: run `spm run --cadence {run_dir.parent.name} "
                       f"--as-of {run_dir.name}` first")
    with locked(run_dir), _project_env(cfg.root), _send_log(run_dir):
        manifest = json.loads(manifest_path.read_text())
        cube_id = json.loads((run_dir / "cube.json").read_text()).get("run_id")
        if manifest.get("run_id") != cube_id:
            raise RunError(f"{run_dir}: the cube was recomputed after the reports were rendered; render them "
                           f"again with `spm run --cadence {run_dir.parent.name} --as-of {run_dir.name}` first")
        cadence = str(manifest.get("cadence") or run_dir.parent.name)
        run_key = f"{cadence}/{manifest.get('as_of') or run_dir.name}"
        generation, run_id = int(manifest.get("generation", 1)), str(manifest["run_id"])
        summary = Summary(run_key, generation, dry_run)
        jobs = plan(cfg, run_dir, cadence, level=level, owner=owner)
        owners = pd.read_parquet(run_dir / "owners.parquet").astype({"owner_id": "str"}).set_index("owner_id")
        if "active" in owners:  # True / False / None (unknown counts as active)
            owners["active"] = owners["active"].astype(object).where(owners["active"].notna(), None)
        history = ledger.rows(cfg, run_key)
        secret = os.environ.get("SPM_LINK_SECRET") or None
        if secret is None:
            summary.notes.append("SPM_LINK_SECRET is not set: the emails carry no link to the live report")
        out_dir = run_dir / "email"
        sender = None if dry_run else SmtpSender(cfg)
        pace = _Pace(cfg.delivery.rate_per_minute)
        exporter = Exporter()
        bar = tqdm(total=len(jobs), desc=f"{cadence} emails", unit="email", disable=not progress)
        try:
            for job in jobs:
                oid = job.owner_id
                bar.update(1)
                why = _skip_reason(cfg, owners, manifest.get("owners", {}).get(oid), oid, Path(job.html))
                if why:
                    summary.skipped[oid] = why
                    continue
                recipients = _recipient_key(cfg, owners, oid)
                mine = history[history["owner_id"] == oid]
                decision = _ledger_decision(mine, generation, recipients, resend_unknown)
                if decision == "unknown":
                    summary.unknown.append(oid)
                    continue
                if decision == "refused":
                    summary.skipped[oid] = (f"refused earlier ({mine.sort_values('updated_at')['error'].iloc[-1]}); "
                                            "fix the address in the CRM or delivery config")
                    continue
                if decision == "sent" or (decision == "sent-before" and not resend_changed):
                    summary.skipped[oid] = "already sent" + (" (use --resend-changed to send a changed report)"
                                                             if decision == "sent-before" else "")
                    continue
                digest = ""
                try:
                    rpt = load(oid, cadence, run_dir=run_dir)
                    figs = email_figures(rpt)
                    actions = _actions_html(cfg, rpt)
                    report_html = Path(job.html).read_text(encoding="utf-8") \
                        if cfg.delivery.attach_report else None
                    digest = content_hash(plain_text(rpt, link_url=None, actions_html=actions,
                                                     attached=report_html is not None),
                                          report_html, [_figure_json(f) for f in figs.values()])
                    if decision == "sent-before" and oid not in ledger.changed_owners(cfg, run_key, generation,
                                                                                      {oid: digest}):
                        summary.skipped[oid] = "already sent, and its report has not changed"
                        continue
                    to, cc = _recipients(cfg, owners, oid)
                    token = message_token(rpt, digest)
                    exporter.open()
                    images, alts = {}, {}
                    for key, fig in figs.items():
                        cid = chart_cid(cfg, token, key)
                        images[cid] = exporter.png(fig, CHART_WIDTH, _figure_height(fig), scale=CHART_SCALE)
                        alts[cid] = _alt(fig, key)
                    msg = build_message(cfg, rpt, to=to, cc=cc, link_url=_link(cfg, rpt, secret), images=images,
                                        attachment_html=report_html, actions_html=actions, alts=alts,
                                        digest=digest)
                except (DeliveryError, ImageError) as e:
                    summary.failed[oid] = str(e)
                    log.error("%s not sent: %s", oid, e)
                    if not dry_run:  # an invalid address stays refused until it changes; a bad image is retried
                        ledger.plan(cfg, run_key, generation, oid, run_id=run_id, message_id="", content_hash=digest,
                                    recipients=recipients)
                        ledger.mark_failed(cfg, run_key, generation, oid, str(e),
                                           permanent=isinstance(e, DeliveryError))
                    continue
                if dry_run:
                    summary.written.append(_write_eml(out_dir / f"{safe_name(oid)}.eml", msg))
                    summary.sent.append(oid)
                    continue
                assert sender is not None
                ledger.plan(cfg, run_key, generation, oid, run_id=run_id, message_id=str(msg["Message-ID"]),
                            content_hash=digest, recipients=recipients)
                ledger.mark_sending(cfg, run_key, generation, oid)
                pace.wait()
                addresses = [a.addr_spec for a in [*to, *cc]]
                try:
                    tries, refused = sender.send(msg, addresses)
                except DeliveryError as e:
                    ledger.mark_failed(cfg, run_key, generation, oid, str(e), tries=getattr(e, "tries", 1),
                                       permanent=getattr(e, "permanent", False))
                    summary.failed[oid] = str(e)
                    log.error("%s failed: %s", oid, e)
                    if not isinstance(e, SendFailed):  # the server cannot be used at all (e.g. login refused)
                        raise
                    continue
                note = ("refused: " + ", ".join(refused)) if refused else None
                ledger.mark_sent(cfg, run_key, generation, oid, note, tries=tries)
                summary.sent.append(oid)
                log.info("%s sent to %s (%s, %d attempt(s))", oid, ", ".join(addresses), msg["Message-ID"], tries)
                if on_sent is not None:
                    on_sent(oid)
            _operator_summary(cfg, summary, sender, out_dir)
        finally:
            bar.close()
            exporter.close()
            if sender is not None:
                sender.close()
        log.info("%s", summary.text())
        return summary


def _operator_summary(cfg: Config, summary: Summary, sender: SmtpSender | None, out_dir: Path) -> None:
    """Mail the run's summary to delivery.operator_email when anything was sent, failed or is unknown."""
    to = cfg.delivery.operator_email
    if not to or not (summary.sent or summary.failed or summary.unknown):
        return
    try:
        addr = make_address("SPM operator", to, who="delivery.operator_email")
    except DeliveryError as e:
        summary.notes.append(str(e))
        return
    msg = EmailMessage(policy=policy.SMTP)
    bad = f", {len(summary.failed)} FAILED" if summary.failed else ""
    msg["Subject"] = clean_header(f"SPM send {summary.run_key}: {len(summary.sent)} sent{bad}"
                                  f"{f', {len(summary.unknown)} unknown' if summary.unknown else ''}")
    msg["From"] = clean_header(cfg.delivery.from_address)
    msg["To"] = addr
    msg["Date"] = formatdate(localtime=False)
    msg.set_content(summary.text() + "\n")
    if sender is None:
        _write_eml(out_dir / "_operator-summary.eml", msg)
        return
    try:
        sender.send(msg, [addr.addr_spec])
    except DeliveryError as e:
        summary.notes.append(f"the summary could not be mailed to {to}: {e}")
