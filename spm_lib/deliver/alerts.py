"""`spm alerts`: evaluate config/alerts.yml on the cube of a day and mail each new alert once, each cleared one once.

The cube of (cadence, as_of) is computed if the run folder lacks it (as `spm kpis` does). What is true
(`spm_lib.engine.alerts.evaluate`) is compared with the alert ledger (`spm_lib.state.alerts`): an alert not open
yet is mailed to its owner (Cc their leader when the rule says `copy_leader`), one that was open and mailed but is no
longer true is mailed as cleared; each email's ledger row goes pending -> sending -> sent | failed, so a second
evaluation of the same day mails nothing and a failed email is tried again the next time. A rule whose data is
absent is skipped with its reason, and its open alerts are left open (nothing says they cleared). A dry run writes
the emails as .eml files under runs/<cadence>/<as_of>/alerts/ and leaves the ledger untouched. Addresses follow
config/delivery.yml (exclude, redirect_to); the live link is signed when SPM_LINK_SECRET is set.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import escape

from spm_lib.config import AlertRule, Config
from spm_lib.deliver import compose
from spm_lib.deliver.smtp import DeliveryError, SmtpSender, message_bytes
from spm_lib.domain import links
from spm_lib.engine.alerts import Evaluation, evaluate
from spm_lib.engine.cube import read_cube
from spm_lib.report.markup import fmt_value, trust_value_text
from spm_lib.state import alerts as ledger
from spm_lib.store.runfolder import ensure_cube, safe_name
from spm_lib.util.atomic import write_atomic

log = logging.getLogger("spm.alerts")
_FONT = "font-family:Arial,Helvetica,sans-serif;"


class AlertsUnsent(DeliveryError):
    """Some alert emails failed or are of unknown state; the operator has the summary."""

    def __init__(self, summary: AlertSummary) -> None:
        super().__init__(summary.text())
        self.summary = summary


@dataclass(frozen=True)
class Event:
    """One email to send: an alert that opened or cleared, what it says, and its ledger key."""

    kind: str  # "opened" or "cleared"
    key: ledger.Key
    rule: AlertRule
    text: str  # the alert in one sentence (for a cleared alert: what it said when it opened)
    opened_as_of: date


@dataclass
class AlertSummary:
    """What `run_alerts` did: alerts mailed as opened or cleared, still open, skipped, failed or of unknown state."""

    cadence: str
    as_of: date
    dry_run: bool
    opened: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    still_open: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # rule id -> why it was not evaluated
    written: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no email failed and none is of unknown state."""
        return not self.failed and not self.unknown

    def text(self) -> str:
        """The summary in words."""
        verb = "written as .eml (dry run)" if self.dry_run else "mailed"
        lines = [f"alerts {self.cadence} as of {self.as_of}: {len(self.opened)} new and {len(self.cleared)} cleared "
                 f"{verb}, {self.still_open} still open (mailed before), {len(self.skipped)} skipped, "
                 f"{len(self.failed)} failed, {len(self.unknown)} unknown"]
        lines += [f"  new     {a}" for a in self.opened] + [f"  cleared {a}" for a in self.cleared]
        lines += [f"  failed  {a}: {why}" for a, why in sorted(self.failed.items())]
        lines += [f"  unknown {a}: left 'sending' by an interrupted run; check the mailbox" for a in self.unknown]
        lines += [f"  skipped {a}: {why}" for a, why in sorted(self.skipped.items())]
        lines += [f"  rule {r} skipped: {why}" for r, why in sorted(self.notes.items())]
        return "\n".join(lines)


def _key(cadence: str, row: Any) -> ledger.Key:
    """The ledger key of an alert row (evaluated or recorded)."""
    return cadence, str(row.rule_id), str(row.owner_id), str(row.subject)


def _label(key: ledger.Key) -> str:
    _, rule_id, owner_id, subject = key
    return f"{rule_id} {owner_id}" + (f" {subject}" if subject else "")


# ---------------------------------------------------------------- what an alert says
def _fmt(value: Any, unit: str, currency: str) -> str:
    if unit == "rate":  # a trust check's share of open value
        return fmt_value(float(value) * 100, "pct")
    if unit == "material":  # a trust check's share of the forward pipeline
        return trust_value_text(float(value), unit)
    return compose.format_value(value, unit, currency)


def describe(rule: AlertRule, row: Any, currency: str) -> str:
    """One alert (a row of engine.alerts.ALERT_COLUMNS) in one sentence."""
    if rule.type == "kpi":
        side = "below" if rule.below is not None else "above"
        left = f" with {int(row.days_left)} days left" if rule.days_left_below is not None else ""
        return (f"{row.subject_name} of {row.period} is {_fmt(row.value, row.unit, currency)}, {side} "
                f"{_fmt(row.threshold, row.unit, currency)}{left}")
    if rule.type == "trust":
        return (f"Trust check '{row.subject_name}' flags {int(row.count) if row.count == row.count else 'some'} "
                f"open deals worth {_fmt(row.amount, 'currency', currency)} in your scope "
                f"({_fmt(row.value, row.unit, currency)}; the {rule.status} threshold is "
                f"{_fmt(row.threshold, row.unit, currency)})")
    if rule.type == "forecast_gap":
        return (f"The forecast of {row.period} is {_fmt(row.value, 'currency', currency)} short of its target of "
                f"{_fmt(row.threshold, 'currency', currency)} ({row.value / row.threshold * 100:.0f} % of target)")
    pushed = f", pushed {int(row.value)} times" if row.value == row.value else ""
    return (f"Deal {row.subject_name} ({row.subject}, {_fmt(row.amount, 'currency', currency)}){pushed}; "
            f"it now closes on {row.close_date}")


def plan_events(cfg: Config, cadence: str, ev: Evaluation, known: pd.DataFrame, summary: AlertSummary,
                currency: str) -> tuple[list[Event], list[ledger.Key]]:
    """The emails to send now, and the open alerts to clear silently (their opening was never mailed)."""
    rules = cfg.alerts.rules
    current = {_key(cadence, r): r for r in ev.alerts.itertuples(index=False)}
    before = {_key(cadence, r): r for r in known.itertuples(index=False)}
    events, silent = [], []
    for key, row in current.items():
        k = before.get(key)
        if k is not None and k.state == "open" and k.mail == "sending":
            summary.unknown.append(_label(key))
        elif k is not None and k.state == "open" and k.mail in ("sent", "skipped"):
            summary.still_open += 1
        else:
            rule = rules[key[1]]
            events.append(Event("opened", key, rule, describe(rule, row, currency), ev.as_of or date.today()))
    evaluated = set(rules) - set(ev.notes)
    for key, k in before.items():
        if key in current or key[1] not in evaluated:
            continue
        if k.state == "open" and k.mail in ("pending", "failed", "skipped"):
            silent.append(key)
        elif (k.state == "open" and k.mail in ("sent", "sending")) or (k.state == "cleared" and k.mail in (
                "pending", "failed")):
            opened = pd.Timestamp(str(k.opened_as_of)).date()
            events.append(Event("cleared", key, rules[key[1]], str(k.message), opened))
        elif k.state == "cleared" and k.mail == "sending":
            summary.unknown.append(_label(key))
    return events, silent


# ---------------------------------------------------------------- the email
def _subject(event: Event, name: str) -> str:
    what = event.rule.description or event.key[1]
    head = "SPM alert" if event.kind == "opened" else "SPM alert cleared"
    about = f" · {event.key[3]}" if event.rule.type == "deal" else ""
    return compose.clean_header(f"{head} · {name}: {what}{about}")


def _body(event: Event, as_of: date, link: str | None) -> tuple[str, str]:
    """(plain text, HTML) of an alert's email."""
    if event.kind == "opened":
        lead = f"New alert as of {as_of}:"
        said = event.text
        after = "You receive this once; you will be told when it clears."
    else:
        lead = f"Cleared as of {as_of} (opened as of {event.opened_as_of}): this is no longer true:"
        said = event.text
        after = "Nothing to do."
    rule = f"Rule {event.key[1]}" + (f": {event.rule.description}" if event.rule.description else "")
    text = "\n".join([lead, said, "", rule, after] + ([f"Your live report: {link}"] if link else [])) + "\n"
    colour = "#d73027" if event.kind == "opened" else "#1a9850"
    button = (f'<p style="{_FONT}margin:16px 0;"><a href="{escape(link)}" style="display:inline-block;padding:10px '
              f'18px;background:#4c78a8;color:#ffffff;text-decoration:none;border-radius:4px;">Open your live report'
              f"</a></p>") if link else ""
    html = (f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body style="margin:0;padding:16px;">'
            f'<div style="{_FONT}max-width:640px;padding:12px 14px;border-left:4px solid {colour};'
            f'background:#fafafa;"><p style="margin:0 0 6px 0;color:#6b6b6b;font-size:13px;">{escape(lead)}</p>'
            f'<p style="margin:0;font-size:16px;"><b>{escape(said)}</b></p></div>'
            f'<p style="{_FONT}font-size:13px;color:#6b6b6b;">{escape(rule)}. {escape(after)}</p>{button}'
            "</body></html>")
    return text, html


def _link(cfg: Config, owner_id: str, cadence: str, secret: str | None) -> str | None:
    """The signed link to the owner's latest live report of the cadence (None without a secret)."""
    if not secret:
        return None
    token = links.sign(secret, owner_id, cadence, None, datetime.now(UTC) + timedelta(days=cfg.live.link_days))
    return links.link_url(cfg, token)


def build_message(cfg: Config, event: Event, as_of: date, owners: pd.DataFrame, link: str | None) -> EmailMessage:
    """The email of one alert event, to its owner (Cc the leader when the rule says so); DeliveryError if no address."""
    _, rule_id, owner_id, subject = event.key
    leader_cfg = cfg.model_copy(update={"delivery": cfg.delivery.model_copy(
        update={"cc_leader": event.rule.copy_leader})})
    to, cc = compose._recipients(leader_cfg, owners, owner_id)  # the report emails' rules (redirect_to, leader)
    name = owners.loc[owner_id].get("name") or owner_id
    text, html = _body(event, as_of, link)
    msg = EmailMessage(policy=policy.SMTP)
    msg["Subject"] = _subject(event, str(name))
    msg["From"] = compose.clean_header(cfg.delivery.from_address)
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Date"] = formatdate(localtime=False)
    token = hashlib.sha256("\0".join([*event.key, event.kind, as_of.isoformat()]).encode()).hexdigest()[:32]
    msg["Message-ID"] = f"<alert.{token}@{compose._domain(cfg)}>"
    msg["X-SPM-Alert"] = compose.clean_header(f"{event.kind} {rule_id} {owner_id} {subject}".strip())
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    msg.set_boundary(f"=_spm_alert_{token}")  # the same alert gives the same bytes (apart from the Date)
    return msg


# ---------------------------------------------------------------- evaluating and mailing
def _skip_reason(cfg: Config, owners: pd.DataFrame, owner_id: str) -> str | None:
    if owner_id in cfg.delivery.exclude:
        return "excluded (delivery.exclude)"
    if owner_id not in owners.index:
        return "not in the run's owners"
    if owners.loc[owner_id].get("active") is False:
        return "inactive owner (owners.active is false)"
    return None


def run_alerts(cfg: Config, cadence: str, as_of: date, *, dry_run: bool = False) -> AlertSummary:
    """Evaluate the alert rules on the cube of (cadence, as_of) and mail what opened and what cleared, once each."""
    folder = ensure_cube(cfg, cadence, as_of)
    cube = read_cube(folder)
    ev = evaluate(cfg.alerts, cube)
    summary = AlertSummary(cadence, as_of, dry_run, notes=dict(ev.notes))
    currency = str(cube.meta.get("currency") or cfg.company.currency)
    events, silent = plan_events(cfg, cadence, ev, ledger.rows(cfg, cadence), summary, currency)
    owners = compose._run_owners(folder)
    secret = links.check_secret(os.environ[links.SECRET_ENV]) if os.environ.get(links.SECRET_ENV) else None
    sender = None if dry_run else SmtpSender(cfg)
    try:
        for event in events:
            _deliver(cfg, event, as_of, owners, secret, sender, folder / "alerts", summary)
        if not dry_run:
            for key in silent:
                ledger.record(cfg, key, state_="cleared", as_of=as_of, message="", mail="skipped")
            ledger.record_run(cfg, cadence, as_of, len(summary.opened), len(summary.cleared))
    finally:
        if sender is not None:
            sender.close()
    if summary.failed and not dry_run:
        note = compose.notify_operator(cfg, f"SPM alerts {cadence} as of {as_of}: {len(summary.failed)} FAILED",
                                       summary.text())
        if note:
            summary.notes["(operator)"] = note
    log.info("%s", summary.text())
    return summary


def _deliver(cfg: Config, event: Event, as_of: date, owners: pd.DataFrame, secret: str | None,
             sender: SmtpSender | None, out_dir: Path, summary: AlertSummary) -> None:
    """Send (or write, in a dry run) one alert's email, its ledger row going pending -> sending -> sent | failed."""
    key, label = event.key, _label(event.key)
    state_ = "open" if event.kind == "opened" else "cleared"
    why = _skip_reason(cfg, owners, key[2])
    if why:
        summary.skipped[label] = why
        if sender is not None:
            ledger.record(cfg, key, state_=state_, as_of=as_of, message=event.text, mail="skipped")
        return
    try:
        msg = build_message(cfg, event, as_of, owners, _link(cfg, key[2], key[0], secret))
    except DeliveryError as e:
        summary.failed[label] = str(e)
        if sender is not None:
            ledger.record(cfg, key, state_=state_, as_of=as_of, message=event.text, mail="pending")
            ledger.mark(cfg, key, "failed", str(e))
        return
    raw = message_bytes(msg)
    done = summary.opened if event.kind == "opened" else summary.cleared
    if sender is None:
        name = safe_name(f"{key[2]}.{key[1]}.{key[3] or 'scope'}.{event.kind}")
        summary.written.append(str(write_atomic(out_dir / f"{name}.eml", raw.decode("utf-8", "surrogateescape"))))
        done.append(label)
        return
    addresses = [a.addr_spec for h in ("To", "Cc") for a in (msg[h].addresses if msg[h] else ())]
    ledger.record(cfg, key, state_=state_, as_of=as_of, message=event.text, mail="pending",
                  message_id=str(msg["Message-ID"]), recipients=", ".join(addresses))
    ledger.mark(cfg, key, "sending")
    try:
        _, refused = sender.send(raw, addresses)
    except DeliveryError as e:
        ledger.mark(cfg, key, "failed", str(e))
        summary.failed[label] = str(e)
        return
    ledger.mark(cfg, key, "sent", ("refused: " + ", ".join(refused)) if refused else None)  # the others have it
    done.append(label)
