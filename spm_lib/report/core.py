"""The API report templates call: load one owner's slice of a run, then one call per agenda section (SPEC §8).

A template runs in three modes with the same cells: batch (papermill injects the parameters), live (Voila) and
authoring (Lab or nbval: defaults). Every section returns an object that displays itself as static HTML
(plotly figures as HTML with the report's single plotly.js bundle; CRM text escaped).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cached_property, partial
from pathlib import Path
from typing import Any, cast

import pandas as pd
from markupsafe import Markup, escape

from spm_lib.config import WeakStageRule, cached_config
from spm_lib.engine.cube import Cube, read_cube, read_cube_meta
from spm_lib.engine.findings import Scope, findings_config
from spm_lib.engine.findings import findings as rank_findings
from spm_lib.engine.forecast import stage_worth, weak_stage
from spm_lib.engine.priorities import bookings_shift, resource_needs, team_year
from spm_lib.engine.push import push_by_report, push_list, report_of
from spm_lib.engine.slices import owner_kpis, scope_positions
from spm_lib.engine.targets import session_status
from spm_lib.engine.trust import checks_with_status, owner_status, scope_offenders, worst_by_owner
from spm_lib.errors import OrgError, RunError, did_you_mean
from spm_lib.metrics import kpis as registry
from spm_lib.project import project_dir
from spm_lib.report import charts, compare_view, markup
from spm_lib.report.actions_view import actions_html
from spm_lib.report.markup import LEVEL_TITLES, TRUST_BADGE
from spm_lib.store.runfolder import has_cube, safe_name
from spm_lib.util.frames import isin

# What a session decides, per cadence and level (SPEC §2): at a glance, in the email and in each template's title
CADENCE_FOCUS: dict[str, dict[str, str]] = {
    "weekly": {
        "rep": "which of your deals to move this week and how much activity that takes",
        "manager": "which rep's deals to move this week and where the team's activity falls short",
        "director": "which team's deals to back this week",
        "executive": "which units' deals to back this week",
    },
    "monthly": {
        "rep": "which of your deals to push before the period ends, your activity level and mix, and the CRM data "
               "to fix",
        "manager": "activity level and focus per rep: whom to support, which deals to push with each rep, which "
                   "data each rep must fix",
        "director": "which teams need help to close the period, the largest deals to back, and the data the teams "
                    "must fix",
        "executive": "where the period is at risk across the units, the largest deals to back, and what to escalate",
    },
    "quarterly": {
        "rep": "your focus for next quarter: accounts, segments and products, and the pipeline to build for it",
        "manager": "coaching focus and pipeline support per rep, the team's segment and product priorities, and "
                   "next quarter's targets per rep",
        "director": "resources across teams (headcount, budget, support), segment, product and channel priorities, "
                    "and next quarter's targets per team",
        "executive": "strategic priorities across the units, budget and headcount shifts between them, and next "
                     "quarter's targets",
    },
    "annual": {
        "rep": "your target, territory and accounts for next year, and the pipeline and activity they require",
        "manager": "next year's target per rep, the team's shape (hires, territories) and what the target "
                   "requires of activity",
        "director": "next year's targets per team, headcount and budget across the teams, and the unit's structure",
        "executive": "next year's targets, the organisation's structure and hiring, and the budget between sales "
                     "and marketing",
    },
}
_CACHE: dict[Path, tuple[str, Cube]] = {}


def decides(level: str, cadence: str) -> str:
    """What a session of `level` and `cadence` decides (CADENCE_FOCUS; a level it does not name reads as a
    manager's)."""
    by_level = CADENCE_FOCUS.get(cadence, {})
    return by_level.get(level) or by_level.get("manager", "")


def esc(text: object) -> str:
    """`text` as HTML-escaped text."""
    return str(escape(str(text)))


def _trust_value(status: object, v: Any, na_reason: object, unit: object) -> str:
    """A trust check's value as the trust table shows it (its reason when it is not available)."""
    if status == "not_available":
        return esc(str(na_reason or "not available"))
    if pd.isna(v):
        return "—"
    return markup.trust_value_text(float(v), str(unit))


def _trust_badge(status: object) -> str:
    s = str(status)
    return markup.badge(TRUST_BADGE.get(s, "none"), s.replace("_", " "))


@dataclass
class Html:
    """A block of report HTML that Jupyter, nbconvert and Voila display as is."""

    body: str

    def _repr_html_(self) -> str:
        return self.body

    def __str__(self) -> str:
        return self.body


# ---------------------------------------------------------------- locating the run
def project_root() -> Path:
    """The project folder reports read their runs from."""
    return project_dir()


def latest_run(cadence: str, root: Path | None = None) -> Path:
    """The newest run folder of `cadence` that holds a cube."""
    base = (root or project_root()) / "runs" / cadence
    runs = sorted(p for p in base.glob("????-??-??") if has_cube(p)) if base.is_dir() else []
    if not runs:
        raise RunError(f"no {cadence} run in {base}: run `spm run --cadence {cadence}` (or `make demo`) first")
    return runs[-1]


def load_cube(run_dir: Path) -> Cube:
    """The cube of a run folder, read once per process and reloaded when the run was recomputed."""
    run_dir = run_dir.resolve()
    meta = read_cube_meta(run_dir)
    cached = _CACHE.get(run_dir)
    if cached and cached[0] == meta.get("run_id"):
        return cached[1]
    cube = read_cube(run_dir)
    _CACHE[run_dir] = (str(meta.get("run_id")), cube)
    return cube


def load(owner_id: str | None = None, cadence: str | None = None, as_of: str | date | None = None,
         run_dir: str | Path | None = None, *, level: str | None = None,
         default_cadence: str = "monthly") -> Report:
    """Open one owner's report: the given run (or the latest of the cadence) and owner (or the first of `level`).

    Templates call `spm_lib.notebook.load`, which opens a live report instead in a kernel of `spm serve`.
    """
    cadence = cadence or default_cadence
    if run_dir is not None:
        folder = Path(run_dir)
    elif as_of is not None:
        folder = project_root() / "runs" / cadence / str(as_of)
    else:
        folder = latest_run(cadence)

    if not has_cube(folder):
        raise RunError(f"{folder} holds no cube: run `spm run --cadence {cadence} --as-of {folder.name}` first")
    cube = load_cube(folder)
    owners = cube.owners
    if owner_id is None:
        pool = owners[owners["level"] == level] if level else owners[owners["manager_id"].isna()]
        if pool.empty:
            pool = owners
        owner_id = str(sorted(pool["owner_id"].astype(str))[0])
    known = set(owners["owner_id"].astype(str))
    if str(owner_id) not in known:
        raise OrgError(f"unknown owner id {owner_id!r} in {folder}{did_you_mean(str(owner_id), known)}")
    return Report(cube=cube, owner_id=str(owner_id), run_dir=folder)


# ---------------------------------------------------------------- the report
@dataclass(frozen=True)
class KpiInfo:
    """What a report shows about a KPI: label, unit, direction, kind and its one-line definition."""

    id: str
    label: str
    unit: str
    direction: str
    kind: str
    definition: str


class KpiMeta:
    """The KPI declarations of a run (stored in cube.json, so custom KPIs show with their labels too)."""

    def __init__(self, cube: Cube) -> None:
        stored: dict[str, dict[str, str]] = cube.meta.get("kpi_meta") or {}
        self._info = {i: KpiInfo(id=i, **m) for i, m in stored.items()}
        for k in registry.REGISTRY.values():
            self._info.setdefault(k.id, KpiInfo(k.id, k.label, k.unit, k.direction, k.kind, k.definition))

    def get(self, kpi_id: str) -> KpiInfo:
        """The KPI's info (a neutral one for an id the run does not declare)."""
        return self._info.get(kpi_id) or KpiInfo(kpi_id, kpi_id.replace("_", " ").capitalize(), "count",
                                                  "higher", "leading", "")

    def __contains__(self, kpi_id: object) -> bool:
        return kpi_id in self._info


class Report:
    """One owner's report of one run: each method is one section of the session agenda."""

    def __init__(self, cube: Cube, owner_id: str, run_dir: Path, *, viewer_id: str | None = None) -> None:
        self.cube = cube
        self.owner_id = owner_id
        self.run_dir = run_dir
        # live (Voila): the verified viewer of the page; None in batch and authoring, where sections stay static
        self.viewer_id = viewer_id
        self.live = viewer_id is not None
        o = cube.owners.set_index("owner_id")
        self.owner = o.loc[owner_id]
        self.name = str(self.owner.get("name") or owner_id)
        self.level = str(self.owner.get("level") or "")
        self.cadence = str(cube.meta["cadence"])
        self.as_of = str(cube.meta["as_of"])
        self.closed = str(cube.meta["closed_period"])
        self.forward = str(cube.meta["forward_period"])
        self.currency = str(cube.meta.get("currency", ""))
        self.kpis = owner_kpis(cube, owner_id)
        nodim = self.kpis[self.kpis["dim"].isna()]
        self._by_key = {(kp, pe): i for i, (kp, pe) in enumerate(zip(nodim["kpi"], nodim["period"]))}
        self._nodim = nodim
        self.reports = cube.owners[cube.owners["manager_id"] == owner_id].sort_values("owner_id")
        self.kpi_meta = KpiMeta(cube)
        self._figures: dict[str, object] = {}

    # ---- helpers
    def _id(self, section: str) -> str:
        return markup.div_id(self.owner_id, section)

    def kpi(self, kpi_id: str, period: str | None = None, owner_id: str | None = None) -> pd.Series | None:
        """The KPI row (no breakdown) of this owner (or `owner_id`) for `period` (default: the closed period)."""
        if owner_id is None or owner_id == self.owner_id:
            i = self._by_key.get((kpi_id, period or self.closed))
            return None if i is None else self._nodim.iloc[i]
        k = owner_kpis(self.cube, owner_id)
        rows = k[(k["kpi"] == kpi_id) & (k["period"] == (period or self.closed)) & k["dim"].isna()]
        return None if rows.empty else rows.iloc[0]

    def value(self, kpi_id: str, period: str | None = None) -> float:
        """The value of a KPI (NaN when absent)."""
        r = self.kpi(kpi_id, period)
        return float("nan") if r is None or pd.isna(r["value"]) else float(r["value"])

    def breakdown(self, kpi_id: str, dim: str, period: str | None = None) -> pd.DataFrame:
        """The KPI rows of one breakdown (dim) of this owner."""
        k = self.kpis
        return k[(k["kpi"] == kpi_id) & (k["dim"] == dim) & (k["period"] == (period or self.closed))]

    def fmt(self, kpi_id: str, value: object) -> str:
        """`value` of KPI `kpi_id` formatted for a reader, in the KPI's unit and the run's currency."""
        unit = self.kpi_meta.get(kpi_id).unit
        return markup.fmt_value(value, unit, self.currency)

    def scope_facts(self, owner_id: str | None = None) -> pd.DataFrame:
        """The as-of deals in this owner's (or `owner_id`'s) scope; this owner's taken from the cube once (a
        top owner's scope is every deal: at 938k deals one take costs about a second)."""
        who = owner_id or self.owner_id
        if who != self.owner_id:
            return self.cube.facts.iloc[scope_positions(self.cube, who)]
        if "_scope_facts" not in self.__dict__:
            self.__dict__["_scope_facts"] = self.cube.facts.iloc[scope_positions(self.cube, who)]
        return cast(pd.DataFrame, self.__dict__["_scope_facts"]).copy(deep=False)  # a caller's change stays its own

    @cached_property
    def deal_url(self) -> str | None:
        """The CRM's deal-page template (config/crm.yml `deal_url`); None when not set: deal ids stay text."""
        return cached_config().crm.deal_url

    def deal_link(self, opportunity_id: object, text: object = None) -> str:
        """A deal id (or `text`) as a link to the deal's CRM page; escaped text without `deal_url`."""
        return markup.deal_link(opportunity_id, self.deal_url, text)

    def linked_names(self, deals: pd.DataFrame) -> pd.Series:
        """The `name` column of `deals`, each name a link to its deal's CRM page when `deal_url` is set (a deal
        without a name shows its id); the names as they are otherwise."""
        if not self.deal_url:
            return deals["name"]
        return pd.Series([self.deal_link(i, i if markup.is_missing(n) else n)
                          for i, n in zip(deals["opportunity_id"], deals["name"], strict=True)],
                         index=deals.index, dtype=object)

    def _figure(self, key: str, fig: object) -> str:
        self._figures[key] = fig
        return markup.figure_html(fig, self._id(key))

    def show(self, fig: object, key: str = "custom") -> Html:
        """Display an analyst's own plotly figure so that it lands in the HTML report like the built-in charts."""
        n = sum(1 for k in self._figures if k.startswith(key))
        return Html(str(self._figure(key if n == 0 else f"{key}-{n + 1}", fig)))

    def figures(self) -> dict[str, object]:
        """The figures drawn so far (for the email's inline images)."""
        return dict(self._figures)

    def _panel(self, section: str, static: Html) -> Html:
        """What a section shows around its static HTML: nothing more here; LiveReport adds its interactive panel."""
        return static

    # ---- 1. header
    def header(self) -> Html:
        """Owner, level, cadence, periods, as-of and data freshness."""
        facts = self.cube.facts
        fresh = facts["last_modified_date"].max() if "last_modified_date" in facts else None
        fresh_txt = f"latest CRM change {pd.Timestamp(fresh).date()}" if fresh is not None and pd.notna(fresh) \
            else "CRM change dates not available"
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.cube.meta.get("notes", []))
        body = (f'<div class="spm-header"><h1>{esc(self.name)}</h1>'
                f'<p class="spm-sub">{esc(LEVEL_TITLES.get(self.level, self.level))} · '
                f'{esc(self.cadence)} session · closed period <b>{esc(self.closed)}</b> · '
                f'forward look <b>{esc(self.forward)}</b> · as of {esc(self.as_of)} · {esc(fresh_txt)}</p>'
                + (f'<ul class="spm-notes">{notes}</ul>' if notes else "") + "</div>")
        return Html(body + self.at_a_glance())

    # ---- 0. at a glance (under the header)
    def session_status(self) -> str:
        """green / amber / red / none: the closed period's attainment and the forward period's expected result
        against target, at best amber when the data fails a trust check (engine.targets.session_status)."""
        rows = [self.kpi("quota_attainment"), self.kpi("forecast_expected", self.forward)]
        return session_status([str(r["status"]) for r in rows if r is not None], self.trust_status())

    def at_a_glance(self) -> str:
        """One block that fits a phone screen: the session's status word, the three findings that matter most
        and what this session decides."""
        status = self.session_status()
        word = markup.SESSION_WORDS[status]
        why = " — the numbers are provisional until the data is fixed" if self.trust_status() == "fail" else ""
        found = "".join(f"<li>{esc(f)}</li>" for f in self.top_findings()) or "<li>No finding stands out.</li>"
        return (f'<div class="spm-glance spm-glance-{status}"><p class="spm-glance-word">{esc(word)}{esc(why)}</p>'
                f'<ul class="spm-findings">{found}</ul>'
                f'<p class="spm-agenda">This session decides: {esc(self.session_decides())}.</p></div>')

    def top_findings(self) -> list[str]:
        """The three findings that matter most: at a glance, and in the email."""
        return [str(f) for f in self.findings()[:3]]

    def session_decides(self) -> str:
        """What this session should decide for this level and cadence (at a glance, and in the email)."""
        return decides(self.level, self.cadence)

    # ---- 2. trust
    def trust_status(self) -> str:
        """The worst trust status of this owner's scope: fail, warn or pass; worked out once."""
        if "_trust_status" not in self.__dict__:
            self.__dict__["_trust_status"] = owner_status(self.cube.trust, self.owner_id)
        return str(self.__dict__["_trust_status"])

    def offenders(self, limit: int | None = None, statuses: tuple[str, ...] = ("warn", "fail")) -> pd.DataFrame:
        """Offending open deals in this owner's scope, one row per deal and check, largest first: those of the checks
        whose status in the scope is one of `statuses`."""
        rows = scope_offenders(self.cube.trust_rows, self.scope_facts(),
                               checks_with_status(self.cube.trust, self.owner_id, statuses))
        return rows if limit is None else rows.head(limit)

    def trust(self) -> Html:
        """The trust checks; a 'fix the data first' banner and the deals to fix when a check fails."""
        t = self.cube.trust[self.cube.trust["owner_id"] == self.owner_id].copy()
        status = self.trust_status()
        parts = []
        if status == "fail":
            failing = ", ".join(t.loc[t["status"] == "fail", "label"].astype(str))
            parts.append(markup.banner("error", "Fix the data first",
                                     f"These checks fail: {esc(failing)}. Correct the deals below in the CRM "
                                     "before deciding anything else."))
        elif status == "warn":
            parts.append(markup.banner("warning", "Check the data", "Some checks warn; review the deals below."))
        else:
            parts.append(markup.banner("success", "The numbers can be trusted", "Every trust check passes."))
        t["shown"] = [_trust_value(status, value, reason, unit) for status, value, reason, unit
                      in zip(t["status"], t["value"], t["na_reason"], t["unit"], strict=True)]
        checks = markup.table_html(
            t[["label", "status", "shown", "count", "amount", "definition"]],
            {"label": "Check", "status": "Status", "shown": "Value", "count": "Deals", "amount": "Value of deals",
             "definition": "What it means"},
            {"status": _trust_badge, "shown": Markup,
             "amount": lambda v: markup.fmt_value(v, "currency", self.currency),
             "count": lambda v: markup.fmt_value(v, "count", "")}, classes="spm-trust")
        # passing: the checks collapsed under the one line; otherwise the checks, the 5 largest deals, the rest
        # collapsed (managers and up: every deal in the CSV written beside the report)
        parts.append(markup.details("The checks", checks) if status == "pass" else checks)
        off = self.offenders()
        if not off.empty:
            deals = self.deals_to_fix(off)
            if not (self.level == "rep" or self.reports.empty):
                parts.append(f"<h4>By direct report</h4>{self._offenders_by_report(off)}")
            shown = min(5, len(deals))
            parts.append(f"<h4>The {shown} largest deal{'s' if shown != 1 else ''} to fix</h4>"
                         f"{self.offender_table(deals.head(5))}")
            if len(deals) > 5:
                parts.append(markup.details(f"The other {min(len(deals), 50) - 5} deals to fix",
                                            self.offender_table(deals.iloc[5:50])))
            if not self.reports.empty and not self.live:  # live: no file beside the page
                csv = f"{safe_name(self.owner_id)}.trust.csv"
                parts.append(f'<p class="spm-muted">Every deal to fix in your scope ({len(deals)}): '
                             f'<a href="{esc(csv)}">{esc(csv)}</a>.</p>')
        q = self.cube.quality
        if not q.empty:
            q = q[q["severity"] != "info"]
            if not q.empty:
                parts.append("<h4>Data quality of the load</h4>")
                parts.append(markup.table_html(
                    q[["table", "column", "severity", "count", "message"]],
                    {"table": "Table", "column": "Column", "severity": "Severity", "count": "Rows",
                     "message": "Problem"}, {}))
        return Html("".join(parts))

    def deals_to_fix(self, offenders: pd.DataFrame | None = None) -> pd.DataFrame:
        """The deals to fix of this owner's scope (of `offenders`, default all), one row per deal with what is wrong,
        largest first: the trust section lists them, the email its first five."""
        return self._dedupe(self.offenders() if offenders is None else offenders)

    @staticmethod
    def _dedupe(off: pd.DataFrame) -> pd.DataFrame:
        g = off.groupby("opportunity_id", sort=False)
        first = g.first().reset_index()
        first["detail"] = g["detail"].agg(lambda s: "; ".join(map(str, s))).to_numpy()
        return first

    def offender_table(self, off: pd.DataFrame) -> str:
        """HTML table of offending deals (`offenders` rows), one row per deal with what is wrong and its owner."""
        off = self._dedupe(off)
        names = self.cube.owners.set_index("owner_id")["name"]
        off = off.assign(owner=off["owner_id"].map(names).fillna(off["owner_id"]))
        return markup.table_html(
            off[["opportunity_id", "name", "owner", "stage", "amount", "close_date", "detail"]],
            {"opportunity_id": "Id", "name": "Opportunity", "owner": "Owner", "stage": "Stage", "amount": "Amount",
             "close_date": "Close date", "detail": "What is wrong"},
            {"opportunity_id": self.deal_link, "amount": lambda v: markup.fmt_value(v, "currency", self.currency),
             "close_date": lambda d: "—" if pd.isna(d) else str(pd.Timestamp(d).date())}, classes="spm-deals")

    def _offenders_by_report(self, off: pd.DataFrame) -> str:
        rows = []
        deal_ids = self.cube.facts["opportunity_id"].to_numpy()
        for r in self.reports.itertuples():
            mine = off[isin(off["opportunity_id"], deal_ids[scope_positions(self.cube, str(r.owner_id))])]
            d = mine.drop_duplicates("opportunity_id")  # one row per deal (a deal's amount is on each of its rows)
            rows.append({"name": r.name, "deals": len(d), "value": d["amount"].sum() if len(d) else 0.0})
        own = off[off["owner_id"] == self.owner_id]
        if not own.empty:
            d = own.drop_duplicates("opportunity_id")
            rows.append({"name": f"{self.name} (own deals)", "deals": len(d), "value": d["amount"].sum()})
        df = pd.DataFrame(rows).sort_values("value", ascending=False)
        return markup.table_html(df, {"name": "Direct report", "deals": "Deals to fix", "value": "Value"},
                               {"value": lambda v: markup.fmt_value(v, "currency", self.currency)})

    # ---- 3. above the line
    def above_the_line_ids(self) -> list[str]:
        """The KPIs this level × cadence decides on (config/kpis.yml above_the_line)."""
        atl: dict[str, dict[str, list[str]]] = self.cube.meta.get("above_the_line") or {}
        ids = atl.get(self.level, {}).get(self.cadence) or atl.get("default", {}).get(self.cadence) or [
            "bookings", "quota_attainment", "win_rate", "pipeline_coverage"]
        return [i for i in ids if i in self.kpi_meta]

    def kpi_rows(self, ids: list[str]) -> pd.DataFrame:
        """One row per KPI: value, target, attainment, status, unit and definition (closed or forward period)."""
        rows = []
        for i in ids:
            k = self.kpi_meta.get(i)
            r = self.kpi(i) if self.kpi(i) is not None else self.kpi(i, self.forward)
            rows.append({"kpi": i, "label": k.label, "unit": k.unit, "definition": k.definition, "kind": k.kind,
                         "value": r["value"] if r is not None else float("nan"),
                         "target": r["target"] if r is not None else float("nan"),
                         "attainment": r["attainment"] if r is not None else float("nan"),
                         "status": r["status"] if r is not None else "none",
                         "period": r["period"] if r is not None else "",
                         "na_reason": (r["na_reason"] if r is not None else "not in this run") or ""})
        return pd.DataFrame(rows)

    def above_the_line(self) -> Html:
        """The few KPIs this level × cadence decides on, with target, attainment, status and trend."""
        rows = self.kpi_rows(self.above_the_line_ids())
        table = self.kpi_table(rows)
        with_target = rows[rows["target"].notna() & rows["value"].notna() & ~rows["kpi"].isin(self._same_bar(rows))]
        chart = self._figure("attainment", charts.attainment_bullets(with_target, self.currency)) \
            if len(with_target) >= 2 else ""  # one bar says no more than the table
        trend = self._figure("trend", charts.trend(self.trend_rows("bookings"), "Bookings", "currency",
                                                   self.currency))
        compared = compare_view.comparisons_html(self)
        return Html(f'{self.provisional()}<div class="spm-grid">{table}</div>{compared}{chart}{trend}')

    @staticmethod
    def _same_bar(rows: pd.DataFrame) -> list[str]:
        """KPIs whose attainment bar repeats another row's: a KPI that is the attainment of its one input (quota
        attainment is bookings against their target) beside that input."""
        shown = set(rows["kpi"])
        return [i for i in shown if i in registry.REGISTRY and registry.REGISTRY[i].fixed_target is not None
                and set(registry.REGISTRY[i].inputs) & shown]

    def provisional(self) -> str:
        """A mark on each section whose numbers rest on data failing a trust check (empty when none fails)."""
        if self.trust_status() != "fail":
            return ""
        t = self.cube.trust
        failing = t.loc[(t["owner_id"] == self.owner_id) & (t["status"] == "fail"), "label"].astype(str).tolist()
        return (f'<p class="spm-provisional">Provisional: these numbers rest on data failing '
                f'{esc(", ".join(failing))}. Fix the data first (section 2).</p>')

    def kpi_table(self, rows: pd.DataFrame) -> str:
        """HTML table of KPI rows (`kpi_rows`): value, target, attainment and status badge."""
        rows = rows.copy()
        rows["shown"] = [self.fmt(str(r.kpi), r.value) if not (isinstance(r.value, float) and math.isnan(r.value))
                         else esc(r.na_reason or "—") for r in rows.itertuples()]
        rows["target_s"] = [self.fmt(str(r.kpi), r.target) for r in rows.itertuples()]
        rows["att"] = [markup.fmt_value(a * 100 if pd.notna(a) else a, "pct", "") for a in rows["attainment"]]
        rows["label_h"] = [f'<span title="{esc(d)}">{esc(lab)}</span>'
                           for lab, d in zip(rows["label"], rows["definition"], strict=True)]
        return markup.table_html(
            rows[["label_h", "kind", "period", "shown", "target_s", "att", "status"]],
            {"label_h": "KPI", "kind": "Kind", "period": "Period", "shown": "Value", "target_s": "Target",
             "att": "Attainment", "status": "Status"},
            {"status": lambda s: markup.badge(str(s), {"none": "no target"}.get(str(s), str(s))),
             "label_h": Markup, "shown": Markup}, classes="spm-kpis")

    def trend_rows(self, kpi_id: str) -> pd.DataFrame:
        """The trend of a KPI over the cadence's trend periods (value and target)."""
        k = self.kpis
        extra = (self.cube.meta.get("comparisons") or {}).get("extra") or []  # last year, beside the trend
        rows = k[(k["kpi"] == kpi_id) & k["dim"].isna() & ~k["period"].isin(["TTM", self.forward, *extra])
                 & ~k["period"].str.endswith("-YTD")]
        return rows[["period", "value", "target"]].sort_values("period").reset_index(drop=True)

    # ---- 4. forward look
    def forward_look(self) -> Html:
        """Forecast vs target, gap, coverage and required run-rate for the forward period."""
        ids = ["bookings_to_date_q", "pipeline_open_value", "weighted_pipeline", "forecast_expected",
               "gap_to_target", "pipeline_coverage", "required_run_rate"]
        rows = pd.DataFrame([self._forward_row(i) for i in ids] + self.forecast_rows())
        booked = self.value("bookings_to_date_q", self.forward)
        weighted = self.value("weighted_pipeline", self.forward)
        r = self.kpi("forecast_expected", self.forward)
        calibrated = self.forecast_method() == "calibrated"
        if calibrated and r is not None and pd.notna(r["value"]):  # the chart adds up to the expected result
            weighted = float(r["value"]) - (0.0 if math.isnan(booked) else booked)
        target = float(r["target"]) if r is not None and pd.notna(r["target"]) else None
        fig = self._figure("forecast", charts.forecast_vs_target(
            0.0 if math.isnan(booked) else booked, 0.0 if math.isnan(weighted) else weighted, target,
            self.forward, self.currency, calibrated=calibrated))
        by_stage = self.breakdown("pipeline_open_value", "stage", self.forward)
        order = {s: i for i, s in enumerate(self.cube.probabilities.sort_values("stage_index")["stage"])}
        stage_df = by_stage.assign(stage=by_stage["dim_value"], count=float("nan"),
                                   _o=by_stage["dim_value"].map(order).fillna(99)).sort_values("_o")
        open_deals = self.scope_facts()
        open_deals = open_deals[~open_deals["is_closed"].fillna(False).astype(bool)]
        month_df = charts.close_month_span(open_deals["close_date"], open_deals["amount"], self.as_of)
        stage_fig = self._figure("pipeline-stage", charts.pipeline_by_stage(stage_df[["stage", "value", "count"]],
                                                                            self.currency)) \
            if len(stage_df) >= 2 else ""  # one stage: a single bar says no more than the forward-look table
        month_fig = self._figure("pipeline-month", charts.pipeline_by_close_month(month_df[["month", "value"]],
                                                                                 self.currency))
        table = markup.table_html(rows, {"label": "Forward look", "value": "Value", "definition": "Definition"},
                                {"value": Markup})
        moved = compare_view.movement_html(self)
        return self._panel("forward_look", Html(f"{self.provisional()}{table}{fig}{moved}{stage_fig}{month_fig}"))

    def forecast_method(self) -> str:
        """How the run forecast (\"calibrated\" or \"stage weighting\"; \"stage weighting\" for a run from before)."""
        return str(self.cube.meta.get("forecast", {}).get("method", "stage weighting"))

    def forecast_rows(self) -> list[dict[str, str]]:
        """The forecast's range, its method and its track record for this owner, as forward-look rows."""
        info = self.cube.meta.get("forecast", {})
        rng = self.breakdown("forecast_expected", "range", self.forward).set_index("dim_value")["value"]
        out = []
        if {"P10", "P90"} <= set(rng.index):
            shown = f"{self.fmt('forecast_expected', rng['P10'])} – {self.fmt('forecast_expected', rng['P90'])}"
            out.append({"label": "Forecast range (P10–P90)", "value": esc(shown),
                        "definition": "At least 8 times in 10 the result lands in this range: each open deal won or "
                                      "not, the deals not created yet, and the error all deals share."})
        method = self.forecast_method()
        why = str(info.get("reason", "a run from before the calibrated forecast"))
        out.append({"label": "Forecast method",
                    "value": esc("Calibrated on the company's history" if method == "calibrated"
                                 else "Stage weighting only"), "definition": esc(why)})
        record = info.get("track_record", {}).get(self.owner_id)
        if record and record.get("mdape") is not None:
            bias = record.get("bias") or 0.0
            value = (f"Off by {record['mdape']:.0f} % (median), bias {bias:+.0f} %, over {record['periods']} "
                     f"past periods")
            note = (f"The same forecast replayed at the middle of each past period with only the data known "
                    f"then (spm backtest, {info.get('backtest')}), against what was booked.")
        else:
            value = "Not measured yet"
            note = (f"Run spm backtest --cadence {info.get('cadence', 'quarterly')} to replay this forecast on "
                    "past periods.")
        out.append({"label": "Forecast track record", "value": esc(value), "definition": esc(note)})
        return out

    def _forward_row(self, kpi_id: str) -> dict[str, str]:
        k = self.kpi_meta.get(kpi_id)
        r = self.kpi(kpi_id, self.forward)
        if r is None or pd.isna(r["value"]):
            reason = (r["na_reason"] if r is not None else None) or "—"
            shown = esc(str(reason))
        elif kpi_id == "gap_to_target":  # the sign in words: "926k € ahead of target", never "−926k €"
            gap = float(r["value"])
            shown = esc(f"{self.fmt(kpi_id, abs(gap))} {'short of' if gap > 0 else 'ahead of'} target")
        else:
            shown = esc(self.fmt(kpi_id, r["value"]))
        return {"label": k.label, "value": shown, "definition": k.definition}

    # ---- 5. where to focus
    def findings(self) -> list[str]:
        """The findings in words, the most money at stake first: the rules of this level (engine.findings,
        config/findings.yml) naming people, deals, stages and breakdowns; worked out once."""
        if "_findings" not in self.__dict__:
            cfg = findings_config(self.cube.meta)
            scope = Scope(self.cube, self.owner_id, self.scope_facts(),
                          partial(markup.fmt_value, unit="currency", currency=self.currency), self.weak_stage())
            self.__dict__["_findings"] = [f.text for f in rank_findings(scope, cfg)][:cfg.shown]
        return list(self.__dict__["_findings"])

    def weak_stage(self) -> dict[str, object] | None:
        """The stage converting worst against the manager's team (or the org for the top); worked out once."""
        if "_weak_stage" not in self.__dict__:
            self.__dict__["_weak_stage"] = self._weak_stage()
        return cast("dict[str, object] | None", self.__dict__["_weak_stage"])

    def _weak_stage(self) -> dict[str, object] | None:
        manager = self.owner.get("manager_id")
        bench = str(manager) if isinstance(manager, str) and manager else None
        if bench is None:
            return None
        both = pd.concat([owner_kpis(self.cube, self.owner_id), owner_kpis(self.cube, bench)])
        rule = WeakStageRule(**self.cube.meta.get("weak_stage_rule", {}))
        theirs = self.kpi("avg_deal_size", "TTM", owner_id=bench)  # the team's deal size when the owner has none
        sizes = (self.value("avg_deal_size", "TTM"), math.nan if theirs is None else float(theirs["value"]))
        size = next((v for v in sizes if math.isfinite(v)), math.nan)
        worth = stage_worth(self.cube.probabilities, size) if math.isfinite(size) else None
        conv = both[both["kpi"].isin(["stage_conversion", "stage_exits"]) & (both["period"] == self.closed)]
        res = weak_stage(conv, self.owner_id, bench, rule, worth)
        if res is None:
            return None
        stages = self.cube.probabilities.sort_values("stage_index")["stage"].astype(str).tolist()
        at = stages.index(res["stage"]) if res["stage"] in stages else -1
        nxt = stages[at + 1] if 0 <= at < len(stages) - 1 else "won"
        return {**res, "next": nxt, "benchmark": "the rest of the team" if self.level == "rep" else "the other teams"}

    def focus(self) -> Html:
        """Findings in words; for managers and up their direct reports ranked; funnel, channels, products."""
        words = "".join(f"<li>{esc(s)}</li>" for s in self.findings()) or "<li>No finding stands out.</li>"
        parts = [self.provisional(), f'<ul class="spm-findings">{words}</ul>']
        if not self.reports.empty:
            since = (self.cube.meta.get("comparisons") or {}).get("previous")
            parts.append(f"<h4>Leaderboard: direct reports ranked{f', moves since {esc(since)}' if since else ''}"
                         f"</h4>{self.team_ranking_html()}")
        conv = self.breakdown("stage_conversion", "stage")
        if not conv.empty:
            mgr = self.owner.get("manager_id")
            theirs = owner_kpis(self.cube, mgr if isinstance(mgr, str) else self.owner_id)
            bench = theirs[(theirs["kpi"] == "stage_conversion")
                           & (theirs["period"] == self.closed)].set_index("dim_value")["value"]
            order = {s: i for i, s in enumerate(self.cube.probabilities.sort_values("stage_index")["stage"])}
            df = conv.assign(stage=conv["dim_value"], rate=conv["value"],
                             benchmark_rate=conv["dim_value"].map(bench),
                             _o=conv["dim_value"].map(order).fillna(99)).sort_values("_o")
            weak = self.weak_stage()
            parts.append(self._figure("funnel", charts.funnel(
                df[["stage", "rate", "benchmark_rate"]], str(weak["stage"]) if weak else None,
                benchmark_label=str(weak["benchmark"]) if weak else "the team")))
        leads = self.breakdown("leads", "channel")
        if not leads.empty:
            conv_c = self.breakdown("lead_conversion_rate", "channel").set_index("dim_value")["value"]
            df = leads.assign(channel=leads["dim_value"], leads=leads["value"],
                              conversion_rate=leads["dim_value"].map(conv_c))
            parts.append(self._figure("leads", charts.leads_by_channel(df[["channel", "leads", "conversion_rate"]])))
        for dim, title in (("product", "Bookings by product"), ("segment", "Bookings by segment")):
            b = self.breakdown("bookings", dim)
            if not b.empty:
                b = b.sort_values("value", ascending=False)
                parts.append(f"<h4>{title} ({esc(self.closed)})</h4>")
                parts.append(markup.table_html(
                    b[["dim_value", "value"]], {"dim_value": dim.capitalize(), "value": "Bookings"},
                    {"value": lambda v: markup.fmt_value(v, "currency", self.currency)}))
        return self._panel("where_to_focus", Html("".join(parts)))

    def team_rows(self, kpi_id: str = "quota_attainment") -> pd.DataFrame:
        """The direct reports' rows of one KPI for the closed period, best first."""
        k = self.cube.kpis
        ids = self.reports["owner_id"].astype(str).tolist()
        rows = k[k["owner_id"].isin(ids) & (k["kpi"] == kpi_id) & (k["period"] == self.closed) & k["dim"].isna()]
        names = self.cube.owners.set_index("owner_id")["name"]
        rows = rows.assign(name=rows["owner_id"].map(names))
        return rows.sort_values("value", ascending=False, na_position="last")

    def team_ranking_html(self) -> str:
        """The leaderboard: direct reports ranked by bookings attainment (bookings without targets), with the places
        moved since the previous period, their bookings, win rate and trust status."""
        b = compare_view.with_rank(self, self.team_rows("bookings"))
        fig = self._figure("team", charts.ranked_team(b[["name", "value", "target", "attainment", "status"]],
                                                      "Bookings", "currency", self.currency)) \
            if len(b) >= 2 else ""  # one direct report: the table says it all
        k = self.cube.kpis
        sel = k[k["owner_id"].isin(b["owner_id"]) & (k["period"] == self.closed) & k["dim"].isna()]
        wide = sel.pivot_table(index="owner_id", columns="kpi", values="value", aggfunc="first")
        trust = worst_by_owner(self.cube.trust)
        t = b[["owner_id", "name", "value", "attainment"]].merge(wide, left_on="owner_id", right_index=True,
                                                                  how="left", suffixes=("", "_w"))
        t["trust"] = t["owner_id"].map(trust)
        t["place"] = [Markup(compare_view.rank_html(r, m)) for r, m in zip(b["rank"], b["moved"], strict=True)]
        cols = {"place": "Rank", "name": "Direct report", "value": "Bookings", "attainment": "Attainment"}
        fmts: dict[str, Callable[[Any], str]] = {
            "value": lambda v: markup.fmt_value(v, "currency", self.currency),
            "attainment": lambda a: markup.fmt_value(a * 100 if pd.notna(a) else a, "pct", ""),
            "trust": _trust_badge, "place": Markup}
        for extra in ("win_rate", "pipeline_coverage", "activities"):
            if extra in t:
                cols[extra] = self.kpi_meta.get(extra).label
                fmts[extra] = partial(markup.fmt_value, unit=self.kpi_meta.get(extra).unit, currency=self.currency)
        cols["trust"] = "Trust"
        return f"{fig}{markup.table_html(t[list(cols)], cols, fmts)}"

    # ---- 6. decisions and actions
    def actions(self) -> Html:
        """Open actions of this owner and cadence, and those closed since the last session."""
        return self._panel("actions", Html(actions_html(self)))

    # ---- 7. below the line
    def below_the_line(self) -> Html:
        """Drill-down for investigation, collapsed: driver tree, open pipeline, deals won, every KPI."""
        parts = []
        tree = self.cube.decomposition[self.cube.decomposition["owner_id"] == self.owner_id]
        if not tree.empty and self.cadence != "annual":  # annual: up front, in targets_and_structure
            parts.append(markup.details("Goal decomposition: what the target requires",
                                      "".join([self._figure("drivers", charts.driver_tree(tree, self.currency)),
                                               self._tree_table(tree)])))
        mine = self.scope_facts()
        open_ = mine[~mine["is_closed"].fillna(False).astype(bool)].sort_values("amount", ascending=False)
        parts.append(markup.details(f"Open pipeline ({len(open_)} deals, largest 50)", self._deals(open_.head(50))))
        won = mine[mine["is_won"].fillna(False).astype(bool)]
        p = self.kpi("bookings")
        if p is not None:
            won = won.sort_values("close_date", ascending=False).head(50)
        parts.append(markup.details("Latest deals won (50)", self._deals(won)))
        allk = self.kpis[self.kpis["dim"].isna() & (self.kpis["period"].isin([self.closed, self.forward]))]
        allk = allk.assign(label=allk["kpi"].map(lambda i: self.kpi_meta.get(i).label))
        allk = allk.assign(shown=[self.fmt(str(r.kpi), r.value) if r.available else str(r.na_reason or "—")
                                  for r in allk.itertuples()])
        parts.append(markup.details("Every KPI of this run", markup.table_html(
            allk[["label", "period", "shown", "status"]],
            {"label": "KPI", "period": "Period", "shown": "Value", "status": "Status"}, {})))
        return self._panel("below_the_line", Html("".join(parts)))

    def _tree_table(self, tree: pd.DataFrame) -> str:
        t = tree.assign(req=[markup.fmt_value(v, u, self.currency) for v, u in zip(tree["required"], tree["unit"],
                                                                                  strict=True)],
                        act=[markup.fmt_value(v, u, self.currency) for v, u in zip(tree["actual"], tree["unit"],
                                                                                  strict=True)])
        return markup.table_html(t[["label", "req", "act", "formula"]],
                               {"label": "Driver", "req": "Required", "act": "Actual", "formula": "How"}, {})

    def _deals(self, df: pd.DataFrame) -> str:
        names = self.cube.owners.set_index("owner_id")["name"]
        df = df.assign(owner=df["owner_id"].map(names))
        cols = [c for c in ["opportunity_id", "name", "owner", "account_id", "stage", "amount", "close_date"]
                if c in df]
        return markup.table_html(df[cols], {c: c.replace("_", " ").capitalize() for c in cols},
                               {"opportunity_id": self.deal_link,
                                "amount": lambda v: markup.fmt_value(v, "currency", self.currency),
                                "close_date": lambda d: "—" if pd.isna(d) else str(pd.Timestamp(d).date())})

    # ---- cadence-specific agenda items
    def deals_to_push(self, limit: int = 15, per_report: int = 5) -> Html:
        """Weekly/monthly: the open deals that can still close in the rest of the forward period (engine.push), for
        the level: a rep's deals (the `limit` largest); a manager's per rep (each rep's `per_report` largest under
        their subtotal); a director's or executive's per team (count, value, largest named) and then their `limit`
        largest deals. Dead deals are left out and counted."""
        first = pd.Timestamp(self.as_of) + pd.Timedelta(days=1)
        push = push_list(self.scope_facts(), self.cube.trust_rows, self.cube.probabilities, first,
                         pd.Timestamp(str(self.cube.meta["forward_end"])))
        soon, dead = push.deals, push.dead
        left_out = ""
        if not dead.empty:
            n = len(dead)
            left_out = (f'<p class="spm-muted">{n} deal{"s" if n != 1 else ""} closing in {esc(self.forward)} '
                        f"({markup.fmt_value(dead['amount'].sum(), 'currency', self.currency)}) "
                        f"{'are' if n != 1 else 'is'} left out: no update for too long to push. On the data-trust "
                        "list: update first.</p>")
        if soon.empty:
            return Html('<p class="spm-muted">No open deal closes in the rest of the period.</p>' + left_out)
        unit = {"weekly": "week", "monthly": "month"}.get(self.cadence, "period")
        money = partial(markup.fmt_value, unit="currency", currency=self.currency)
        n_soon = markup.fmt_value(len(soon), "count", "")
        intro = (f"<p>{n_soon} open deal{'s' if len(soon) != 1 else ''} worth {esc(money(soon['amount'].sum()))} "
                 f"(weighted by win probability {esc(money(soon['weighted'].sum()))}) can still close in "
                 f"{esc(self.forward)}: where a push this {unit} moves the result.</p>")
        if self.reports.empty or self.level == "rep":
            body = self._push_table(soon.head(limit), owner=soon["owner_id"].nunique() > 1)
        else:
            teams = push_by_report(soon, self.owner_id, self.name, self.reports)
            body = self._push_per_rep(soon, teams, per_report) if self.level == "manager" else \
                self._push_per_team(soon, teams, limit)
        mix = self.breakdown("activities", "type")
        mix_html = ""
        if not mix.empty:
            mix_html = "<h4>Activity mix this period</h4>" + str(markup.table_html(
                mix.sort_values("value", ascending=False)[["dim_value", "value"]],
                {"dim_value": "Type", "value": "Activities"}, {"value": lambda v: markup.fmt_value(v, "count", "")}))
        return Html(f"{intro}{body}{left_out}{mix_html}")

    def _push_table(self, deals: pd.DataFrame, *, owner: bool = True, team: pd.Series | None = None,
                    team_label: str = "Team") -> str:
        """The deals of a push list (engine.push rows) as a table: deal (a CRM link with deal_url), the owner
        (and the team when `team` maps each deal to its direct report's name), stage, amount, close date, odds."""
        names = self.cube.owners.set_index("owner_id")["name"]
        df = deals.assign(name=self.linked_names(deals), owner=deals["owner_id"].map(names),
                          team=team if team is not None else "")
        cols = {"name": "Deal", **({"team": team_label} if team is not None else {}),
                **({"owner": "Owner"} if owner else {}), "stage": "Stage", "amount": "Amount",
                "close_date": "Close date", "p": "Win probability"}
        return str(markup.table_html(df[list(cols)], cols, {
            "amount": lambda v: markup.fmt_value(v, "currency", self.currency),
            "close_date": lambda d: str(pd.Timestamp(d).date()),
            "p": lambda v: markup.fmt_value(v * 100, "pct", "")}))

    def _push_subtotal(self, row: dict[Any, Any]) -> str:
        money = partial(markup.fmt_value, unit="currency", currency=self.currency)
        gap = self._expected_gap(str(row["owner_id"])) if row["owner_id"] != self.owner_id else ""
        return (f"{row['deals']} deal{'s' if row['deals'] != 1 else ''}, {money(row['value'])} "
                f"(weighted {money(row['weighted'])})" + (f"; expected {gap} the {self.forward} target" if gap
                                                           else ""))

    def _expected_gap(self, owner_id: str) -> str:
        """How far `owner_id`'s expected result falls short of (or ahead of) the forward period's target, in
        words ("245k € short of"), from the cube's gap_to_target; empty without a target."""
        r = self.kpi("gap_to_target", self.forward, owner_id=owner_id)
        if r is None or pd.isna(r["value"]):
            return ""
        word = "short of" if float(r["value"]) > 0 else "ahead of"
        return f"{markup.fmt_value(abs(float(r['value'])), 'currency', self.currency)} {word}"

    def _push_per_rep(self, deals: pd.DataFrame, teams: pd.DataFrame, per_report: int) -> str:
        """A manager's push list: each rep's largest deals under a line with their subtotal, most value first;
        the reps with nothing to push named at the end."""
        by_id = deals.set_index("opportunity_id", drop=False)
        parts = []
        for r in teams[teams["deals"] > 0].to_dict("records"):
            more = "" if r["deals"] <= per_report else f" — the {per_report} largest"
            parts.append(f'<h4 class="spm-push-rep">{esc(r["name"])}: {esc(self._push_subtotal(r))}{more}</h4>'
                         + self._push_table(by_id.loc[list(r["largest"])[:per_report]].reset_index(drop=True),
                                            owner=False))
        idle = teams.loc[teams["deals"] == 0, "name"].astype(str).tolist()
        if idle:
            parts.append(f'<p class="spm-muted">No deal to push in {esc(self.forward)}: {esc(", ".join(idle))}.</p>')
        return "".join(parts)

    def _push_per_team(self, deals: pd.DataFrame, teams: pd.DataFrame, limit: int, named: int = 2) -> str:
        """A director's or executive's push list: per team (direct report) the count and value of its deals to
        push with the largest named, then the `limit` largest deals across the teams."""
        by_id = deals.set_index("opportunity_id", drop=False)
        money = partial(markup.fmt_value, unit="currency", currency=self.currency)

        def largest(ids: list[str]) -> Markup:
            return Markup("; ").join(Markup("{} ({})").format(self.deal_link(i, by_id.at[i, "name"]),
                                                              money(by_id.at[i, "amount"])) for i in ids[:named])

        t = teams.assign(shown=[largest(list(ids)) for ids in teams["largest"]],
                         gap=pd.Series([self._expected_gap(str(o)).replace(" of", "") or None
                                        if o != self.owner_id else None for o in teams["owner_id"]],
                                       index=teams.index, dtype=object))
        word = "Unit" if self.level == "executive" else "Team"
        table = markup.table_html(
            t[["name", "deals", "value", "weighted", "gap", "shown"]],
            {"name": word, "deals": "Deals to push", "value": "Value", "weighted": "Weighted",
             "gap": "Expected vs target", "shown": "Largest deals"},
            {"value": money, "weighted": money, "deals": lambda v: markup.fmt_value(v, "count", "")})
        team_name = teams.set_index("owner_id")["name"]
        top = deals.head(limit)
        team = report_of(top, self.owner_id, self.reports["owner_id"].astype(str).tolist()).map(team_name)
        return (f"<h4>Per {word.lower()}</h4>{table}<h4>The {len(top)} largest deals across the "
                f"{word.lower()}s</h4>" + self._push_table(top, team=team, team_label=word))

    def priorities(self) -> Html:
        """Quarterly: where bookings came from against the trailing twelve months (products, segments, channels and,
        for managers and up, the direct reports: engine.priorities.bookings_shift), and which direct reports need
        resources (coverage against attainment)."""
        parts = []
        for dim, title in (("product", "Product"), ("segment", "Segment"), ("lead_source", "Channel (lead source)")):
            now = self.breakdown("bookings", dim)
            if not now.empty:
                ttm = self.breakdown("bookings", dim, "TTM")
                parts.append(self._shift_html(title, bookings_shift(now, ttm), known=not ttm.empty))
        if not self.reports.empty:
            k = self.cube.kpis
            ids = self.reports["owner_id"].astype(str)
            mine = k[k["owner_id"].isin(ids) & (k["kpi"] == "bookings") & k["dim"].isna()]
            names = self.reports.set_index(ids)["name"]
            now, ttm = (mine[mine["period"] == p].assign(dim_value=lambda d: d["owner_id"].map(names))
                        for p in (self.closed, "TTM"))
            parts.append(self._shift_html("Direct report", bookings_shift(now, ttm), known=not ttm.empty))
            cov = k[k["owner_id"].isin(ids) & (k["kpi"] == "pipeline_coverage")
                    & (k["period"] == self.forward) & k["dim"].isna()]
            df = resource_needs(self.team_rows("quota_attainment"), cov)
            parts.append("<h4>Resources: attainment against coverage of the rest of the period</h4>")
            parts.append(str(markup.table_html(
                df[["name", "value_att", "value_cov", "need"]],
                {"name": "Direct report", "value_att": "Attainment", "value_cov": "Coverage", "need": "Reading"},
                {"value_att": lambda v: markup.fmt_value(v, "pct", ""),
                 "value_cov": lambda v: markup.fmt_value(v, "ratio", "")})))
        return Html("".join(parts) or '<p class="spm-muted">No breakdown available for this period.</p>')

    def _shift_html(self, title: str, df: pd.DataFrame, *, known: bool) -> str:
        """One bookings_shift table under its heading, the largest loss and gain of share in words; `known`: the
        run holds the trailing twelve months of this breakdown."""
        head = f"<h4>{esc(title)}: share of bookings in {esc(self.closed)} against the trailing twelve months</h4>"
        table = str(markup.table_html(
            df[["dim_value", "value", "value_ttm", "share", "share_ttm", "shift"]],
            {"dim_value": title, "value": f"Bookings {self.closed}", "value_ttm": "Bookings TTM",
             "share": "Share now", "share_ttm": "Share TTM", "shift": "Shift (points)"},
            {"value": lambda v: markup.fmt_value(v, "currency", self.currency),
             "value_ttm": lambda v: markup.fmt_value(v, "currency", self.currency),
             "share": lambda v: markup.fmt_value(v, "pct", ""), "share_ttm": lambda v: markup.fmt_value(v, "pct", ""),
             "shift": lambda v: f"{v:+.1f}".replace("-", "−") if round(v, 1) else "0.0"}))
        if not known:
            return (f'{head}<p class="spm-muted">The trailing twelve months per {esc(title.lower())} are not in this '
                    "run (its cube predates breakdowns for every period): recompute it with spm cube --force.</p>"
                    + table)
        moved = df[df["shift"].notna()]
        words = []
        for r, what in ((moved.iloc[0], "lost most"), (moved.iloc[-1], "gained most")) if len(moved) > 1 else ():
            if (r["shift"] < 0) if what == "lost most" else (r["shift"] > 0):
                words.append(f"{esc(r['dim_value'])} {what}: {abs(r['shift']):.1f} points "
                             f"({r['share']:.0f} % of bookings against {r['share_ttm']:.0f} %)")
        said = "; ".join(words)
        return head + (f"<p>{said[:1].upper()}{said[1:]}.</p>" if words else "") + table

    def targets_and_structure(self) -> Html:
        """Annual: what next year's target asks, its split per team with the growth and the target per sales
        executive, the year per team with the bookings per executive (engine.priorities.team_year), the driver tree
        (up front, not below the line), and cost of sales."""
        tree = self.cube.decomposition[self.cube.decomposition["owner_id"] == self.owner_id]
        parts = [self._tree_headline(tree) if not tree.empty else ""]
        teams: list[tuple[str, object]] = [(str(o), n) for o, n in zip(self.reports["owner_id"], self.reports["name"],
                                                                        strict=True)] or [(self.owner_id, self.name)]
        nxt = {o: float(r["target"]) for o, _ in teams
               if (r := self.kpi("bookings_to_date_q", self.forward, owner_id=o)) is not None and pd.notna(r["target"])}
        df = team_year(self.cube.owners, {o: self.kpi("bookings", owner_id=o) for o, _ in teams}, teams,
                       nxt or None)
        money = partial(markup.fmt_value, unit="currency", currency=self.currency)
        pct = partial(markup.fmt_value, unit="pct", currency="")
        who = "Team" if not self.reports.empty else "Sales executive"
        if nxt:
            parts.append(f"<h4>The {esc(self.forward)} target split</h4>" + str(markup.table_html(
                df, {"name": who, "target_next": f"Target {self.forward}", "share_next": "Share",
                     "growth": f"Growth on {self.closed}", "per_rep_next": "Per sales executive"},
                {"target_next": money, "share_next": pct, "per_rep_next": money,
                 "growth": lambda v: f"{v:+.0f} %".replace("-", "−")})))
        else:
            parts.append(f'<p class="spm-muted">No {esc(self.forward)} bookings target in the targets table yet: '
                         "next year's split shows once it is loaded.</p>")
        parts.append(f"<h4>{esc(self.closed)} by team: bookings per sales executive</h4>" + str(markup.table_html(
            df, {"name": who, "reps": "Sales executives", "bookings": "Bookings", "attainment": "Attainment",
                 "per_rep": "Per sales executive"},
            {"bookings": money, "attainment": pct, "per_rep": money})))
        if not tree.empty:
            parts.append("<h4>What the target requires: the driver tree</h4>"
                         + self._figure("drivers", charts.driver_tree(tree, self.currency)) + self._tree_table(tree))
        cos = self.kpi("cost_of_sales_pct")
        if cos is not None and pd.notna(cos["value"]):
            parts.append(f"<p>Cost of sales: {esc(markup.fmt_value(cos['value'], 'pct', ''))} of bookings in "
                         f"{esc(self.closed)} (the budget discussion).</p>")
        return Html("".join(parts))

    def _tree_headline(self, tree: pd.DataFrame) -> str:
        """What next year's target asks, in one paragraph, from the driver tree's nodes (empty without a target)."""
        node = tree.set_index("node")
        required, actual = node["required"].to_dict(), node["actual"].to_dict()
        target = required.get("bookings_target", math.nan)
        if pd.isna(target):
            return ""
        money = partial(markup.fmt_value, unit="currency", currency=self.currency)
        count = partial(markup.fmt_value, unit="count", currency="")
        said = [f"{esc(self.forward)} asks for {esc(money(target))} of bookings"]
        done = self.value("bookings")
        if math.isfinite(done) and done > 0:
            growth = f"{(target / done - 1) * 100:+.0f} %".replace("-", "−")
            said[0] += f", {growth} on {esc(self.closed)} ({esc(money(done))})"
        for key, what in (("deals_per_month", "deals won"), ("opps_per_month", "new opportunities")):
            if pd.notna(required.get(key, math.nan)):
                now = actual.get(key, math.nan)
                since = f" against {esc(count(now))} over the last twelve months" if pd.notna(now) else ""
                said.append(f"{esc(count(required[key]))} {what} a month{since}")
        return f"<p>{'; '.join(said)}.</p>"
