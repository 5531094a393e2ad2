"""What an owner's email says: its HTML body and plain-text alternative, read from their Report.

The email is the report's first screen, sent ahead of the session: the at-a-glance block (status word, the three
findings that matter most, what the session decides), trust (one line, or the banner and the first 5 deals the
report lists to fix), the above-the-line KPIs, the open actions of the action register, the key charts and a link
to the live report. Every piece comes from a Report method (or the action store); nothing here decides what matters.

The HTML is what mail clients render: nested presentation tables, inline styles only (clients drop <style> and
<head>), no script, no remote content, charts as `cid:` images with alt text, so it reads with images blocked. It is
fluid: 100 % wide up to BODY_WIDTH on a desktop, one column that fits a PHONE_WIDTH screen without scrolling
sideways; the charts are drawn at the width a phone shows them (CHART_WIDTH) so their text stays readable there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from markupsafe import escape

from spm_lib.config import Config
from spm_lib.deliver.images import png_size
from spm_lib.domain.crm import fill_deal_url
from spm_lib.metrics import kpis as registry
from spm_lib.report import markup
from spm_lib.report.core import Report
from spm_lib.report.markup import LEVEL_TITLES, SESSION_WORDS, STATUS_COLOURS, STATUS_WORDS

PHONE_WIDTH = 390  # px: the narrowest screen the email is laid out for (a current phone)
BODY_WIDTH = 600  # px: the body's width on a desktop client
PAD = 16  # px: the body's inner padding (the page around it has none sideways: a phone keeps its width)
CHART_WIDTH = PHONE_WIDTH - 2 * PAD  # layout px a chart is drawn at: a phone shows it 1:1
CHART_SHOWN_MAX = 480  # px: the widest a chart is shown on a desktop (its text then 4/3 of its layout size)
DEALS_SHOWN = 5  # the first deals to fix of the report's own list
_FONT = "font-family:Arial,Helvetica,sans-serif;"
_MUTED = "color:#6b6b6b;"
_WRAP = "overflow-wrap:anywhere;word-break:break-word;"  # a long CRM name or id wraps instead of widening the body
_TD = f"padding:8px 0;border-bottom:1px solid #e5e5e5;vertical-align:top;{_WRAP}"
_TINT = {"green": "#e8f5e9", "amber": "#fff8e1", "red": "#fdecea", "none": "#f1f1f1"}

__all__ = ["BODY_WIDTH", "CHART_WIDTH", "DEALS_SHOWN", "PHONE_WIDTH", "Facts", "format_value", "html_body",
           "open_actions", "plain_text", "read_facts"]


def format_value(value: object, unit: object, currency: str) -> str:
    """`value` as an email shows it, in `unit` (an unknown unit reads as a count) and `currency`."""
    return markup.fmt_value(value, unit if isinstance(unit, str) and unit in markup.UNITS else "count", currency)


def _attainment(value: Any) -> str:
    return markup.fmt_value(float(value) * 100 if not markup.is_missing(value) else value, "pct")


def _e(text: object) -> str:
    return str(escape("" if text is None else str(text)))


def _day(value: object) -> str:
    return "—" if markup.is_missing(value) else str(pd.Timestamp(str(value)).date())


# ---------------------------------------------------------------- the facts, read once from the report
@dataclass(frozen=True)
class Facts:
    """What an owner's email says, read once from their report and the action register."""

    session: str  # green / amber / red / none (Report.session_status)
    findings: list[str]  # Report.top_findings
    decides: str  # Report.session_decides
    trust: str  # pass / warn / fail
    failing: list[str]  # labels of the failing checks
    deals: pd.DataFrame  # the first DEALS_SHOWN of Report.deals_to_fix, with the owner's name
    deals_total: int  # how many deals the report lists to fix
    kpis: pd.DataFrame  # Report.kpi_rows of the above-the-line KPIs
    actions: pd.DataFrame  # the open actions (text, kpi, due_date, overdue), empty without a register
    currency: str
    deal_url: str | None = None  # config/crm.yml: deal ids link to the CRM

    @property
    def word(self) -> str:
        """The session's status word (On track / At risk / Off track / No target)."""
        return SESSION_WORDS.get(self.session, self.session)

    @property
    def provisional(self) -> bool:
        """True when a trust check fails: the numbers are provisional until the data is fixed."""
        return self.trust == "fail"


def open_actions(cfg: Config, rpt: Report) -> pd.DataFrame:
    """The owner's open actions of this cadence from the action register (empty without SQLAlchemy)."""
    try:
        from spm_lib.state import actions  # optional: needs SQLAlchemy, which a send without actions can lack
    except ImportError:
        return _no_actions()
    df = actions.for_report(cfg, rpt.owner_id, rpt.cadence, rpt.as_of)
    return df[df["status"] == "open"].reset_index(drop=True)


def _failing_checks(rpt: Report) -> list[str]:
    t = rpt.cube.trust
    return t.loc[(t["owner_id"] == rpt.owner_id) & (t["status"] == "fail"), "label"].astype(str).tolist()


def read_facts(rpt: Report, cfg: Config | None = None) -> Facts:
    """The facts of an owner's email, from their report (and, given the config, the action register)."""
    deals = rpt.deals_to_fix()
    shown = deals.head(DEALS_SHOWN)
    names = rpt.cube.owners.set_index("owner_id")["name"]
    shown = shown.assign(owner=shown["owner_id"].map(names).fillna(shown["owner_id"])) if len(shown) else shown
    status = rpt.trust_status()
    return Facts(session=rpt.session_status(), findings=rpt.top_findings(), decides=rpt.session_decides(),
                 trust=status, failing=_failing_checks(rpt) if status == "fail" else [], deals=shown,
                 deals_total=len(deals), kpis=rpt.kpi_rows(rpt.above_the_line_ids()),
                 actions=open_actions(cfg, rpt) if cfg is not None else _no_actions(), currency=rpt.currency,
                 deal_url=rpt.deal_url)


def _no_actions() -> pd.DataFrame:
    return pd.DataFrame(columns=["text", "kpi", "due_date", "overdue"])


# ---------------------------------------------------------------- the body's pieces, as HTML and as text
def _kpi_label(kpi_id: object) -> str:
    k = registry.REGISTRY.get(str(kpi_id))
    return k.label if k is not None else str(kpi_id)


def _h2(text: str) -> str:
    return f'<h2 style="{_FONT}font-size:17px;line-height:1.3;margin:22px 0 6px 0;color:#2b2b2b;">{_e(text)}</h2>'


def _pill(status: str, text: str) -> str:
    colour = STATUS_COLOURS.get(status, STATUS_COLOURS["none"])
    return (f'<span style="display:inline-block;padding:2px 8px;border-radius:10px;background:{colour};'
            f'color:#ffffff;font-size:12px;line-height:1.4;white-space:nowrap;">{_e(text)}</span>')


def _rows(cells: list[tuple[str, str]]) -> str:
    """A full-width two-column table: a wrapping left cell and a right-aligned value that never wraps."""
    body = "".join(f'<tr><td style="{_TD}padding-right:10px;">{left}</td>'
                   f'<td align="right" style="{_TD}text-align:right;white-space:nowrap;">{right}</td></tr>'
                   for left, right in cells)
    return (f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="{_FONT}font-size:14px;'
            f'line-height:1.4;border-collapse:collapse;width:100%;color:#2b2b2b;">{body}</table>')


def glance_html(f: Facts) -> str:
    """At a glance: the status word, the three findings that matter most and what the session decides."""
    colour = STATUS_COLOURS.get(f.session, STATUS_COLOURS["none"])
    why = ('<span style="font-size:14px;font-weight:normal;"> — the numbers are provisional until the data is '
           "fixed</span>" if f.provisional else "")
    found = "".join(f'<li style="margin:0 0 6px 0;">{_e(s)}</li>' for s in f.findings) \
        or '<li style="margin:0 0 6px 0;">No finding stands out.</li>'
    return (f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="width:100%;'
            f'margin:14px 0 0 0;"><tr><td style="{_FONT}padding:12px 14px;background:{_TINT.get(f.session, "#f1f1f1")};'
            f'border-left:6px solid {colour};color:#2b2b2b;{_WRAP}">'
            f'<p style="margin:0 0 8px 0;font-size:22px;line-height:1.2;font-weight:bold;color:{colour};">'
            f"{_e(f.word)}{why}</p>"
            f'<ul style="margin:0 0 8px 0;padding-left:20px;font-size:15px;line-height:1.4;">{found}</ul>'
            f'<p style="margin:0;font-size:14px;line-height:1.4;"><b>This session decides:</b> {_e(f.decides)}.</p>'
            "</td></tr></table>")


def glance_text(f: Facts) -> str:
    """At a glance, as plain text."""
    lines = [f"{f.word.upper()}{' (provisional until the data is fixed)' if f.provisional else ''}"]
    lines += [f"- {s}" for s in f.findings] or ["- No finding stands out."]
    lines.append(f"This session decides: {f.decides}.")
    return "\n".join(lines)


def _deal_id(f: Facts, opportunity_id: object) -> str:
    """A deal's id as the email shows it: a link to its CRM page when crm.deal_url is set, else escaped text."""
    return str(markup.deal_link(opportunity_id, f.deal_url))


def _deals_heading(f: Facts) -> str:
    n = len(f.deals)
    return f"The {n} largest deal{'s' if n != 1 else ''} to fix" + (
        f" (of {f.deals_total}; the others in the full report)" if f.deals_total > n else "")


def trust_html(f: Facts) -> str:
    """Trust: one line when every check passes; else the banner and the first deals to fix of the report."""
    if f.trust == "pass":
        return (f'<p style="{_FONT}font-size:14px;line-height:1.4;margin:14px 0 0 0;padding:8px 12px;'
                f'background:{_TINT["green"]};border-left:4px solid {STATUS_COLOURS["green"]};">'
                "The numbers can be trusted: every trust check passes.</p>")
    if f.trust == "fail":
        colour, tint, title = STATUS_COLOURS["red"], _TINT["red"], "Fix the data first"
        text = (f"These checks fail: {_e(', '.join(f.failing))}. Correct these deals in the CRM before deciding "
                "anything else.")
    else:
        colour, tint, title = STATUS_COLOURS["amber"], _TINT["amber"], "Check the data"
        text = "Some trust checks warn; review these deals in the CRM."
    deals = ""
    if len(f.deals):
        deals = (f'<p style="margin:10px 0 0 0;font-size:14px;"><b>{_e(_deals_heading(f))}</b></p>'
                 + _rows([(f"<b>{_e(r.name)}</b><br>"
                           f'<span style="{_MUTED}font-size:13px;">{_deal_id(f, r.opportunity_id)} · {_e(r.owner)} · '
                           f"{_e(r.detail)}</span>", _e(format_value(r.amount, "currency", f.currency)))
                          for r in f.deals.itertuples()]))
    return (f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="width:100%;'
            f'margin:14px 0 0 0;"><tr><td style="{_FONT}padding:10px 12px;background:{tint};border-left:4px solid '
            f'{colour};color:#2b2b2b;{_WRAP}"><p style="margin:0 0 4px 0;font-size:16px;"><b>{title}</b></p>'
            f'<p style="margin:0;font-size:14px;line-height:1.4;">{text}</p>{deals}</td></tr></table>')


def trust_text(f: Facts) -> str:
    """Trust, as plain text."""
    if f.trust == "pass":
        return "The numbers can be trusted: every trust check passes."
    if f.trust == "fail":
        lines = [f"FIX THE DATA FIRST. These checks fail: {', '.join(f.failing)}.",
                 "Correct these deals in the CRM before deciding anything else."]
    else:
        lines = ["Check the data: some trust checks warn; review these deals in the CRM."]
    if len(f.deals):
        lines.append(_deals_heading(f) + ":")
        lines += [f"- {r.name} ({r.opportunity_id}, {r.owner}), "
                  f"{format_value(r.amount, 'currency', f.currency)}: {r.detail}"
                  + (f"\n  {fill_deal_url(f.deal_url, r.opportunity_id)}" if f.deal_url else "")
                  for r in f.deals.itertuples()]
    return "\n".join(lines)


def _kpi_value(r: Any, currency: str) -> str:
    return format_value(r.value, r.unit, currency) if not markup.is_missing(r.value) else str(r.na_reason or "—")


def _kpi_detail(r: Any, currency: str) -> str:
    """'target X · Y % of target' ('' without a target: the status then says 'no target')."""
    if markup.is_missing(r.target):
        return ""
    return f"target {format_value(r.target, r.unit, currency)} · {_attainment(r.attainment)} of target"


def kpis_html(f: Facts) -> str:
    """The above-the-line KPIs, one per row: label and target on the left, value and status on the right."""
    return _rows([(_e(r.label) + (f'<br><span style="{_MUTED}font-size:13px;">{_e(detail)}</span>' if detail else ""),
                   f'<b style="font-size:16px;">{_e(_kpi_value(r, f.currency))}</b><br>'
                   f'{_pill(str(r.status), STATUS_WORDS.get(str(r.status), str(r.status)))}')
                  for r in f.kpis.itertuples() for detail in [_kpi_detail(r, f.currency)]])


def kpis_text(f: Facts) -> str:
    """The above-the-line KPIs, as plain text."""
    return "\n".join(f"- {r.label}: {_kpi_value(r, f.currency)} ("
                     + ", ".join(x for x in (_kpi_detail(r, f.currency), STATUS_WORDS.get(str(r.status), str(r.status)))
                                 if x) + ")" for r in f.kpis.itertuples())


def _action_line(r: Any) -> tuple[str, str, bool]:
    """(what, due, overdue) of one open action."""
    kpi = f" (moves {_kpi_label(r.kpi)})" if not markup.is_missing(getattr(r, "kpi", None)) else ""
    return f"{r.text}{kpi}", f"due {_day(r.due_date)}", bool(r.overdue)


def _actions_heading(f: Facts) -> str:
    late = int(f.actions["overdue"].astype(bool).sum()) if len(f.actions) else 0
    return f"Open actions ({len(f.actions)}{f', {late} overdue' if late else ''})"


def actions_html(f: Facts) -> str:
    """The open actions of the owner and cadence, overdue ones marked."""
    if f.actions.empty:
        return f'<p style="{_FONT}font-size:14px;margin:0;{_MUTED}">No open actions from earlier sessions.</p>'
    late = f'<br><b style="color:{STATUS_COLOURS["red"]};">overdue</b>'
    return _rows([(_e(what), f"{_e(due)}{late if overdue else ''}")
                  for what, due, overdue in map(_action_line, f.actions.itertuples())])


def actions_text(f: Facts) -> str:
    """The open actions, as plain text."""
    if f.actions.empty:
        return "No open actions from earlier sessions."
    return "\n".join(f"- {what} — {due}{' — OVERDUE' if overdue else ''}"
                     for what, due, overdue in map(_action_line, f.actions.itertuples()))


def charts_html(images: Mapping[str, bytes], alts: Mapping[str, str] | None) -> str:
    """The charts as cid: images with their alt text, drawn at CHART_WIDTH and never wider than the screen."""
    out = []
    for cid, png in images.items():
        w, h = png_size(png)
        alt = (alts or {}).get(cid) or "Chart"
        out.append(f'<tr><td align="center" style="padding:10px 0;{_FONT}font-size:13px;{_MUTED}">'
                   f'<img src="cid:{_e(cid)}" alt="{_e(alt)}" width="{CHART_WIDTH}" '
                   f'height="{round(h * CHART_WIDTH / w)}" style="display:block;margin:0 auto;width:100%;'
                   f'max-width:{CHART_SHOWN_MAX}px;height:auto;border:0;"></td></tr>')
    return (f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="width:100%;">'
            f'{"".join(out)}</table>') if out else ""


# ---------------------------------------------------------------- the whole body
def plain_text(rpt: Report, f: Facts, *, link_url: str | None, attached: bool = True) -> str:
    """The plain-text alternative of the email."""
    parts = [f"{rpt.name} · {rpt.cadence} report",
             f"Closed period {rpt.closed} · forward look {rpt.forward} · as of {rpt.as_of}", "",
             glance_text(f), "", trust_text(f), "", "Above the line", kpis_text(f), "",
             _actions_heading(f), actions_text(f), ""]
    if link_url:
        parts += [f"Your live report: {link_url}", ""]
    if attached:
        parts.append("The full interactive report is attached: open it in a web browser.")
    return "\n".join(parts) + "\n"


def html_body(rpt: Report, f: Facts, *, title: str, link_url: str | None, images: Mapping[str, bytes],
              alts: Mapping[str, str] | None = None, attached: bool = True) -> str:
    """The HTML body: fluid tables, inline styles only, charts as cid: images, no script and no remote content."""
    link = (f'<p style="{_FONT}margin:22px 0 8px 0;"><a href="{_e(link_url)}" style="display:inline-block;'
            f'padding:12px 20px;background:#4c78a8;color:#ffffff;text-decoration:none;border-radius:4px;'
            f'font-size:15px;">Open your live report</a></p>') if link_url else ""
    foot = "The full interactive report is attached: open it in a web browser." if attached else ""
    charts = charts_html(images, alts)
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><meta name="viewport" '
        'content="width=device-width,initial-scale=1"><title>' + _e(title) + "</title></head>"
        '<body style="margin:0;padding:0;background:#f4f4f4;">'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="width:100%;'
        'background:#f4f4f4;"><tr><td align="center" style="padding:12px 0;">'
        f'<table role="presentation" width="{BODY_WIDTH}" cellpadding="0" cellspacing="0" style="width:100%;'
        f'max-width:{BODY_WIDTH}px;background:#ffffff;"><tr><td style="padding:{PAD}px;color:#2b2b2b;{_WRAP}">'
        f'<h1 style="{_FONT}font-size:22px;line-height:1.2;margin:0 0 4px 0;">{_e(rpt.name)}</h1>'
        f'<p style="{_FONT}font-size:13px;line-height:1.4;{_MUTED}margin:0;">'
        f"{_e(LEVEL_TITLES.get(rpt.level, rpt.level))} · {_e(rpt.cadence)} report · closed period "
        f"<b>{_e(rpt.closed)}</b> · forward look <b>{_e(rpt.forward)}</b> · as of {_e(rpt.as_of)}</p>"
        f"{glance_html(f)}{link}{trust_html(f)}"
        f"{_h2('Above the line')}{kpis_html(f)}"
        f"{_h2(_actions_heading(f))}{actions_html(f)}"
        f"{_h2('Charts') + charts if charts else ''}"
        f'<p style="{_FONT}font-size:13px;{_MUTED}margin:16px 0 0 0;">{foot}</p>'
        "</td></tr></table></td></tr></table></body></html>")

