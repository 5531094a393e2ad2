"""`spm send`: email each owner their report of a run: the report's first screen in the body (spm_lib.deliver.body:
at a glance, trust and the first deals to fix, the above-the-line KPIs, the open actions), the key charts inline, the
full report attached, a signed link to the live report.

The body reads right in any mail client and on a phone: no JavaScript, no remote content, inline styles only, the
charts as PNG parts referenced by cid (with alt text), drawn at the width a phone shows them by one browser for the
whole send from the plotly JSON `spm run` saved beside each report. Each owner's email is built, planned in the
send ledger, handed to the SMTP server and marked sent, one after another under the run folder's lock (the next
email is built while the server takes the current one), so a send that stops half-way resumes where it stopped and
never mails anyone twice. Names and addresses come from the CRM and are untrusted: control characters are stripped
from every header value and an invalid address fails that owner with a message saying what to fix. Secrets (the
SMTP password, the link-signing key) come from the environment and never reach a log, an .eml or the ledger. SMTP
itself is in `spm_lib.deliver.smtp`.
"""

from __future__ import annotations

import base64
import hashlib
import html as _html
import json
import logging
import os
import re
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email import policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import formatdate
from pathlib import Path
from typing import Any, TypeVar, cast

import pandas as pd
from tqdm import tqdm

from spm_lib.batch.runner import plan
from spm_lib.config import Config
from spm_lib.deliver.body import CHART_WIDTH, Facts, html_body, plain_text, read_facts
from spm_lib.deliver.body import format_value as format_value  # alerts format values as the email does
from spm_lib.deliver.images import Chart, Exporter, ImageError, with_min_font
from spm_lib.deliver.smtp import DeliveryError, Pace, SendFailed, SmtpSender, message_bytes
from spm_lib.domain import links
from spm_lib.engine.cube import read_cube_meta
from spm_lib.errors import RunError
from spm_lib.report import markup
from spm_lib.report.core import Report, load
from spm_lib.report.figures import EMAIL_CHARTS, figures_json, figures_path
from spm_lib.report.markup import SESSION_WORDS
from spm_lib.state import ledger
from spm_lib.store.runfolder import has_cube, has_manifest, locked, read_manifest, safe_name
from spm_lib.util.atomic import write_atomic

log = logging.getLogger("spm.send")
T = TypeVar("T")
R = TypeVar("R")

CHART_SCALE = 3  # sharp on a phone's 3× screen (the chart is drawn at CHART_WIDTH, the width a phone shows it)
CHART_MIN_FONT = 12  # layout px: ≥ 11 px on screen down to a 360 px phone (12 × 328 / 358)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_ADDR = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")


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
def headline(rpt: Report) -> str:
    """The subject's headline: the session's status word, bookings against target, and 'fix the data first' when
    a trust check fails."""
    att = rpt.value("quota_attainment")
    words = f"bookings at {att:.0f} % of target" if att == att else "no bookings target for the period"
    words = f"{SESSION_WORDS.get(rpt.session_status(), '')}: {words}"
    return f"{words} · fix the data first" if rpt.trust_status() == "fail" else words


def subject(rpt: Report) -> str:
    """The email's subject line: owner, cadence, period and headline."""
    return clean_header(f"{rpt.name} · {rpt.cadence} report {rpt.closed}: {headline(rpt)}")


def content_hash(text: str, attachment: str | bytes | None, parts: Sequence[bytes]) -> str:
    """A digest of what an email says (its text without the link, the attached report, the charts)."""
    h = hashlib.sha256()
    for chunk in (text.encode("utf-8"), _as_bytes(attachment), *parts):
        h.update(len(chunk).to_bytes(8, "big"))
        h.update(chunk)
    return h.hexdigest()


def _as_bytes(data: str | bytes | None) -> bytes:
    return b"" if data is None else data.encode("utf-8") if isinstance(data, str) else bytes(data)


def email_digest(rpt: Report, facts: Facts, report: bytes | None, figs: Mapping[str, dict[str, Any]]) -> str:
    """The content hash of an owner's email: what it says, the report it attaches, the charts it shows."""
    text = plain_text(rpt, facts, link_url=None, attached=report is not None)
    return content_hash(text, report, [_canonical(f) for f in figs.values()])


def message_token(rpt: Report, digest: str) -> str:
    """A stable token of (run folder, owner, content): the Message-ID's and the content ids' local part."""
    return hashlib.sha256(f"{rpt.cadence}/{rpt.as_of}\0{rpt.owner_id}\0{digest}".encode()).hexdigest()[:32]


def chart_cid(cfg: Config, token: str, key: str) -> str:
    """The content id of one chart of one email."""
    return f"{re.sub(r'[^a-z0-9-]', '-', key.lower())}.{token[:16]}@{_domain(cfg)}"


def _encoded_part(data: bytes, content_type: str, *, disposition: str, filename: str,
                  cid: str | None = None) -> EmailMessage:
    """A MIME part holding `data` base64-encoded in one C call (the email package encodes 57 bytes at a time);
    a plain MIMEPart (no MIME-Version header), typed as the EmailMessage that typeshed's `attach` asks for."""
    part = MIMEPart(policy=policy.SMTP)
    part["Content-Type"] = content_type
    part.add_header("Content-Disposition", disposition, filename=filename)
    if cid:
        part["Content-ID"] = f"<{cid}>"
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(base64.encodebytes(data).decode("ascii").replace("\n", policy.SMTP.linesep))
    return cast(EmailMessage, part)


def build_message(cfg: Config, rpt: Report, *, to: Address | str | Sequence[Address | str],
                  cc: Sequence[Address | str] = (), link_url: str | None, images: Mapping[str, bytes],
                  attachment_html: str | bytes | None, alts: Mapping[str, str] | None = None,
                  digest: str | None = None, facts: Facts | None = None) -> EmailMessage:
    """One owner's email: subject, HTML body with inline charts (cid → PNG), plain-text alternative, report attached."""
    to_list = _as_addresses(to, f"owner {rpt.owner_id!r}")
    if not to_list:
        raise DeliveryError(f"owner {rpt.owner_id!r}: no recipient")
    cc_list = _as_addresses(list(cc), f"owner {rpt.owner_id!r} (cc)")
    attach = attachment_html if cfg.delivery.attach_report else None
    f = facts or read_facts(rpt, cfg)
    text = plain_text(rpt, f, link_url=link_url, attached=attach is not None)
    if digest is None:
        digest = content_hash(plain_text(rpt, f, link_url=None, attached=attach is not None), attach,
                              list(images.values()))
    token = message_token(rpt, digest)
    msg = EmailMessage(policy=policy.SMTP)
    msg["Subject"] = subject(rpt)
    msg["From"] = clean_header(cfg.delivery.from_address)
    msg["To"] = to_list
    if cc_list:
        msg["Cc"] = cc_list
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{token}@{_domain(cfg)}>"
    msg["X-SPM-Run"] = clean_header(f"{rpt.cadence}/{rpt.as_of}")
    msg["X-SPM-Content-Hash"] = digest
    msg.set_content(text)
    msg.add_alternative(html_body(rpt, f, title=subject(rpt), link_url=link_url, images=images, alts=alts,
                                  attached=attach is not None), subtype="html")
    body = msg.get_payload()[1]  # type: ignore[index] # multipart: a list of parts (typeshed: also str)
    assert isinstance(body, EmailMessage)
    if images:
        body.make_related()
        for cid, png in images.items():
            body.attach(_encoded_part(png, "image/png", disposition="inline", cid=cid,
                                      filename=f"{cid.split('.', 1)[0]}.png"))
    if attach is not None:
        msg.make_mixed()
        msg.attach(_encoded_part(_as_bytes(attach), 'text/html; charset="utf-8"', disposition="attachment",
                                 filename=f"{safe_name(rpt.owner_id)}-{rpt.cadence}-{rpt.as_of}.html"))
    for i, part in enumerate(p for p in msg.walk() if p.is_multipart()):
        part.set_boundary(f"=_spm_{token}_{i}")  # unique already: the generator need not search the text for it
    return msg


# ---------------------------------------------------------------- the charts of an email
def read_figures(rpt: Report, report_html: str | Path) -> dict[str, dict[str, Any]]:
    """The owner's email charts saved by `spm run` (drawn from the report when the run predates that file)."""
    path = figures_path(report_html)
    text = path.read_text(encoding="utf-8") if path.is_file() else figures_json(rpt)
    try:
        figs = json.loads(text)
    except ValueError as e:
        raise DeliveryError(f"{path}: the email charts cannot be read ({e}); render the report again with "
                            f"`spm run --cadence {rpt.cadence} --as-of {rpt.as_of} --owner {rpt.owner_id}`") from None
    return {k: figs[k] for k in EMAIL_CHARTS if k in figs}


def _canonical(fig: dict[str, Any]) -> bytes:
    return json.dumps(fig, sort_keys=True, separators=(",", ":")).encode("utf-8")


def chart_alt(fig: dict[str, Any], key: str) -> str:
    """The alt text of an email chart: its title, or its key in words."""
    title = fig.get("layout", {}).get("title")
    title = title.get("text") if isinstance(title, dict) else title
    return clean_header(_html.unescape(re.sub(r"<[^>]+>", " ", str(title)))) if title else key.replace("-", " ")


def figure_height(fig: dict[str, Any]) -> int:
    """The layout height of a plotly figure (300 px when it sets none)."""
    h = fig.get("layout", {}).get("height")
    return int(h) if h else 300


def email_chart(fig: dict[str, Any]) -> Chart:
    """An email chart as drawn: at the width a phone shows it, its text at least CHART_MIN_FONT px."""
    return Chart(with_min_font(fig, CHART_MIN_FONT), CHART_WIDTH, figure_height(fig), CHART_SCALE)


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
def project_env(root: Path) -> Iterator[None]:
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


def live_link(cfg: Config, rpt: Report, secret: str | None) -> str | None:
    """The signed link to the owner's live report that an email carries (None without a secret)."""
    if not secret:
        return None
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
        if m.get("active") is not False and not markup.is_missing(m.get("email")):
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


class Unsent(DeliveryError):
    """Some owners' emails of a send failed or are of unknown state; the operator has the summary."""

    def __init__(self, summary: Summary) -> None:
        super().__init__(summary.text())
        self.summary = summary


@dataclass
class _Todo:
    """An owner to email: their report job, what the ledger says ('send' or 'sent-before') and the recipients."""

    job: Any
    decision: str
    recipients: str


@dataclass
class _Built:
    """An owner's email, ready to hand over."""

    raw: bytes
    message_id: str
    digest: str
    addresses: list[str]


@dataclass
class _Run:
    """What preparing each owner's email needs from its run."""

    cfg: Config
    run_dir: Path
    cadence: str
    owners: pd.DataFrame
    secret: str | None
    exporter: Any
    before: dict[str, tuple[int, str]]  # owner -> (generation, content hash) of the last email sent


def _prepare(run: _Run, todo: _Todo) -> _Built | str:
    """Build one owner's email (charts drawn from the figures `spm run` saved); a str says why it is not needed."""
    cfg, oid = run.cfg, todo.job.owner_id
    rpt = load(oid, run.cadence, run_dir=run.run_dir)
    facts = read_facts(rpt, cfg)
    figs = read_figures(rpt, todo.job.html)
    report = Path(todo.job.html).read_bytes() if cfg.delivery.attach_report else None
    digest = email_digest(rpt, facts, report, figs)
    if todo.decision == "sent-before" and run.before.get(oid, (0, ""))[1] == digest:
        return "already sent, and its report has not changed"
    to, cc = _recipients(cfg, run.owners, oid)
    token = message_token(rpt, digest)
    run.exporter.open()
    drawn = run.exporter.pngs([email_chart(f) for f in figs.values()])
    images, alts = {}, {}
    for (key, fig), png in zip(figs.items(), drawn, strict=True):
        if isinstance(png, ImageError):
            raise ImageError(f"chart {key!r}: {png}")
        cid = chart_cid(cfg, token, key)
        images[cid], alts[cid] = png, chart_alt(fig, key)
    msg = build_message(cfg, rpt, to=to, cc=cc, link_url=live_link(cfg, rpt, run.secret), images=images,
                        attachment_html=report, alts=alts, digest=digest, facts=facts)
    return _Built(message_bytes(msg), str(msg["Message-ID"]), digest, [a.addr_spec for a in [*to, *cc]])


def ahead(fn: Callable[[T], R], items: Sequence[T]) -> Generator[tuple[T, R | Exception]]:
    """(item, fn(item) or the exception it raised) for each item; fn runs one item ahead in a background thread.

    The caller hands one email to the server while the next is prepared. Close the iterator (`closing`) when
    stopping early: that waits for the item being prepared.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spm-send-prepare")
    try:
        pending: Future[R] | None = pool.submit(fn, items[0]) if items else None
        for i, item in enumerate(items):
            assert pending is not None
            current, pending = pending, (pool.submit(fn, items[i + 1]) if i + 1 < len(items) else None)
            try:
                result: R | Exception = current.result()
            except Exception as e:  # noqa: BLE001 handed to the caller with its item
                result = e
            yield item, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_eml(path: Path, raw: bytes) -> str:
    return str(write_atomic(path, raw.decode("utf-8", "surrogateescape")))


def send_all(cfg: Config, run_dir: Path, *, owner: str | None = None, level: str | None = None,
             dry_run: bool = False, resend_unknown: bool = False, resend_changed: bool = False,
             progress: bool = True, on_sent: Callable[[str], None] | None = None,
             pace: Pace | None = None) -> Summary:
    """Email every owner of a run their report (or one owner / one level); never twice; a dry run writes .eml files."""
    run_dir = Path(run_dir)
    if not has_cube(run_dir) or not has_manifest(run_dir):
        raise RunError(f"{run_dir} holds no rendered run: run `spm run --cadence {run_dir.parent.name} "
                       f"--as-of {run_dir.name}` first")
    with locked(run_dir), project_env(cfg.root), _send_log(run_dir):
        manifest = read_manifest(run_dir)
        cube_id = read_cube_meta(run_dir).get("run_id")
        if manifest.get("run_id") != cube_id:
            raise RunError(f"{run_dir}: the cube was recomputed after the reports were rendered; render them "
                           f"again with `spm run --cadence {run_dir.parent.name} --as-of {run_dir.name}` first")
        cadence = str(manifest.get("cadence") or run_dir.parent.name)
        run_key = f"{cadence}/{manifest.get('as_of') or run_dir.name}"
        generation, run_id = int(manifest.get("generation", 1)), str(manifest["run_id"])
        summary = Summary(run_key, generation, dry_run)
        jobs = plan(cfg, run_dir, cadence, level=level, owner=owner)
        owners = _run_owners(run_dir)
        history = ledger.rows(cfg, run_key)
        secret = links.check_secret(os.environ["SPM_LINK_SECRET"]) if os.environ.get("SPM_LINK_SECRET") else None
        if secret is None:
            summary.notes.append("SPM_LINK_SECRET is not set: the emails carry no link to the live report")
        todo = _plan_sends(cfg, jobs, owners, manifest, history, generation, summary,
                           resend_unknown=resend_unknown, resend_changed=resend_changed)
        out_dir = run_dir / "email"
        sender = None if dry_run else SmtpSender(cfg)
        delivery = _Delivery(cfg, summary, run_key, generation, run_id, out_dir, sender,
                             pace or Pace(cfg.delivery.rate_per_minute), on_sent)
        exporter = Exporter()
        run = _Run(cfg, run_dir, cadence, owners, secret, exporter, ledger.last_sent(cfg, run_key))
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"{cadence} emails", unit="email",
                   disable=not progress)
        try:
            with closing(ahead(lambda t: _prepare(run, t), todo)) as prepared:
                for item, built in prepared:
                    bar.update(1)
                    _deliver(delivery, item, built)
            _operator_summary(cfg, summary, sender, out_dir)
        finally:
            bar.close()
            exporter.close()
            if sender is not None:
                sender.close()
        log.info("%s", summary.text())
        return summary


def _run_owners(run_dir: Path) -> pd.DataFrame:
    """The run's owners indexed by owner_id; `active` True / False / None (unknown counts as active)."""
    owners = pd.read_parquet(run_dir / "owners.parquet").astype({"owner_id": "str"}).set_index("owner_id")
    if "active" in owners:
        owners["active"] = owners["active"].astype(object).where(owners["active"].notna(), None)
    return owners


@dataclass
class _Delivery:
    """Where each prepared email of a send goes: the ledger's run and generation, the summary, the server (None
    in a dry run, whose emails are written as .eml files to `out_dir`)."""

    cfg: Config
    summary: Summary
    run_key: str
    generation: int
    run_id: str
    out_dir: Path
    sender: SmtpSender | None
    pace: Pace
    on_sent: Callable[[str], None] | None


def _deliver(d: _Delivery, item: _Todo, built: _Built | str | Exception) -> None:
    """Send (or write, in a dry run) one prepared email; a skip or a failure goes to the summary (and the ledger)."""
    oid = item.job.owner_id
    if isinstance(built, str):
        d.summary.skipped[oid] = built
        return
    if isinstance(built, DeliveryError | ImageError):
        d.summary.failed[oid] = str(built)
        log.error("%s not sent: %s", oid, built)
        if not d.summary.dry_run:  # an invalid address stays refused until it changes; a bad image is retried
            ledger.plan(d.cfg, d.run_key, d.generation, oid, run_id=d.run_id, message_id="", content_hash="",
                        recipients=item.recipients)
            ledger.mark_failed(d.cfg, d.run_key, d.generation, oid, str(built),
                               permanent=not isinstance(built, ImageError))
        return
    if isinstance(built, Exception):
        raise built
    if d.summary.dry_run:
        d.summary.written.append(_write_eml(d.out_dir / f"{safe_name(oid)}.eml", built.raw))
        d.summary.sent.append(oid)
        return
    assert d.sender is not None
    if _send_one(d.cfg, d.sender, d.pace, d.summary, item, built, d.run_key, d.generation, d.run_id) \
            and d.on_sent is not None:
        d.on_sent(oid)


def _plan_sends(cfg: Config, jobs: Sequence[Any], owners: pd.DataFrame, manifest: Mapping[str, Any],
                history: pd.DataFrame, generation: int, summary: Summary, *, resend_unknown: bool,
                resend_changed: bool) -> list[_Todo]:
    """The owners to email now; the others are recorded in `summary` with the reason."""
    todo = []
    for job in jobs:
        oid = job.owner_id
        why = _skip_reason(cfg, owners, manifest.get("owners", {}).get(oid), oid, Path(job.html))
        if why:
            (summary.failed if why.startswith("its report") else summary.skipped)[oid] = why
            continue
        recipients = _recipient_key(cfg, owners, oid)
        mine = history[history["owner_id"] == oid]
        decision = _ledger_decision(mine, generation, recipients, resend_unknown)
        if decision == "unknown":
            summary.unknown.append(oid)
        elif decision == "refused":
            summary.skipped[oid] = (f"refused earlier ({mine.sort_values('updated_at')['error'].iloc[-1]}); "
                                    "fix the address in the CRM or delivery config")
        elif decision == "sent" or (decision == "sent-before" and not resend_changed):
            summary.skipped[oid] = "already sent" + (" (use --resend-changed to send a changed report)"
                                                     if decision == "sent-before" else "")
        else:
            todo.append(_Todo(job, decision, recipients))
    return todo


def _send_one(cfg: Config, sender: SmtpSender, pace: Pace, summary: Summary, item: _Todo, built: _Built,
              run_key: str, generation: int, run_id: str) -> bool:
    """Hand one owner's email to the server, its ledger row going pending -> sending -> sent | failed: True if sent."""
    oid = item.job.owner_id
    ledger.plan(cfg, run_key, generation, oid, run_id=run_id, message_id=built.message_id,
                content_hash=built.digest, recipients=item.recipients)
    ledger.mark_sending(cfg, run_key, generation, oid)
    pace.wait()
    try:
        tries, refused = sender.send(built.raw, built.addresses)
    except DeliveryError as e:
        ledger.mark_failed(cfg, run_key, generation, oid, str(e), tries=getattr(e, "tries", 1),
                           permanent=getattr(e, "permanent", False))
        summary.failed[oid] = str(e)
        log.error("%s failed: %s", oid, e)
        if not isinstance(e, SendFailed):  # the server cannot be used at all (e.g. login refused)
            raise
        return False
    ledger.mark_sent(cfg, run_key, generation, oid, ("refused: " + ", ".join(refused)) if refused else None,
                     tries=tries)
    summary.sent.append(oid)
    log.info("%s sent to %s (%s, %d attempt(s))", oid, ", ".join(built.addresses), built.message_id, tries)
    return True


def notify_operator(cfg: Config, subject_line: str, text: str, *, sender: SmtpSender | None = None,
                    out_dir: Path | None = None) -> str | None:
    """Mail `text` to delivery.operator_email (an .eml in `out_dir` instead, for a dry run); a note when it failed."""
    to = cfg.delivery.operator_email
    if not to:
        return None
    try:
        addr = make_address("SPM operator", to, who="delivery.operator_email")
    except DeliveryError as e:
        return str(e)
    msg = EmailMessage(policy=policy.SMTP)
    msg["Subject"] = clean_header(subject_line)
    msg["From"] = clean_header(cfg.delivery.from_address)
    msg["To"] = addr
    msg["Date"] = formatdate(localtime=False)
    msg.set_content(text.rstrip("\n") + "\n")
    if out_dir is not None:
        _write_eml(out_dir / "_operator-summary.eml", message_bytes(msg))
        return None
    try:
        if sender is not None:
            sender.send(msg, [addr.addr_spec])
        else:
            with SmtpSender(cfg) as own:
                own.send(msg, [addr.addr_spec])
    except DeliveryError as e:
        return f"the message to the operator could not be mailed to {to}: {e}"
    return None


def _operator_summary(cfg: Config, summary: Summary, sender: SmtpSender | None, out_dir: Path) -> None:
    """Mail the run's summary to delivery.operator_email when anything was sent, failed or is unknown."""
    if not (summary.sent or summary.failed or summary.unknown):
        return
    bad = f", {len(summary.failed)} FAILED" if summary.failed else ""
    note = notify_operator(cfg, f"SPM send {summary.run_key}: {len(summary.sent)} sent{bad}"
                           f"{f', {len(summary.unknown)} unknown' if summary.unknown else ''}", summary.text(),
                           sender=sender, out_dir=out_dir if sender is None else None)
    if note:
        summary.notes.append(note)
