"""The live report's interactive panels (ipywidgets 8): drill-down, what-if, the deals behind a number, actions.

Only a live report (Voila, `Report.live`) builds them; batch and authoring keep static HTML. Each panel is a
container whose callbacks re-render an HTML widget (tables from `spm_lib.report.markup`, no JavaScript). A panel
does its data work on first use, never when it is built, so that opening a report stays fast. A drill-down checks on
every call that the asked owner is in the viewer's subtree.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import ipywidgets as w
import pandas as pd
from IPython.display import HTML, display

from spm_lib.config import cached_config
from spm_lib.domain.org import org_of
from spm_lib.domain.periods import CadenceWindows, FiscalCalendar
from spm_lib.engine.decomposition import KPI_INPUTS, MONTHS_PER_YEAR, what_if
from spm_lib.errors import KpiError, OrgError, SpmError, did_you_mean
from spm_lib.report import markup
from spm_lib.report.actions_view import actions_html
from spm_lib.report.core import Html, Report, esc
from spm_lib.state import actions

ROW_LIMIT = 100  # rows of a deals table shown at once (the count and total cover every deal)
ALL = "__all__"
NOTHING = ""  # a picker's "nothing picked yet" (a Dropdown shows no label at all for the value None)
REFUSED = "You can open the reports of your own team only."


@dataclass
class Live(Html):
    """A section of a live report: its static HTML, then its widget (`str()` is the static HTML alone)."""

    widget: Any = None
    show_body: bool = True

    def _ipython_display_(self) -> None:
        if self.show_body:
            display(HTML(self.body))
        display(self.widget)


def _message(kind: str, text: str) -> str:
    """A one-line message in a panel: error (boxed in red), success (a green mark) or info (muted)."""
    if kind == "error":
        return markup.Html(f'<p class="spm-error" role="alert">{esc(text)}</p>')
    if kind == "success":
        return markup.Html(f'<p>{markup.badge("green", "saved")} {esc(text)}</p>')
    return markup.Html(f'<p class="spm-muted">{esc(text)}</p>')


def _windows(rpt: Report) -> CadenceWindows:
    """The periods of the report's run (closed, forward, remaining part, months remaining)."""
    return FiscalCalendar.from_config(cached_config()).windows(rpt.cadence, rpt.as_of)


# ---------------------------------------------------------------- who may be drilled into
_SUBTREES: dict[tuple[int, str], frozenset[str]] = {}


def viewer_subtree(rpt: Report) -> frozenset[str]:
    """The owners the report's viewer may open: themselves and everyone below them (empty without a viewer)."""
    key = (id(rpt.cube), str(rpt.viewer_id))
    if key not in _SUBTREES:
        try:
            below = frozenset(org_of(rpt.cube.owners).subtree(str(rpt.viewer_id))) if rpt.viewer_id \
                else frozenset()
        except OrgError:  # the viewer is not (or no longer) an owner
            below = frozenset()
        _SUBTREES.clear()
        _SUBTREES[key] = below
    return _SUBTREES[key]


# ---------------------------------------------------------------- 5. where to focus: drill into a direct report
def drill_html(rpt: Report, target_id: str) -> str:
    """A direct report's above-the-line KPIs, findings and trust checks, or a refusal outside the viewer's subtree."""
    if str(target_id) not in viewer_subtree(rpt):
        return _message("error", REFUSED)
    sub = Report(rpt.cube, str(target_id), rpt.run_dir, viewer_id=rpt.viewer_id)
    words = "".join(f"<li>{esc(s)}</li>" for s in sub.findings()) or "<li>No finding stands out.</li>"
    return markup.Html(f"<h4>{esc(sub.name)}: the KPIs of a {esc(sub.level)} {esc(sub.cadence)} session</h4>"
                     f"{sub.kpi_table(sub.kpi_rows(sub.above_the_line_ids()))}"
                     f'<ul class="spm-findings">{words}</ul>{trust_findings_html(sub)}')


def trust_findings_html(sub: Report, limit: int = 10) -> str:
    """The checks that warn or fail in an owner's scope and the largest deals to fix (all pass: says so)."""
    t = sub.cube.trust[(sub.cube.trust["owner_id"] == sub.owner_id) & sub.cube.trust["status"].isin(["warn", "fail"])]
    head = f"<h4>Trust: {markup.badge(markup.TRUST_BADGE[sub.trust_status()], sub.trust_status())}</h4>"
    if t.empty:
        return markup.Html(head + _message("success", "Every trust check passes."))
    checks = markup.table_html(t, {"label": "Check", "status": "Status", "count": "Deals", "amount": "Value of deals"},
                             {"status": lambda s: markup.badge(markup.TRUST_BADGE.get(str(s), "none"), str(s)),
                              "count": lambda v: markup.fmt_value(v, "count"),
                              "amount": lambda v: markup.fmt_value(v, "currency", sub.currency)})
    off = sub.offenders(limit)
    return markup.Html(f"{head}{checks}<h4>Largest deals to fix</h4>{sub.offender_table(off)}")


class DrillDown(w.VBox):
    """Pick a direct report, see their KPIs and trust findings."""

    def __init__(self, rpt: Report) -> None:
        self.rpt = rpt
        options = [("Pick a direct report…", NOTHING)] + [
            (f"{r.name} ({r.owner_id})", str(r.owner_id)) for r in rpt.reports.itertuples()]
        self.picker = w.Dropdown(options=options, value=NOTHING, description="Drill into",
                                 layout=w.Layout(width="auto"), style={"description_width": "initial"})
        self.out = w.HTML()
        self.picker.observe(lambda ch: self.show(ch["new"]), "value")
        super().__init__([self.picker, self.out])

    def show(self, target_id: str) -> None:
        """Render `target_id`'s KPIs and trust findings (a refusal outside the viewer's subtree)."""
        self.out.value = str(drill_html(self.rpt, target_id)) if target_id else ""


def drill_down(rpt: Report) -> DrillDown:
    """The drill-down panel of 'where to focus'."""
    return DrillDown(rpt)


# ---------------------------------------------------------------- 7. below the line: the deals behind a number
@dataclass(frozen=True)
class Number:
    """A KPI whose value is made of deals: which deals, dated by which column, summed or counted."""

    kpi: str
    label: str
    date_col: str
    pick: Callable[[pd.DataFrame], pd.Series]
    forward: bool = False  # the periods are the rest of the forward period and its close months


def _flag(s: pd.Series) -> pd.Series:
    return s.astype("boolean").fillna(False).astype(bool)


NUMBERS = {n.kpi: n for n in (
    Number("bookings", "Bookings (deals won)", "close_date", lambda f: _flag(f["is_won"])),
    Number("deals_won", "Deals won", "close_date", lambda f: _flag(f["is_won"])),
    Number("deals_lost", "Deals lost", "close_date", lambda f: _flag(f["is_closed"]) & ~_flag(f["is_won"])),
    Number("opps_created", "Opportunities created", "created_date", lambda f: pd.Series(True, index=f.index)),
    Number("pipeline_open_value", "Open pipeline (by close date)", "close_date", lambda f: ~_flag(f["is_closed"]),
           forward=True),
)}
SORTS = {"amount": "Amount", "close_date": "Close date", "created_date": "Created", "stage": "Stage",
         "owner": "Owner", "name": "Name"}
UNSET_STAGE = "(not set)"  # how the cube names deals without a stage


def period_options(rpt: Report, kpi: str) -> list[tuple[str, str]]:
    """The periods a number can be opened for: its trend periods, or the rest of the forward period by month."""
    if NUMBERS[kpi].forward:
        months = rpt.breakdown("pipeline_open_value", "close_month", rpt.forward)["dim_value"]
        return [(f"Rest of {rpt.forward}", ALL)] + [(str(m), str(m)) for m in sorted(months.astype(str))]
    return [(p, p) for p in reversed(rpt.trend_rows(kpi)["period"].astype(str).tolist())]


def _window(rpt: Report, kpi: str, period: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last day a number's deals are dated in, for `period` (forward numbers: within the rest of Q)."""
    win = _windows(rpt)
    start, end = pd.Timestamp(win.remaining.start), pd.Timestamp(win.remaining.end)
    if period == ALL:
        return start, end
    p = FiscalCalendar.from_config(cached_config()).parse(period)
    if not NUMBERS[kpi].forward:
        return pd.Timestamp(p.start), pd.Timestamp(p.end)
    return max(start, pd.Timestamp(p.start)), min(end, pd.Timestamp(p.end))


def deals_behind(rpt: Report, kpi: str, period: str, stage: str = ALL) -> pd.DataFrame:
    """The deals in the report owner's scope that make up `kpi` in `period` (optionally at one stage)."""
    if kpi not in NUMBERS:
        raise KpiError(f"no deals stand behind KPI {kpi!r}{did_you_mean(kpi, NUMBERS)}; "
                       f"pick one of {', '.join(NUMBERS)}")
    n = NUMBERS[kpi]
    f = rpt.scope_facts()
    start, end = _window(rpt, kpi, period)
    when = f[n.date_col]
    keep = n.pick(f) & (when >= start) & (when < end + pd.Timedelta(days=1))  # whole days, times included
    if stage != ALL:
        keep &= f["stage"].astype("string").fillna(UNSET_STAGE) == stage
    return f[keep.to_numpy()]


def deals_html(rpt: Report, deals: pd.DataFrame, sort_by: str = "amount", ascending: bool = False,
               limit: int = ROW_LIMIT) -> str:
    """A deals table sorted by `sort_by`, with the count and total of every deal above it."""
    names = rpt.cube.owners.set_index("owner_id")["name"]
    df = deals.assign(owner=deals["owner_id"].map(names).fillna(deals["owner_id"]))
    df = df.sort_values([sort_by, "opportunity_id"], ascending=[ascending, True], na_position="last")
    shown = f"the first {limit} in this order" if len(df) > limit else "all shown"
    head = (f'<p><b>{len(df)}</b> deals, total '
            f'<b>{esc(markup.fmt_value(df["amount"].sum(), "currency", rpt.currency))}</b> ({shown}).</p>')
    cols = {"opportunity_id": "Id", "name": "Opportunity", "owner": "Owner", "account_id": "Account",
            "stage": "Stage", "amount": "Amount", "created_date": "Created", "close_date": "Close date"}
    cols = {c: h for c, h in cols.items() if c in df}

    def day(d: Any) -> str:
        return str(pd.Timestamp(d).date())

    table = markup.table_html(df.head(limit), cols, {
        "opportunity_id": rpt.deal_link, "amount": lambda v: markup.fmt_value(v, "currency", rpt.currency),
        "created_date": day, "close_date": day},
        empty_text="No deal behind this number.")
    return markup.Html(head + table)


class DealsBehind(w.VBox):
    """Pick a number (KPI), a period and a stage: the deals behind it, sortable."""

    def __init__(self, rpt: Report) -> None:
        self.rpt = rpt
        kw: dict[str, Any] = {"style": {"description_width": "initial"}}
        self.kpi = w.Dropdown(options=[("Pick a number…", NOTHING)] + [(n.label, k) for k, n in NUMBERS.items()],
                              value=NOTHING, description="Deals behind", **kw)
        self.period = w.Dropdown(options=[], description="Period", **kw)
        stages = self.rpt.cube.probabilities.sort_values("stage_index")["stage"].astype(str).tolist()
        self.stage = w.Dropdown(options=[("All stages", ALL)] + [(s, s) for s in stages], value=ALL,
                                description="Stage", **kw)
        self.sort_by = w.Dropdown(options=[(lab, c) for c, lab in SORTS.items()], value="amount",
                                  description="Sort by", **kw)
        self.ascending = w.ToggleButton(value=False, description="Ascending", icon="sort-amount-asc")
        self.out = w.HTML()
        self._holding = False
        self.kpi.observe(self._kpi_changed, "value")
        for c in (self.period, self.stage, self.sort_by, self.ascending):
            c.observe(lambda _ch: self.render(), "value")
        super().__init__([w.HTML("<h4>The deals behind a number</h4>"), w.HBox([self.kpi, self.period, self.stage]),
                          w.HBox([self.sort_by, self.ascending]), self.out])

    def _kpi_changed(self, change: dict[str, Any]) -> None:
        self._holding = True  # one render for the new number, not one per option change
        try:
            opts = period_options(self.rpt, change["new"]) if change["new"] else []
            self.period.options = opts
            self.period.value = next((v for _, v in opts if v == self.rpt.closed), opts[0][1] if opts else None)
        finally:
            self._holding = False
        self.render()

    def render(self) -> None:
        """Re-render the table for the picked number, period, stage and order."""
        if self._holding:
            return
        if not self.kpi.value or self.period.value is None:
            self.out.value = ""
            return
        deals = deals_behind(self.rpt, self.kpi.value, self.period.value, self.stage.value)
        self.out.value = str(deals_html(self.rpt, deals, self.sort_by.value, bool(self.ascending.value)))


def deals_behind_panel(rpt: Report) -> DealsBehind:
    """The 'deals behind a number' panel of 'below the line'."""
    return DealsBehind(rpt)


# ---------------------------------------------------------------- 4. forward look and goal decomposition: what-if
LEVERS = {  # what_if argument -> (KPI id of the actual value, slider label)
    "win_rate": ("win_rate", "Win rate (%)"),
    "avg_deal_size": ("avg_deal_size", "Average deal size"),
    "sales_cycle_days": ("sales_cycle_days", "Sales cycle (days)"),
    "lead_conversion": ("lead_conversion_rate", "Lead conversion (%)"),
}
WHAT_IF_NODES = ["bookings_target", "remaining_target", "deals_needed", "deals_per_month", "opps_per_month",
                 "leads_per_month", "opp_creation_deadline"]


def tree_inputs(rpt: Report) -> dict[str, Any]:
    """The inputs of the owner's driver tree, rebuilt from the run (what decomposition.tree_inputs computed)."""
    tree = rpt.cube.decomposition
    tree = tree[tree["owner_id"] == rpt.owner_id].set_index("node")
    win = _windows(rpt)
    inp: dict[str, Any] = {"owner_id": rpt.owner_id, "period": rpt.forward, "as_of": pd.Timestamp(rpt.as_of),
                           "q_end": pd.Timestamp(str(rpt.cube.meta["forward_end"])),
                           "months_remaining": float(win.months_remaining)}
    for col, (kpi, role) in KPI_INPUTS.items():
        r = rpt.kpi(kpi, "TTM" if role == "ttm" else rpt.forward)
        inp[col] = float("nan") if r is None else float(r["value"])
        inp[f"na_{col}"] = None if r is None or pd.isna(r["na_reason"]) else str(r["na_reason"])
    q = rpt.kpi("bookings_to_date_q", rpt.forward)
    inp["target"] = float("nan") if q is None else float(q["target"])
    actual: dict[Any, float] = tree["actual"].astype("float64").to_dict()
    inp["deals_won_to_date"] = actual.get("deals_needed", 0.0)
    return inp


def expected_result(inp: dict[str, Any], win_rate: float, avg_deal_size: float) -> float:
    """Bookings expected for Q at the current pace of opportunity creation: to date + new deals × deal size."""
    opps_per_month = inp["opps_created_ttm"] / MONTHS_PER_YEAR
    new_deals = opps_per_month * inp["months_remaining"] * win_rate / 100
    return float(inp["bookings_to_date"] if pd.notna(inp["bookings_to_date"]) else 0.0) + new_deals * avg_deal_size


def _deadline(day: Any, days_left: Any) -> str:
    """When opportunities must be created by to close in Q: 'by D (n days left)' or 'passed on D (n days ago)'."""
    if pd.isna(days_left):
        return "—"
    when = pd.Timestamp(day).date()
    if days_left < 0:
        return f"passed on {when} ({markup.fmt_value(-days_left, 'days')} before the as-of day)"
    return f"by {when} ({markup.fmt_value(days_left, 'days')} left)"


def what_if_html(rpt: Report, inp: dict[str, Any], **levers: float | None) -> str:
    """The driver tree and the expected result against target, recomputed with some rates replaced."""
    tree = what_if(inp, **levers, bands=cached_config().kpis.status).set_index("node").loc[WHAT_IF_NODES]
    used = {k: (v if v is not None else inp[k]) for k, v in levers.items()}
    rows = []
    for node, r in tree.iterrows():
        if node == "opp_creation_deadline":
            need = _deadline(r["deadline"], r["required"])
        else:
            need = markup.fmt_value(r["required"], str(r["unit"]), rpt.currency)
        rows.append({"label": r["label"], "need": need if pd.notna(r["required"]) else esc(r["na_reason"]),
                     "actual": markup.fmt_value(r["actual"], str(r["unit"]), rpt.currency)})
    table = markup.table_html(pd.DataFrame(rows), {"label": "Driver", "need": "Needed", "actual": "Actual"},
                            {"need": markup.Html})
    target = inp["target"]
    win, size = used.get("win_rate", inp["win_rate"]), used.get("avg_deal_size", inp["avg_deal_size"])
    expected = expected_result(inp, float(win or float("nan")), float(size or float("nan")))
    if pd.isna(target) or target <= 0 or pd.isna(expected):
        line = "The expected result cannot be set against a target: " + (
            "a rate has no history" if pd.notna(target) and target > 0 else f"no bookings target for {rpt.forward}")
        verdict = _message("info", line)
    else:
        gap = target - expected
        word = "short of" if gap > 0 else "ahead of"
        pace = markup.fmt_value(inp["opps_created_ttm"] / MONTHS_PER_YEAR, "count")
        verdict = (f'<p>At the current pace of {esc(pace)} opportunities created a month, '
                   f"expected result for {esc(rpt.forward)}: "
                   f"<b>{esc(markup.fmt_value(expected, 'currency', rpt.currency))}</b> against a target of "
                   f"<b>{esc(markup.fmt_value(target, 'currency', rpt.currency))}</b> "
                   f"({esc(markup.fmt_value(expected / target * 100, 'pct'))}): "
                   f"{esc(markup.fmt_value(abs(gap), 'currency', rpt.currency))} {word} target.</p>")
    return markup.Html(verdict + table)


class WhatIf(w.VBox):
    """Sliders for win rate, deal size, sales cycle and lead conversion, starting at the owner's actual values."""

    def __init__(self, rpt: Report) -> None:
        self.rpt = rpt
        self._inp: dict[str, Any] | None = None
        self.sliders: dict[str, w.FloatSlider | w.IntSlider] = {}
        for lever, (kpi, label) in LEVERS.items():
            actual = rpt.value(kpi, "TTM")
            self.sliders[lever] = _slider(lever, actual, label)
        self.out = w.HTML(_message("info", "Move a slider: the driver tree and the expected result are "
                                           "recomputed at once."))
        for s in self.sliders.values():
            s.observe(lambda _ch: self.render(), "value")
        super().__init__([w.HTML("<h4>What if</h4>"), *self.sliders.values(), self.out])

    def levers(self) -> dict[str, float | None]:
        """The slider values passed to what_if (None for a rate without history: its reason stays)."""
        return {k: None if s.disabled else float(s.value) for k, s in self.sliders.items()}

    def render(self) -> None:
        """Recompute the tree and the expected result from the sliders."""
        if self._inp is None:
            self._inp = tree_inputs(self.rpt)
        self.out.value = str(what_if_html(self.rpt, self._inp, **self.levers()))


def _slider(lever: str, actual: float, label: str) -> w.FloatSlider | w.IntSlider:
    """A slider starting at the actual value, disabled (and at a neutral value) when there is no history."""
    kw: dict[str, Any] = {"description": label, "continuous_update": False,
                          "style": {"description_width": "12em"}, "layout": w.Layout(width="36em")}
    missing = pd.isna(actual)
    if lever == "sales_cycle_days":
        top = max(365, int(2 * actual) if not missing else 0)
        return w.IntSlider(value=90 if missing else int(round(actual)), min=1, max=top, disabled=missing, **kw)
    if lever == "avg_deal_size":
        base = 10000.0 if missing or actual <= 0 else float(actual)
        return w.FloatSlider(value=base, min=base / 4, max=base * 3, step=base / 100, readout_format=",.0f",
                             disabled=missing or actual <= 0, **kw)
    value = 20.0 if missing or actual <= 0 else float(actual)
    return w.FloatSlider(value=value, min=0.5, max=100.0, step=0.5, readout_format=".1f",
                         disabled=missing or actual <= 0, **kw)


def what_if_panel(rpt: Report) -> WhatIf:
    """The what-if panel of the forward look and the goal decomposition."""
    return WhatIf(rpt)


# ---------------------------------------------------------------- 6. decisions and actions: the register's form
class ActionForm(w.VBox):
    """Record an action (text, support asked, due date, KPI) and change the status of the owner's actions."""

    def __init__(self, rpt: Report) -> None:
        self.rpt = rpt
        self.key = self._new_key()
        self._last: dict[str, Any] | None = None  # what was recorded with `key`, until the form is edited again
        self._editing = True
        kw: dict[str, Any] = {"style": {"description_width": "12em"}, "layout": w.Layout(width="44em")}
        self.text = w.Textarea(description="Action", placeholder="What will be done", **kw)
        self.support = w.Text(description="Support asked", placeholder="optional: what the leader will do", **kw)
        self.due = w.DatePicker(description="Due date", style=kw["style"])
        ids = rpt.above_the_line_ids()
        self.kpi = w.Dropdown(options=[("—", NOTHING)] + [(rpt.kpi_meta.get(i).label, i) for i in ids],
                              value=NOTHING, description="KPI it should move", style=kw["style"])
        self.button = w.Button(description="Record", button_style="primary", icon="check")
        self.message = w.HTML()
        self.register = w.HTML()
        self.statuses = w.VBox()
        self._rows: dict[int, w.HBox] = {}
        self._narrow = w.Layout(width="9em")
        for c in (self.text, self.support, self.due, self.kpi):
            c.observe(self._edited, "value")
        self.button.on_click(self._record)
        self.refresh()
        super().__init__([self.register, w.HTML("<h4>Record an action</h4>"), self.text, self.support, self.due,
                          self.kpi, self.button, self.message, w.HTML("<h4>Change a status</h4>"), self.statuses])

    def _new_key(self) -> str:
        return f"{self.rpt.owner_id}:{uuid.uuid4().hex}"

    def _edited(self, _change: dict[str, Any]) -> None:
        if self._editing and self._last is not None:  # a new action starts: it gets a key of its own
            self._last, self.key = None, self._new_key()

    def values(self) -> dict[str, Any]:
        """What the form holds, as arguments of actions.record."""
        due: date | None = self.due.value
        return {"owner_id": self.rpt.owner_id, "text": self.text.value, "support_asked": self.support.value,
                "due_date": "" if due is None else due, "kpi": self.kpi.value, "cadence": self.rpt.cadence,
                "period": self.rpt.closed, "recorded_by": str(self.rpt.viewer_id or "")}

    def _record(self, _button: Any = None) -> None:
        args = self._last or self.values()  # a second click before any edit resubmits the same action
        try:
            act = actions.record(cached_config(), form_key=self.key, **args)
        except SpmError as e:
            self.message.value = _message("error", f"Not recorded: {e}")
            return
        except Exception as e:  # the register is unreachable: say so, never a traceback
            self.message.value = _message("error", f"Not recorded: the action register could not be written "
                                                   f"({type(e).__name__}); try again")
            return
        self._last = args
        self._editing = False
        try:
            self.text.value, self.support.value, self.due.value, self.kpi.value = "", "", None, NOTHING
        finally:
            self._editing = True
        self.message.value = _message("success", f"Recorded action #{act.action_id}: {act.text}")
        self.refresh()

    def refresh(self) -> None:
        """Re-read the register: the section's table and a status picker per action."""
        cfg = cached_config()
        self.register.value = str(actions_html(self.rpt))
        df = actions.for_report(cfg, self.rpt.owner_id, self.rpt.cadence, self.rpt.as_of)
        for r in df.to_dict(orient="records"):  # a row per action, built once (widgets are slow to make)
            aid = int(r["action_id"])
            if aid not in self._rows:
                pick = w.Dropdown(options=list(actions.STATUSES), value=str(r["status"]), layout=self._narrow)
                pick.observe(lambda ch, aid=aid: self.set_status(aid, ch["new"]), "value")
                self._rows[aid] = w.HBox([pick, w.HTML(f"{esc(r['text'])} <span class='spm-muted'>(due "
                                                       f"{pd.Timestamp(r['due_date']).date()})</span>")])
        shown = [self._rows[int(a)] for a in df["action_id"]]
        self.statuses.children = shown or [w.HTML('<p class="spm-muted">No action to update.</p>')]

    def set_status(self, action_id: int, status: str) -> None:
        """Mark an action open, done or dropped, as the viewer."""
        try:
            actions.set_status(cached_config(), action_id, status, str(self.rpt.viewer_id or ""))
        except SpmError as e:
            self.message.value = _message("error", f"Status not changed: {e}")
            return
        self.message.value = _message("success", f"Action #{action_id} is now {status}.")
        self.register.value = str(actions_html(self.rpt))


def action_form(rpt: Report) -> ActionForm:
    """The action register's form of 'decisions and actions'."""
    return ActionForm(rpt)
