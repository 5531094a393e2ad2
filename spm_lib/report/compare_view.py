"""The report's comparisons (above the line: each KPI against the previous period, last year and the year to date),
the direct reports' rank movement, and the pipeline movement since the last session (forward look). Numbers come
from the cube (engine.comparisons, engine.movement); this module only formats them."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from markupsafe import Markup, escape

from spm_lib.engine.comparisons import comparison_rows, rank_movement
from spm_lib.engine.movement import STEPS
from spm_lib.report import charts, markup

__all__ = ["STEP_LABELS", "change_html", "comparisons_html", "movement_html", "movement_rows", "rank_html",
           "with_rank"]

STEP_LABELS = {"start": "Start", "created": "Created", "pulled_in": "Pulled in", "amount_up": "Amount up",
               "amount_down": "Amount down", "pushed_out": "Pushed out", "won": "Won", "lost": "Lost", "now": "Now"}


def change_html(change: float, unit: str, direction: str) -> str:
    """A change as an arrow and a number ('▲ 12 %' relative, '▼ 3.1 pts' for a percentage KPI), green when it is
    better for the KPI's direction, red when worse; '—' when unknown."""
    if change is None or (isinstance(change, float) and math.isnan(change)):
        return markup.MISSING
    size = abs(change) if unit == "pct" else abs(change) * 100
    text = f"{size:.1f} pts" if unit == "pct" else markup.fmt_value(size, "pct", "")
    if round(size, 1) == 0:
        return str(escape(f"= {text}"))
    up = change > 0
    better = up == (direction != "lower")
    colour = markup.STATUS_COLOURS["green" if better else "red"]
    word = "better" if better else "worse"
    return (f'<span style="color:{colour}" title="{word}">{"▲" if up else "▼"}&nbsp;{escape(text)}</span>')


def comparisons_html(rpt: Any) -> str:
    """Each above-the-line KPI of the closed period against the previous period, the same period last year and
    the year to date (with its attainment), with the change; forward-looking KPIs are left to the forward look."""
    meta: dict[str, Any] = rpt.cube.meta.get("comparisons") or {}
    if not meta:
        return '<p class="spm-muted">Comparisons: not in this run (computed before they were added).</p>'
    ids = rpt.above_the_line_ids()
    units = {i: rpt.kpi_meta.get(i).unit for i in ids}
    df = comparison_rows(rpt.kpis, ids, rpt.closed, meta, units)
    if df.empty:
        return ""
    lines = []
    for r in df.to_dict("records"):
        kpi_id = str(r["kpi"])
        info = rpt.kpi_meta.get(kpi_id)
        v: dict[str, float] = {c: float(r[c]) for c in df.columns if c != "kpi"}

        def shown(key: str, change: str | None = None, *, kpi: str = kpi_id, info: Any = info,
                  v: dict[str, float] = v) -> str:
            text = str(escape(rpt.fmt(kpi, v[key])))
            return text if change is None else f"{text}<br>{change_html(v[change], info.unit, info.direction)}"

        ytd = shown("ytd")
        if not math.isnan(v["ytd_attainment"]) and info.unit != "pct":
            ytd += f"<br>{escape(markup.fmt_value(v['ytd_attainment'] * 100, 'pct', ''))} of target"
        lines.append({"label": Markup(f'<span title="{escape(info.definition)}">{escape(info.label)}</span>'),
                      "now": Markup(shown("now")), "previous": Markup(shown("previous", "change_previous")),
                      "last_year": Markup(shown("last_year", "change_last_year")), "ytd": Markup(ytd)})
    left = [rpt.kpi_meta.get(i).label for i in ids if i not in set(df["kpi"])]
    note = (f'<p class="spm-muted">{escape(", ".join(left))}: forward-looking, see the forward look.</p>'
            if left else "")
    columns = {"label": "KPI", "now": str(rpt.closed), "previous": f"Previous ({meta.get('previous', '')})",
               "last_year": f"Last year ({meta.get('last_year', '')})",
               "ytd": f"Year to date ({meta.get('ytd', '')})"}
    if meta.get("previous") == meta.get("last_year"):  # annual: the previous period is last year
        del columns["previous"]
    if rpt.cadence == "annual":  # the year closed is the year to date
        del columns["ytd"]
    table = markup.table_html(pd.DataFrame(lines), columns, dict.fromkeys(columns, Markup),
                              classes="spm-compare")
    names = {"previous": "the previous period", "last_year": "last year", "ytd": "the year to date"}
    kept = [names[c] for c in names if c in columns]
    return (f"<h4>Compared with {', '.join(kept[:-1]) + ' and ' if len(kept) > 1 else ''}{kept[-1]}</h4>"
            f'<p class="spm-muted">Arrows: {escape(rpt.closed)} against that period; green is better, red worse.</p>'
            f'<div class="spm-grid">{table}</div>{note}')


def with_rank(rpt: Any, b: pd.DataFrame) -> pd.DataFrame:
    """The direct reports' bookings rows `b` (Report.team_rows) with their rank now and in the previous period and
    the places moved, best first: ranked by attainment when a report has a target, else by bookings."""
    previous = (rpt.cube.meta.get("comparisons") or {}).get("previous")
    key = "attainment" if b["attainment"].notna().any() else "value"
    k = rpt.cube.kpis
    before = k[k["owner_id"].isin(b["owner_id"]) & (k["kpi"] == "bookings") & (k["period"] == previous)
               & k["dim"].isna()].set_index("owner_id")[key]
    if previous in set((rpt.cube.meta.get("comparisons") or {}).get("no_data") or []):
        before = before.iloc[0:0]
    moved = rank_movement(b.set_index("owner_id")[key].astype("float64"), before.astype("float64"))
    out = b.join(moved, on="owner_id")
    return out.sort_values(["rank", "name"], na_position="last", kind="stable")


def rank_html(rank: float, moved: float) -> str:
    """A rank with its move since the previous period: '2 ▲1', '3 ▼2', '1 =' or '4 new' (no rank before)."""
    if pd.isna(rank):
        return markup.MISSING
    if pd.isna(moved):
        return f'{int(rank)} <span class="spm-muted" title="no rank in the previous period">new</span>'
    if moved == 0:
        return f'{int(rank)} <span class="spm-muted" title="same place as the previous period">=</span>'
    colour = markup.STATUS_COLOURS["green" if moved > 0 else "red"]
    arrow = "▲" if moved > 0 else "▼"
    word = f"{'up' if moved > 0 else 'down'} {abs(int(moved))} since the previous period"
    return f'{int(rank)} <span style="color:{colour}" title="{word}">{arrow}{abs(int(moved))}</span>'


def movement_rows(rpt: Any) -> pd.DataFrame:
    """This owner's pipeline movement: step (label), value (signed), deals, definition, in waterfall order."""
    m = rpt.cube.movement
    mine = m[m["owner_id"] == rpt.owner_id].set_index("step").reindex(list(STEPS))
    return pd.DataFrame({"step": [STEP_LABELS[s] for s in STEPS], "value": mine["value"].to_numpy(dtype="float64"),
                         "deals": mine["deals"].to_numpy(dtype="float64"),
                         "definition": [d for _, d in STEPS.values()]})


def movement_html(rpt: Any) -> str:
    """The pipeline's movement since the start of the closed period: a waterfall and a small table, or why it cannot
    be shown (no opportunity history, or a run from before the movement was computed)."""
    info: dict[str, Any] = rpt.cube.meta.get("movement") or {}
    head = "<h4>How the pipeline moved since the last session</h4>"
    if not info:
        return head + '<p class="spm-muted">Not in this run (computed before the pipeline movement was added).</p>'
    if not info.get("available"):
        return head + (f'<p class="spm-muted">Cannot show how the pipeline moved: '
                       f'{escape(info.get("reason") or "not available")}.</p>')
    df = movement_rows(rpt)
    if df["value"].isna().all():
        return head + '<p class="spm-muted">No pipeline in this scope.</p>'
    span = (f"Open deals closing from {info['start_first']} to {info['last']} at the end of {info['from']}, "
            f"to those closing from {info['now_first']} to {info['last']} on {info['to']}.")
    fig = rpt._figure("movement", charts.pipeline_movement(df, rpt.currency, title="Pipeline movement"))
    ends = df["step"].isin([STEP_LABELS["start"], STEP_LABELS["now"]])
    shown = df.assign(value=[markup.fmt_value(v, "currency", rpt.currency) if end else _signed(v, rpt.currency)
                             for v, end in zip(df["value"], ends, strict=True)])
    table = markup.table_html(shown, {"step": "Step", "value": "Value", "deals": "Deals",
                                      "definition": "What it is"},
                              {"deals": lambda n: markup.fmt_value(n, "count", "")})
    return f'{head}<p class="spm-muted">{escape(span)}</p>{fig}<div class="spm-grid">{table}</div>'


def _signed(value: float, currency: str) -> str:
    """An amount with its sign ('+60k €', '−230k €'; 0 as '0 €')."""
    text = markup.fmt_value(abs(value), "currency", currency)
    return text if value == 0 else ("+" if value > 0 else "−") + text
