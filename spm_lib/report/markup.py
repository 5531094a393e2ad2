"""Small HTML helpers for reports: figures, escaped tables, badges, banners and number formats.

Everything that comes from the CRM is untrusted text: every helper here escapes it. What the
helpers return is `Html`: a plain `str` marked as safe HTML (it has `__html__`), so a table
formatter can return a badge and `table_html` keeps it as it is. Unlike markupsafe's Markup,
`Html` has no operator magic: `"<h4>x</h4>" + table_html(...)` is an ordinary string.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd
from markupsafe import Markup, escape

from spm_lib.domain.crm import fill_deal_url
from spm_lib.errors import SpmError, did_you_mean

# plotly.js 4 shows a "Share chart" button by default that uploads the figure (sales data) to Plotly Cloud:
# never offer it. Selection tools mean nothing on these charts.
PLOTLY_CONFIG: dict[str, Any] = {"displaylogo": False, "responsive": True, "showSendToCloud": False,
                                 "typesetMath": False,
                                 "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
UNITS = ("currency", "count", "pct", "days", "ratio", "score")  # score: points on a signed scale (NPS)
STATUSES = ("green", "amber", "red", "none")
# the one home of what a status looks like and says, for the report, its charts, the email and the live panels
STATUS_COLOURS = {"green": "#1a9850", "amber": "#f5a623", "red": "#d73027", "none": "#9e9e9e"}
STATUS_WORDS = {"green": "on track", "amber": "at risk", "red": "behind", "none": "no target"}
SESSION_WORDS = {"green": "On track", "amber": "At risk", "red": "Off track", "none": "No target"}  # at a glance
TRUST_BADGE = {"pass": "green", "warn": "amber", "fail": "red", "not_available": "none"}  # trust status -> badge
LEVEL_TITLES = {"rep": "Sales executive", "manager": "Manager", "director": "Director", "executive": "Executive"}
BANNER_KINDS = ("info", "success", "warning", "error")
MISSING = "—"
SHORT_CELL = 12  # a column whose cells are all this short (as HTML; a link by its text) is kept on one line
_CURRENCY_AFFIXES = {"EUR": ("", " €"), "USD": ("$", ""), "GBP": ("£", ""), "JPY": ("¥", ""),
                     "INR": ("₹", ""), "CHF": ("", " CHF")}
_SLUG = re.compile(r"[^a-z0-9]+")
_LINK_TAG = re.compile(r"<a\b[^>]*>|</a>")  # a deal_link's tags: a linked id is as short as its text
_SCRIPT = re.compile(r"(<script\b[^>]*>)(.*?)(</script>)", re.DOTALL)  # the drawing script of fig.to_html


class Html(str):
    """A string of HTML that is safe to insert as it is (built by these helpers from escaped parts)."""

    __slots__ = ()

    def __html__(self) -> str:
        """The HTML itself (the markupsafe protocol: escape() leaves it alone)."""
        return str(self)


class RenderError(SpmError):
    """A chart or table was asked to draw data that lacks what it needs."""


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise RenderError naming `what` and the missing columns when `df` lacks any of `columns`."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        hint = did_you_mean(missing[0], df.columns)
        raise RenderError(f"{what} needs the column(s) {', '.join(missing)}{hint}; the table has: "
                          f"{', '.join(map(str, df.columns)) or 'no columns'}. Pass a table with these columns.")


# ---------------------------------------------------------------- numbers
def currency_affixes(currency: str) -> tuple[str, str]:
    """Prefix and suffix that mark an amount in `currency` (an ISO code): ('', ' €') for EUR, ('$', '') for USD."""
    code = str(currency or "").upper()
    return _CURRENCY_AFFIXES.get(code, ("", f" {code}" if code else ""))


def _trim(number: float, decimals: int) -> str:
    """`number` with at most `decimals` decimals and thousands separators, trailing zeros dropped."""
    text = f"{number:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _compact(number: float) -> str:
    """1234567 -> '1.2M', 120000 -> '120k', 950 -> '950'."""
    size = abs(number)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if size >= scale * 0.9995:
            scaled = number / scale
            return _trim(scaled, 0 if abs(scaled) >= 100 else 1) + suffix
    return _trim(number, 0 if size >= 10 else 1)


def is_missing(value: Any) -> bool:
    """True for None, NaN, pd.NA and NaT."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(isinstance(value, float | int) and math.isnan(value))
    except TypeError:
        return False


def fmt_value(value: Any, unit: str, currency: str = "EUR") -> str:
    """Format a KPI value for a reader: '1.2M €', '1,234', '31 %', '12 days', '1.4×', '+32'; missing values as '—'."""
    if unit not in UNITS:
        raise RenderError(f"unknown unit {unit!r}{did_you_mean(unit, UNITS)}; allowed units: {', '.join(UNITS)}")
    if is_missing(value):
        return MISSING
    number = float(value)
    if math.isnan(number):
        return MISSING
    if unit == "currency":
        prefix, suffix = currency_affixes(currency)
        sign = "-" if number < 0 else ""
        return f"{sign}{prefix}{_compact(abs(number))}{suffix}"
    if unit == "count":
        return _trim(number, 0 if abs(number) >= 100 or number == round(number) else 1)
    if unit == "pct":
        return f"{_trim(number, 0 if abs(number) >= 10 else 1)} %"
    if unit == "days":
        text = _trim(number, 0 if abs(number) >= 10 else 1)
        return f"{text} day" if text == "1" else f"{text} days"
    if unit == "score":
        return ("+" if number > 0 else "") + _trim(number, 0 if abs(number) >= 10 else 1)
    return f"{_trim(number, 2 if abs(number) < 10 else 1)}×"


# ---------------------------------------------------------------- figures
def trust_value_text(value: float, unit: str) -> str:
    """A trust check's value in words by its threshold unit (config.Threshold): a count, a share of the open
    value (rate), a share of the pipeline closing in the rest of the forward period (material), or a % deviation."""
    if unit in ("rate", "material") and math.isinf(value):
        return "no pipeline closing in the forward period"
    if unit == "rate":
        return f"{_share(value)} % of open value"
    if unit == "material":
        return f"{_share(value)} % of the forward pipeline"
    return f"{value:+.0f} %" if unit == "pct" else f"{int(value)}"


def _share(value: float) -> str:
    """A share as a whole percentage; a share above 0 that rounds to 0 reads '<1' (flagged deals are there)."""
    return "<1" if 0 < value < 0.005 else f"{value * 100:.0f}"


def div_id(*parts: object) -> str:
    """A stable HTML id from `parts` (owner id, section …): a [a-z0-9-] slug, with a short hash when text was lost."""
    raw = "-".join(str(p) for p in parts)
    slug = _SLUG.sub("-", raw.lower()).strip("-")[:60].strip("-")
    if slug != raw:  # sanitising lost information: keep distinct inputs distinct
        slug = f"{slug}-{hashlib.sha1(raw.encode('utf-8')).hexdigest()[:6]}".strip("-")
    return f"fig-{slug}"


def figure_html(fig: Any, div_id: str) -> str:
    """A plotly figure as an HTML fragment drawn by the page's plotly.js (not included), in the div `div_id`.

    The drawing script runs through `window.spmPlot(draw)` when the page defines it (the exported report,
    whose plotly.js is unpacked asynchronously: spmPlot queues until it is there) and directly otherwise
    (the live Voila page, which loads plotly.js synchronously in its head).
    """
    page = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)
    wrapped, n = _SCRIPT.subn(lambda m: f"{m[1]}(window.spmPlot || function (draw) {{ draw(); }})"
                                        f"(function () {{{m[2]}}});{m[3]}", page)
    if n != 1:
        raise RenderError(f"figure_html: plotly's to_html gave {n} <script> blocks for {div_id!r}, not 1; "
                          "check spm_lib.report.markup.figure_html against the installed plotly version.")
    return Html(wrapped)


# ---------------------------------------------------------------- text blocks
def badge(status: str, text: str) -> str:
    """A status badge (green, amber, red or none) holding `text`, escaped."""
    kind = status if status in STATUSES else "none"
    return Html(Markup('<span class="spm-badge spm-badge-{}">{}</span>').format(kind, text))


def banner(kind: str, title: str, body_html: str) -> str:
    """A banner box (info, success, warning, error) with an escaped title and a body that is already HTML."""
    if kind not in BANNER_KINDS:
        raise RenderError(f"unknown banner kind {kind!r}{did_you_mean(kind, BANNER_KINDS)}; "
                          f"allowed: {', '.join(BANNER_KINDS)}")
    role = "alert" if kind in ("warning", "error") else "note"
    return Html(Markup('<div class="spm-banner spm-banner-{}" role="{}"><p class="spm-banner-title">{}</p>'
                       '<div class="spm-banner-body">{}</div></div>').format(kind, role, title, Markup(body_html)))


def details(summary: str, body_html: str, open_: bool = False) -> str:
    """A collapsible block ('below the line') with an escaped summary and a body that is already HTML."""
    return Html(Markup('<details class="spm-details"{}><summary>{}</summary>{}</details>').format(
        Markup(" open") if open_ else "", summary, Markup(body_html)))


def deal_link(opportunity_id: object, url_template: str | None, text: object = None) -> str:
    """A deal's id (or `text`) as HTML: a link to its CRM page (new tab) when `url_template` (config/crm.yml
    `deal_url`) is set, plain escaped text otherwise. The id is URL-quoted into the address, the text escaped."""
    shown = escape(str(opportunity_id if text is None else text))
    if not url_template or is_missing(opportunity_id):
        return Html(shown)
    return Html(Markup('<a href="{}" target="_blank" rel="noopener noreferrer">{}</a>').format(
        fill_deal_url(url_template, opportunity_id), shown))


# ---------------------------------------------------------------- tables
def _cell(value: Any) -> str:
    """One cell's HTML: missing as '—', HTML values kept, everything else escaped."""
    if hasattr(value, "__html__"):
        return str(escape(value))
    return MISSING if is_missing(value) else str(escape(str(value)))


def table_html(df: pd.DataFrame, columns: Mapping[str, str], formats: Mapping[str, Callable[[Any], Any]] | None = None,
               classes: str = "spm-table", empty_text: str = "No data for this period") -> str:
    """An HTML table of `df`'s `columns` (column -> header) in that order, each cell formatted then escaped.

    `formats` maps a column to a callable applied to each non-missing value (missing values show '—');
    its result is escaped unless it is HTML already (`Html`, markupsafe `Markup`). `classes` are added
    to the table's `spm-table` class.
    """
    require_columns(df, columns, "table_html")
    formats = formats or {}
    unknown = [c for c in formats if c not in columns]
    if unknown:
        raise RenderError(f"table_html: formats given for {', '.join(unknown)}, which are not among the shown "
                          f"columns ({', '.join(columns)}); add them to `columns` or drop the format.")
    numeric = {c: pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in columns}
    cells: list[list[str]] = []
    for c in columns:
        fmt = formats.get(c)
        values = df[c].tolist()
        cells.append([_cell(fmt(v) if fmt is not None and not is_missing(v) else v) for v in values])
    # short values (ids, dates, amounts) never wrap mid-word; numbers align right
    short = {c: max((len(_LINK_TAG.sub("", x)) for x in col), default=0) <= SHORT_CELL
             for c, col in zip(columns, cells)}
    num_class = {c: ' class="num"' if numeric[c] else ' class="short"' if short[c] else "" for c in columns}
    head = "".join(f'<th scope="col"{num_class[c]}>{escape(h)}</th>' for c, h in columns.items())
    tds = [f"<td{num_class[c]}>" for c in columns]
    rows = ["<tr>" + "".join(f"{td}{cell}</td>" for td, cell in zip(tds, row)) + "</tr>" for row in zip(*cells)]
    if not rows:
        rows = [f'<tr><td class="spm-empty" colspan="{len(columns)}">{escape(empty_text)}</td></tr>']
    names = " ".join(dict.fromkeys(["spm-table", *classes.split()]))  # always styled as a report table
    return Html(f'<table class="{escape(names)}"><thead><tr>{head}</tr></thead>'
                f'<tbody>{"".join(rows)}</tbody></table>')
