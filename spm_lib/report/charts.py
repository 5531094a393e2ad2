"""The report's plotly figures, drawn only with the trace types of the vendored plotly.js finance bundle.

Inputs are small tidy DataFrames the report prepares from the cube. Conventions:
`unit` is one of currency, count, pct, days, ratio; values of unit pct are percents (31.0 means 31 %);
`attainment` is a share of target (0.78 means 78 %); `status` is green, amber, red or none.
Every trace carries a hover text with the number in its unit and the KPI's one-line definition.
Empty inputs give a small figure saying "No data for this period", never an exception.
"""

from __future__ import annotations

import copy
import html as _html
import re
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from spm_lib.report.markup import STATUS_COLOURS, currency_affixes, fmt_value, require_columns

# Trace types the vendored bundle (spm_lib/static/plotly-finance.min.js) can draw.
FINANCE_TRACE_TYPES = frozenset({"bar", "scatter", "pie", "funnel", "funnelarea", "histogram", "indicator",
                                 "waterfall", "candlestick", "ohlc"})
NEUTRAL = "#4c78a8"  # the one colour of plain quantities
NEUTRAL_LIGHT = "#9ecae9"
ACCENT = "#7b4fa0"  # a second series on the same chart (never a status)
INK = "#2b2b2b"
MUTED = "#6b6b6b"
GRID = "#e8e8e8"
PALETTE = (NEUTRAL, "#72b7b2", ACCENT, "#9d755d", "#bab0ac", NEUTRAL_LIGHT)
NO_DATA = "No data for this period"
FONT_FAMILY = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
MIN_HEIGHT, MAX_HEIGHT = 260, 340
NO_DATA_HEIGHT = 160
LEGEND_TOP = 62  # px above the plot of a chart with a legend: the title, then the legend's row
MONTHS_AHEAD = 6  # the open pipeline by close month spans this many months from the as-of date
NOTE_CHARS = 32  # a note under a chart is wrapped at this many characters: it fits a 390 px phone

DEFINITIONS = {
    "booked": "Won deals closed in the period so far.",
    "weighted": "Open deals expected to close in the period, each weighted by its win probability.",
    "expected": "Booked plus weighted pipeline: where the period is likely to land.",
    "calibrated": ("Open deals, each by its chance of being won within the period (learnt from the company's "
                   "own history), plus the deals not created yet."),
    "target": "The target of the period.",
    "pipeline_by_stage": "Open pipeline: value of the open deals in each stage on the as-of date.",
    "pipeline_by_close_month": "Open pipeline by the month its deals are expected to close.",
    "stage_conversion": "Share of the deals that left a stage which moved on to a later stage or were won.",
    "leads_by_channel": "Leads created in the period by channel; conversion is the share that became an opportunity.",
    "driver_tree": "What each driver must reach for the goal to be met (need) against where it stands (have).",
}

_TEMPLATE = go.layout.Template(layout=go.Layout(
    font={"family": FONT_FAMILY, "size": 12, "color": INK},
    title={"font": {"size": 13, "color": INK}, "x": 0, "xanchor": "left", "y": 0.98, "yanchor": "top"},
    paper_bgcolor="white", plot_bgcolor="white", colorway=list(PALETTE),
    xaxis={"gridcolor": GRID, "linecolor": "#c8c8c8", "zerolinecolor": "#c8c8c8", "automargin": True,
           "title": {"font": {"size": 12, "color": MUTED}}},
    yaxis={"gridcolor": GRID, "linecolor": "#c8c8c8", "zerolinecolor": "#c8c8c8", "automargin": True,
           "title": {"font": {"size": 12, "color": MUTED}}},
    hoverlabel={"font": {"size": 12, "family": FONT_FAMILY}, "bgcolor": "white", "bordercolor": "#c8c8c8"},
    legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom", "font": {"size": 12}},
    separators=".,",
))
_TEMPLATE_JSON = _TEMPLATE.to_plotly_json()

# plotly checks every property as it is set: about 8 ms for an empty figure with the report's template and 3 ms per
# annotation, each add_annotation checking every earlier one again (a tenth of a report's time went there). The
# charts are fixed code, so they are drawn unchecked; tests/test_charts.py draws every chart checked too
# (`checked()`) and requires the same figure.
_CHECK = {"on": False}


@contextmanager
def checked() -> Iterator[None]:
    """Draw the charts with plotly's property checks on, as plotly does by default (tests compare the two)."""
    before = _CHECK["on"]
    _CHECK["on"] = True
    try:
        yield
    finally:
        _CHECK["on"] = before


def _trace(kind: type[Any], **props: Any) -> Any:
    """A trace of plotly class `kind` (go.Bar, go.Scatter …), checked only under `checked()`."""
    return kind(**props, _validate=_CHECK["on"])


def _annotate(fig: go.Figure, *notes: dict[str, Any]) -> None:
    """Give `fig` its annotations (plotly's add_annotation arguments), all at once: called once per figure."""
    fig.update_layout(annotations=notes)


def _shapes(fig: go.Figure, *shapes: dict[str, Any]) -> None:
    """Give `fig` its shapes (plotly's add_shape arguments), all at once: called once per figure."""
    fig.update_layout(shapes=shapes)


# ---------------------------------------------------------------- shared pieces
def _esc(text: Any) -> str:
    """Untrusted text made safe for plotly's pseudo-HTML labels ('<' shows as '<', never as a tag)."""
    return _html.escape("" if text is None else str(text), quote=False)


def _wrap(text: str, width: int = 60) -> str:
    """Long hover text broken into lines of about `width` characters."""
    return "<br>".join(textwrap.wrap(_esc(text), width)) if text else ""


def _hover(columns: Sequence[Sequence[str]]) -> tuple[list[list[str]], str]:
    """customdata rows and a hovertemplate showing them: the first in bold, the last (the definition) in italics."""
    columns = [list(c) for c in columns]
    rows = [list(r) for r in zip(*columns)]
    n = len(columns)
    lines = ["<b>%{customdata[0]}</b>"] + [f"%{{customdata[{i}]}}" for i in range(1, n - 1)]
    lines.append(f"<i>%{{customdata[{n - 1}]}}</i>")
    return rows, "<br>".join(lines) + "<extra></extra>"


def _fmt(values: Iterable[Any], units: Iterable[str] | str, currency: str) -> list[str]:
    """Each value formatted in its unit (one unit for all, or one per value)."""
    values = list(values)
    units = [units] * len(values) if isinstance(units, str) else list(units)
    return [fmt_value(v, u, currency) for v, u in zip(values, units)]


def _num(series: pd.Series) -> np.ndarray:
    """A column as float64 numbers, NaN where missing."""
    return np.asarray(pd.to_numeric(series, errors="coerce"), dtype="float64")


def _status_colours(status: pd.Series) -> list[str]:
    """The status colour of each row (grey for unknown or missing status)."""
    return [STATUS_COLOURS.get(str(s), STATUS_COLOURS["none"]) for s in status.tolist()]


def _labels(series: pd.Series) -> list[str]:
    """Category labels: months and dates as 'Mar 2026', everything else as escaped text."""
    if isinstance(series.dtype, pd.PeriodDtype):
        series = series.dt.to_timestamp()
    if pd.api.types.is_datetime64_any_dtype(series):
        return [_esc(s) for s in series.dt.strftime("%b %Y").fillna("—").tolist()]
    return [_esc(s) for s in series.tolist()]


def _value_axis(unit: str, currency: str) -> dict[str, Any]:
    """Axis settings that show ticks in `unit`: '1.5M €', '40 %', '12 d', '1.5×'."""
    if unit == "currency":
        prefix, suffix = currency_affixes(currency)
        return {"tickprefix": prefix, "ticksuffix": suffix, "exponentformat": "B", "rangemode": "tozero"}
    suffix = {"pct": " %", "days": " d", "ratio": "×"}.get(unit, "")
    return {"ticksuffix": suffix, "exponentformat": "B", "rangemode": "tozero"}


def _category_axis(fig: go.Figure, n: int) -> None:
    """A category x-axis of `n` categories with room left of the first: its label never meets the value axis's
    (at least 0.7 of a category, a tenth of the axis when there are many: on a phone a category is narrow)."""
    fig.update_xaxes(type="category", showgrid=False, range=[-max(0.7, n / 10), n - 0.3])


def _two_lines(label: str, longer_than: int = 8) -> str:
    """A category label of several words on two lines (at its first space) when long: neighbours never meet."""
    return label.replace(" ", "<br>", 1) if len(label) > longer_than else label


def _figure(title: str, height: int, **layout: Any) -> go.Figure:
    """An empty figure with the report's compact layout."""
    template = _TEMPLATE if _CHECK["on"] else copy.deepcopy(_TEMPLATE_JSON)  # unchecked, plotly keeps the dict
    base: dict[str, Any] = {"template": template, "height": height,
                            "showlegend": False, "title": {"text": _esc(title)},
                            "margin": {"l": 8, "r": 16, "t": 36, "b": 28}, "bargap": 0.3}
    base.update(layout)
    if base["showlegend"]:  # the legend gets a row of its own under the title: they never meet on a phone
        base["margin"] = {**base["margin"], "t": max(base["margin"].get("t", 0), LEGEND_TOP)}
        base["legend"] = {"x": 0, "xanchor": "left", "y": 1.0, "yanchor": "bottom"}
    return go.Figure(layout=base, _validate=_CHECK["on"])


def _no_data(title: str) -> go.Figure:
    """A small figure saying there is nothing to draw."""
    fig = _figure(title, NO_DATA_HEIGHT)
    _annotate(fig, dict(text=NO_DATA, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 13, "color": MUTED}))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _empty(df: pd.DataFrame | None) -> bool:
    """True when there are no rows to draw."""
    return df is None or len(df) == 0


def _top(values: np.ndarray, *others: float, floor: float = 1e-9) -> float:
    """The largest finite value among `values` and `others` (at least `floor`): where an axis must reach."""
    finite = values[np.isfinite(values)]
    return max(float(finite.max()) if finite.size else floor, *others, floor)


def _bar_height(n: int) -> int:
    """Height of a horizontal bar chart with `n` bars: compact, growing only for long lists."""
    return max(MIN_HEIGHT, min(MAX_HEIGHT, 80 + 26 * n)) if n <= 10 else 80 + 22 * n


def _target_line(x: float, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A dashed vertical reference line at `x` across the plot and its label on top: a shape and an annotation."""
    return (dict(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", layer="between",
                 line={"color": INK, "width": 1.5, "dash": "dash"}),
            dict(x=x, y=1, yref="paper", text=text, showarrow=False, yanchor="bottom",
                 font={"size": 11, "color": MUTED}))


def _hbars(title: str, labels: list[str], x: np.ndarray, colours: list[str], text: list[str],
           hover: Sequence[Sequence[str]], axis: dict[str, Any], target_at: float | None) -> go.Figure:
    """Horizontal bars in the given order (top to bottom), an optional target line, and each bar's text in a column
    right of the plot: no line or bar end ever runs through a label, at any width."""
    top = _top(x, target_at or 0.0)
    customdata, template = _hover(hover)
    column = max((len(_plain(t)) for t in text), default=0) * CHAR_PX + 12
    fig = _figure(title, _bar_height(len(labels)), margin={"l": 8, "r": int(column), "t": 36, "b": 28})
    fig.add_trace(_trace(go.Bar, y=labels, x=np.nan_to_num(x, nan=0.0), orientation="h", marker={"color": colours},
                         customdata=customdata, hovertemplate=template))
    notes = [dict(x=1, xref="paper", y=label, yref="y", text=t, xanchor="left", xshift=8, showarrow=False,
                  font={"size": 12, "color": INK}) for label, t in zip(labels, text)]
    if target_at is not None:
        line, label = _target_line(target_at, "target")
        _shapes(fig, line)
        notes.append(label)
    _annotate(fig, *notes)
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False, ticks="", ticklabelstandoff=4)
    # no tick labels: each bar's value is in the column (and the target is the dashed line); on a phone the
    # plot is too narrow for them
    fig.update_xaxes(range=[0, top * 1.04], **{**axis, "showticklabels": False, "title": None})
    return fig


# ---------------------------------------------------------------- figures
def attainment_bullets(rows: pd.DataFrame, currency: str) -> go.Figure:
    """Attainment of each above-the-line KPI as horizontal bars coloured by status, with the 100 % target line.

    rows: label (KPI name), value, target (in the KPI's unit), attainment (share, 1.0 = on target),
    status (green/amber/red/none), unit, definition (one line). One bar per row, in the given order.
    """
    title = "Attainment vs target"
    if _empty(rows):
        return _no_data(title)
    require_columns(rows, ["label", "value", "target", "attainment", "status", "unit", "definition"], title)
    att = _num(rows["attainment"]) * 100
    values, targets = _fmt(rows["value"], rows["unit"], currency), _fmt(rows["target"], rows["unit"], currency)
    text = [f"{v} / {t}" for v, t in zip(values, targets)]
    labels = [_esc(s) for s in rows["label"].tolist()]
    hover = [labels, [f"Attainment: {a}" for a in _fmt(att, "pct", currency)],
             [f"Actual {v} · target {t}" for v, t in zip(values, targets)],
             [_wrap(d) for d in rows["definition"].tolist()]]
    axis = {"ticksuffix": " %", "title": {"text": "attainment of target"}}
    return _hbars(title, labels, att, _status_colours(rows["status"]), text, hover, axis, 100.0)


def forecast_vs_target(booked: float, weighted: float, target: float | None, label: str, currency: str,
                       *, definition: str = "", calibrated: bool = False) -> go.Figure:
    """Booked, plus weighted pipeline, gives the expected landing (a waterfall), against the target line and its gap.
    calibrated: `weighted` is the calibrated forecast of the rest of the period (open and new deals).

    booked and weighted in currency; target None when no target is set; label names the KPI (e.g. 'Bookings').
    """
    title = f"{label}: forecast vs target"
    if pd.isna(booked) and pd.isna(weighted):
        return _no_data(title)
    booked_v, weighted_v = (0.0 if pd.isna(v) else float(v) for v in (booked, weighted))
    expected = booked_v + weighted_v
    tgt = float("nan") if target is None or pd.isna(target) else float(target)
    has_target = not np.isnan(tgt)
    steps = ["Booked", "+ Open and<br>new deals" if calibrated else "+ Weighted<br>pipeline", "Expected"]
    amounts = _fmt([booked_v, weighted_v, expected], "currency", currency)
    defs = [DEFINITIONS["booked"], DEFINITIONS["calibrated" if calibrated else "weighted"], DEFINITIONS["expected"]]
    if definition:
        defs = [f"{d} {definition}" for d in defs]
    customdata, template = _hover([steps, amounts, [_wrap(d) for d in defs]])
    fig = _figure(title, 300, margin={"l": 8, "r": 16, "t": LEGEND_TOP, "b": 40})
    fig.add_trace(_trace(go.Waterfall,
        x=steps, y=[booked_v, weighted_v, expected], measure=["absolute", "relative", "total"],
        text=[amounts[0], "+" + amounts[1], amounts[2]], textposition="inside", insidetextanchor="middle",
        textfont={"color": ["white", INK, "white"], "size": 13},
        increasing={"marker": {"color": NEUTRAL_LIGHT}}, decreasing={"marker": {"color": STATUS_COLOURS["red"]}},
        totals={"marker": {"color": NEUTRAL}}, connector={"line": {"color": "#b0b0b0", "width": 1, "dash": "dot"}},
        customdata=customdata, hovertemplate=template))
    top = max(expected, booked_v, tgt if has_target else 0.0, 1e-9)
    fig.update_yaxes(range=[0, top * 1.12], **_value_axis("currency", currency))
    _category_axis(fig, len(steps))
    if not has_target:
        _annotate(fig, dict(text="No target set", x=0, y=1, xref="paper", yref="paper", showarrow=False,
                           xanchor="left", yanchor="bottom", yshift=4, font={"color": MUTED}))
        return fig
    tgt_text = fmt_value(tgt, "currency", currency)
    cd, tmpl = _hover([["Target"] * 3, [tgt_text] * 3, [_wrap(DEFINITIONS["target"])] * 3])
    fig.add_trace(_trace(go.Scatter, x=steps, y=[tgt] * 3, mode="lines", customdata=cd, hovertemplate=tmpl,
                             line={"color": INK, "width": 1.5, "dash": "dash"}))
    gap = tgt - expected  # the target's value is said in the note above the plot, not on the line (no crossing)
    share = fmt_value(100 * expected / tgt, "pct", currency) if tgt else "—"
    if gap > 0:
        note = f"Expected {share} of the {tgt_text} target: {fmt_value(gap, 'currency', currency)} short"
        colour = STATUS_COLOURS["red"]
    else:
        note = f"Expected {fmt_value(-gap, 'currency', currency)} above the {tgt_text} target"
        colour = STATUS_COLOURS["green"]
    _annotate(fig, dict(text=_esc(note), x=0, y=1.0, xref="paper", yref="paper", showarrow=False, xanchor="left",
                       yanchor="bottom", yshift=4, font={"color": colour, "size": 12}))
    return fig


def _amount_bars(title: str, labels: list[str], values: np.ndarray, currency: str,
                 details: Sequence[Sequence[str]], definition: str) -> go.Figure:
    """Vertical bars of amounts in the order given, each labelled with its amount."""
    amounts = _fmt(values, "currency", currency)
    customdata, template = _hover([labels, amounts, *details, [_wrap(definition)] * len(labels)])
    fig = _figure(title, 290, margin={"l": 8, "r": 16, "t": 36, "b": 40})
    fig.add_trace(_trace(go.Bar, x=labels, y=np.nan_to_num(values), marker={"color": NEUTRAL}, text=amounts,
                         textposition="outside", cliponaxis=False, customdata=customdata, hovertemplate=template))
    _category_axis(fig, len(labels))
    fig.update_yaxes(range=[0, _top(values) * 1.2], **_value_axis("currency", currency))
    return fig


def pipeline_by_stage(df: pd.DataFrame, currency: str, *, definition: str = DEFINITIONS["pipeline_by_stage"]
                      ) -> go.Figure:
    """Open pipeline value per stage, as bars in the stage order given.

    df: stage (name), value (currency), count (number of deals).
    """
    title = "Open pipeline by stage"
    if _empty(df):
        return _no_data(title)
    require_columns(df, ["stage", "value", "count"], title)
    deals = [f"{fmt_value(c, 'count', currency)} deals" for c in _num(df["count"])]
    labels, values = _labels(df["stage"]), _num(df["value"])
    amounts = _fmt(values, "currency", currency)
    hover = [labels, amounts, deals, [_wrap(definition)] * len(labels)]
    return _hbars(title, labels, values, [NEUTRAL] * len(labels), amounts, hover, _value_axis("currency", currency),
                  None)


def pipeline_by_close_month(df: pd.DataFrame, currency: str, *,
                            definition: str = DEFINITIONS["pipeline_by_close_month"]) -> go.Figure:
    """Open pipeline value by expected close month, as bars in the order given (`close_month_span` makes the rows).

    df: month (a month label, a Period or a date: shown as 'Mar 2026'), value (currency).
    """
    title = "Open pipeline by close month"
    if _empty(df):
        return _no_data(title)
    require_columns(df, ["month", "value"], title)
    labels = [re.sub(r"^(\w{3}) (\d{4})$", r"\1<br>\2", m) for m in _labels(df["month"])]  # 'Mar<br>2026'
    return _amount_bars(title, labels, _num(df["value"]), currency, [], definition)


def close_month_span(close_date: pd.Series, amount: pd.Series, after: Any, months: int = MONTHS_AHEAD
                     ) -> pd.DataFrame:
    """The rows of `pipeline_by_close_month`: open amounts summed by close month over the `months` months from the
    month of the day after `after` (the as-of date), a month without deals as 0; deals outside the span left out."""
    first = (pd.Timestamp(after) + pd.Timedelta(days=1)).to_period("M")
    span = pd.period_range(first, periods=months, freq="M")
    dates = pd.to_datetime(close_date, errors="coerce")
    keep = dates.notna().to_numpy()
    by_month = pd.Series(_num(amount)[keep]).fillna(0.0).groupby(dates[keep].dt.to_period("M").to_numpy()).sum()
    return pd.DataFrame({"month": span, "value": by_month.reindex(span, fill_value=0.0).to_numpy(dtype="float64")})


def funnel(df: pd.DataFrame, weak_stage: str | None, *, benchmark_label: str = "the team",
           definition: str = DEFINITIONS["stage_conversion"]) -> go.Figure:
    """Conversion of each stage (bars, stage order top to bottom) against the benchmark, the weak stage marked.

    df: stage, rate (percent, 31.0 = 31 %), benchmark_rate (percent, the team's or org's rate; may be missing).
    weak_stage: the stage to mark (red bar and a sentence under the chart), or None.
    """
    title = "Stage conversion"
    if _empty(df):
        return _no_data(title)
    require_columns(df, ["stage", "rate", "benchmark_rate"], title)
    stages, raw = _labels(df["stage"]), df["stage"].astype(str).tolist()
    rate, bench = _num(df["rate"]), _num(df["benchmark_rate"])
    rate_text, bench_text = _fmt(rate, "pct", ""), _fmt(bench, "pct", "")
    weak = [s == weak_stage for s in raw]
    colours = [STATUS_COLOURS["red"] if w else NEUTRAL for w in weak]
    defs = [_wrap(definition)] * len(df)
    fig = _figure(title, _bar_height(len(df)), showlegend=True, margin={"l": 8, "r": 16, "t": 36, "b": 58})
    cd, tmpl = _hover([stages, [f"Converts at {r}" for r in rate_text], defs])
    fig.add_trace(_trace(go.Bar, y=stages, x=np.nan_to_num(rate), orientation="h", name="Conversion",
                         marker={"color": colours}, text=rate_text, textposition="auto", insidetextanchor="middle",
                         textfont={"size": 12}, cliponaxis=False,
                         customdata=cd, hovertemplate=tmpl))
    if np.isfinite(bench).any():
        cd, tmpl = _hover([stages, [f"{_esc(benchmark_label).capitalize()}: {b}" for b in bench_text], defs])
        fig.add_trace(_trace(go.Scatter, y=stages, x=bench, mode="markers", name=_esc(benchmark_label).capitalize(),
                                 marker={"symbol": "line-ns-open", "size": 22, "color": INK, "line": {"width": 3}},
                                 customdata=cd, hovertemplate=tmpl))
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False, ticks="")
    fig.update_xaxes(range=[0, 115], ticksuffix=" %", dtick=25)
    if weak_stage is not None:
        at = raw.index(weak_stage) if weak_stage in raw else None
        note = f"weak stage: {weak_stage}"
        if at is not None and np.isfinite(rate[at]):
            note += f" converts at {rate_text[at]}"
            if np.isfinite(bench[at]):
                note += f" vs {bench_text[at]} for {benchmark_label}"
        lines = [line.replace("\u00a0", " ")  # a phone's width; never between a number and its '%'
                 for line in textwrap.wrap(note.replace(" %", "\u00a0%"), NOTE_CHARS)]
        _annotate(fig, dict(text="<br>".join(f"<b>{_esc(line)}</b>" for line in lines), x=0, y=0, xref="paper",
                           yref="paper", yshift=-30, showarrow=False, align="left",
                           xanchor="left", yanchor="top", font={"color": STATUS_COLOURS["red"], "size": 12}))
        fig.update_layout(height=fig.layout.height + 16 * (len(lines) - 1),
                          margin={"b": 58 + 16 * (len(lines) - 1)})
    return fig


def trend(df: pd.DataFrame, label: str, unit: str, currency: str, *, definition: str = "") -> go.Figure:
    """A KPI over recent periods (line) against its target (dashed line); the periods before the data starts (no
    value but 0 and no target) are left out, not drawn as 0.

    df: period (label, in order), value, target (both in `unit`; target may be missing).
    """
    title = f"{label}: trend"
    if not _empty(df):
        require_columns(df, ["period", "value", "target"], title)
        df = df[_from_first_data(_num(df["value"]), _num(df["target"]))]
    if _empty(df):
        return _no_data(title)
    periods, value, target = _labels(df["period"]), _num(df["value"]), _num(df["target"])
    periods = [p.replace("-", "<br>", 1) if len(p) > 7 else p for p in periods]  # 'FY2025<br>Q3': fits a phone
    defs = [_wrap(definition or label)] * len(df)
    cd, tmpl = _hover([periods, [f"{_esc(label)}: {v}" for v in _fmt(value, unit, currency)], defs])
    fig = _figure(title, 280, showlegend=True)
    fig.add_trace(_trace(go.Scatter, x=periods, y=value, mode="lines+markers", name="Actual",
                             line={"color": NEUTRAL, "width": 2.5}, marker={"size": 7},
                             customdata=cd, hovertemplate=tmpl))
    if np.isfinite(target).any():
        cd, tmpl = _hover([periods, [f"Target: {t}" for t in _fmt(target, unit, currency)], defs])
        fig.add_trace(_trace(go.Scatter, x=periods, y=target, mode="lines", name="Target",
                                 line={"color": INK, "width": 1.5, "dash": "dash"},
                                 customdata=cd, hovertemplate=tmpl))
    _category_axis(fig, len(periods))
    fig.update_xaxes(nticks=5)  # 13 weeks or 12 months: every third label, so that they fit a phone
    fig.update_yaxes(**_value_axis(unit, currency))
    return fig


def _from_first_data(value: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mask of the periods from the first one with a value other than 0 or a target on (the data's start)."""
    has = (np.nan_to_num(value) != 0) | np.isfinite(target)
    return np.cumsum(has) > 0


def ranked_team(df: pd.DataFrame, label: str, unit: str, currency: str, *, definition: str = "") -> go.Figure:
    """Direct reports ranked on one KPI: bars of attainment coloured by status (or of value when no target is set).

    df: name, value, target (in `unit`), attainment (share, 1.0 = on target), status (green/amber/red/none).
    """
    if _empty(df):
        return _no_data(f"{label}: team")
    require_columns(df, ["name", "value", "target", "attainment", "status"], f"{label}: team")
    by_attainment = bool(np.isfinite(_num(df["attainment"])).any())
    key = "attainment" if by_attainment else "value"
    df = df.assign(_key=_num(df[key])).sort_values("_key", ascending=False, na_position="last", kind="stable")
    names = [_esc(s) for s in df["name"].tolist()]
    values, targets = _fmt(df["value"], unit, currency), _fmt(df["target"], unit, currency)
    defs = [_wrap(definition or label)] * len(df)
    if by_attainment:
        att = _num(df["attainment"]) * 100
        hover = [names, [f"Attainment: {a}" for a in _fmt(att, "pct", currency)],
                 [f"{_esc(label)}: {v} · target {t}" for v, t in zip(values, targets)], defs]
        text = [f"{v} / {t}" for v, t in zip(values, targets)]
        axis = {"ticksuffix": " %", "title": {"text": "attainment of target"}}
        return _hbars(f"{label}: team ranked by attainment", names, att, _status_colours(df["status"]), text,
                      hover, axis, 100.0)
    hover = [names, [f"{_esc(label)}: {v}" for v in values], ["No target set"] * len(df), defs]
    return _hbars(f"{label}: team ranked", names, _num(df["value"]), [NEUTRAL] * len(df), values, hover,
                  _value_axis(unit, currency), None)


def _tree_rows(nodes: pd.DataFrame) -> tuple[list[int], list[int], list[int | None]]:
    """Row order (depth-first), depth and parent row of each node; unknown parents and cycles make roots."""
    ids = nodes["node"].astype(str).tolist()
    position = {n: i for i, n in enumerate(ids)}
    parent = [None if pd.isna(p) else position.get(str(p)) for p in nodes["parent"].tolist()]
    parent = [None if p == i else p for i, p in enumerate(parent)]
    children: dict[int | None, list[int]] = {}
    for i, p in enumerate(parent):
        children.setdefault(p, []).append(i)
    order: list[int] = []
    depth = [0] * len(ids)
    seen: set[int] = set()

    def visit(root: int) -> None:
        stack = [(root, 0)]
        while stack:
            i, d = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            order.append(i)
            depth[i] = d
            stack.extend((c, d + 1) for c in reversed(children.get(i, [])))

    for root in children.get(None, []):
        visit(root)
    for i in range(len(ids)):  # nodes of a parent cycle: the first one met becomes a root
        if i not in seen:
            parent[i] = None
            visit(i)
    return order, depth, parent


# the plot width of a 390 px phone and 12 px text, for the tree's indent: its rows fit a phone (and so a desktop)
TREE_WIDTH_PX, CHAR_PX, MARKER_PX = 340.0, 7.0, 24.0
TREE_LABEL_CHARS = 32  # a driver's label is wrapped at this many characters


def _plain(text: str) -> str:
    """Label text as shown: tags dropped, entities counted as one character."""
    return _html.unescape(re.sub(r"<[^>]+>", "", text))


def _tree_right_edge(depth: np.ndarray, chars: list[int]) -> float:
    """The x-axis end that leaves room for the longest row's text right of its marker (indent 16-36 px per level on
    a phone, about 2.7 times that on a desktop)."""
    room = TREE_WIDTH_PX - MARKER_PX - np.asarray(chars, dtype="float64") * CHAR_PX
    deep = depth > 0
    per_level = float(np.min(room[deep] / depth[deep])) if deep.any() else 36.0
    per_level = min(max(per_level, 16.0), 36.0)
    return -0.25 + TREE_WIDTH_PX / per_level


def driver_tree(nodes: pd.DataFrame, currency: str, *, definition: str = DEFINITIONS["driver_tree"]) -> go.Figure:
    """The goal's driver tree as an indented tree: one node per row, 'need X · have Y', marker in status colour.

    nodes: node (id), parent (id of the parent node, missing for the goal), label, unit, required, actual,
    status (green/amber/red/none). Children are drawn in the order given.
    """
    title = "Driver tree: what it takes"
    if _empty(nodes):
        return _no_data(title)
    require_columns(nodes, ["node", "parent", "label", "unit", "required", "actual", "status"], title)
    order, depth, parent = _tree_rows(nodes)
    row = {i: r for r, i in enumerate(order)}
    x = np.array([depth[i] for i in order], dtype="float64")
    y = -np.arange(len(order), dtype="float64")
    labels = [_esc(s) for s in nodes["label"].tolist()]
    units = nodes["unit"].astype(str).tolist()
    need, have = _fmt(nodes["required"], units, currency), _fmt(nodes["actual"], units, currency)
    colours = _status_colours(nodes["status"])
    text = [f"<b>{'<br>'.join(textwrap.wrap(labels[i], TREE_LABEL_CHARS))}</b><br>need {need[i]} · have {have[i]}"
            for i in order]  # the label (wrapped), then need and have: short lines that fit a phone
    row_px = 14 * max(t.count("<br>") + 1 for t in text) + 12
    cd, tmpl = _hover([[labels[i] for i in order], [f"Need {need[i]} · have {have[i]}" for i in order],
                       [_wrap(definition)] * len(order)])
    fig = _figure(title, max(MIN_HEIGHT, 56 + row_px * len(order)), margin={"l": 8, "r": 8, "t": 36, "b": 8})
    _shapes(fig, *(dict(type="path", path=f"M {depth[p]},{-row[p] - 0.3} V {-row[i]} H {depth[i] - 0.12}",
                        line={"color": "#b0b0b0", "width": 1.2}) for i, p in enumerate(parent) if p is not None))
    fig.add_trace(_trace(go.Scatter, x=x, y=y, mode="markers+text", text=text, textposition="middle right",
                             marker={"size": 13, "color": [colours[i] for i in order],
                                     "line": {"color": "white", "width": 1.5}},
                             textfont={"size": 12, "color": INK}, cliponaxis=False,
                             customdata=cd, hovertemplate=tmpl))
    widest = [max(len(_plain(line)) for line in t.split("<br>")) for t in text]
    fig.update_xaxes(visible=False, range=[-0.25, _tree_right_edge(x, widest)])
    rows_shown = max(len(order), 7)  # a small tree keeps its rows close, leaving space below
    fig.update_yaxes(visible=False, range=[-(rows_shown - 1) - 0.6, 0.6])
    return fig


def leads_by_channel(df: pd.DataFrame, *, definition: str = DEFINITIONS["leads_by_channel"]) -> go.Figure:
    """Leads per channel as horizontal bars, most first, each with its leads and conversion rate in the value column
    right of the plot (channel names on the bars' axis never meet, at any width).

    df: channel, leads (count), conversion_rate (percent, 12.0 = 12 %; may be missing).
    """
    title = "Leads by channel"
    if _empty(df):
        return _no_data(title)
    require_columns(df, ["channel", "leads", "conversion_rate"], title)
    df = df.assign(_leads=_num(df["leads"])).sort_values("_leads", ascending=False, na_position="last",
                                                         kind="stable")
    channels, leads, rate = _labels(df["channel"]), _num(df["leads"]), _num(df["conversion_rate"])
    lead_text, rate_text = _fmt(leads, "count", ""), _fmt(rate, "pct", "")
    hover = [channels, [f"{t} leads" for t in lead_text], [f"Conversion {r}" for r in rate_text],
             [_wrap(definition)] * len(df)]
    text = [f"{t} leads · {r} conv." for t, r in zip(lead_text, rate_text)]
    return _hbars(title, channels, leads, [NEUTRAL] * len(channels), text, hover, {"title": {"text": "leads"}},
                  None)


def warm_up() -> None:
    """Load plotly's validators of every trace type the charts use (a live kernel does this before its request)."""
    fig = go.Figure([go.Bar(x=[1], y=[1]), go.Scatter(x=[1], y=[1]), go.Waterfall(x=["a"], y=[1]),
                     go.Funnel(x=[1], y=["a"]), go.Pie(values=[1]), go.Indicator(value=1)])
    fig.update_layout(_figure("warm-up", 100).layout)
    fig.to_html(full_html=False, include_plotlyjs=False, div_id="warm-up")


def pipeline_movement(df: pd.DataFrame, currency: str, *, title: str = "Pipeline movement") -> go.Figure:
    """How the open pipeline moved from a start to now (a horizontal waterfall, read top to bottom): the start and
    now as totals, each step between as a rise or a fall; steps that moved nothing are left out. Step names sit on
    the bars' axis, one per row, so they stay whole on a phone.

    df: step (label), value (currency, signed: a fall is negative), deals (count), definition (one line), in the
    waterfall's order, the first row the start and the last row now.
    """
    if _empty(df):
        return _no_data(title)
    require_columns(df, ["step", "value", "deals", "definition"], title)
    value = _num(df["value"])
    keep = np.r_[True, value[1:-1] != 0, True] if len(df) > 1 else np.array([True])
    df, value = df[keep], value[keep]
    labels = [_esc(s) for s in df["step"].tolist()]
    measure = ["absolute"] + ["relative"] * (len(df) - 2) + ["total"] if len(df) > 1 else ["absolute"]
    amounts = _fmt(np.abs(value), "currency", currency)
    text = [a if m != "relative" else ("+" if v > 0 else "−") + a for a, m, v in zip(amounts, measure, value)]
    deals = [f"{fmt_value(n, 'count', currency)} deal{'' if n == 1 else 's'}" for n in _num(df["deals"])]
    customdata, template = _hover([labels, text, deals, [_wrap(d) for d in df["definition"].tolist()]])
    column = max(len(_plain(t)) for t in text) * CHAR_PX + 12  # each step's amount in a column right of the plot
    fig = _figure(title, _bar_height(len(labels)), margin={"l": 8, "r": int(column), "t": 36, "b": 28})
    _annotate(fig, *(dict(x=1, xref="paper", y=label, yref="y", text=t, xanchor="left", xshift=8, showarrow=False,
                          font={"size": 12, "color": INK}) for label, t in zip(labels, text)))
    fig.add_trace(_trace(go.Waterfall,
        y=labels, x=np.nan_to_num(value), orientation="h", measure=measure, text=text, textposition="none",
        increasing={"marker": {"color": NEUTRAL_LIGHT}},
        decreasing={"marker": {"color": PALETTE[4]}}, totals={"marker": {"color": NEUTRAL}},
        connector={"line": {"color": "#b0b0b0", "width": 1, "dash": "dot"}},
        customdata=customdata, hovertemplate=template))
    levels = np.cumsum(np.where(np.array(measure) == "total", 0.0, np.nan_to_num(value)))
    top = _top(np.r_[levels, value[-1:]])
    fig.update_xaxes(range=[0, top * 1.04], **_value_axis("currency", currency))
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False, ticks="", ticklabelstandoff=4)
    return fig
