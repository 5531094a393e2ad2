"""The KPI registry: every KPI declared once (label, unit, direction, kind, needs, definition) with how it is computed.

Three forms, computed only by the cube (spm_lib.engine.cube):
- a `Measure`: an aggregate over a fact view, counted in every scope the fact belongs to;
- a `formula`: a function of other KPIs of the same scope and period (ratios are recomputed, never averaged);
- `external`: rows produced by a module of their own (forecast, stage conversion), declared here for metadata.
Add a KPI with `register(Kpi(...))` — from spm_lib, from a Python file listed in config/kpis.yml `python_files`,
or from config/kpis.yml `custom` (see `register_custom`).
"""

from __future__ import annotations

import runpy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from spm_lib.config import Config, CustomKpi
from spm_lib.errors import KpiError, did_you_mean

NOT_AVAILABLE = "not available — needs "  # the one wording of a KPI or check whose data is absent (SPEC §3)


def not_available(missing: list[str]) -> str:
    """What a KPI or check shows when data it needs is absent: 'not available — needs table.column, …'."""
    return NOT_AVAILABLE + ", ".join(missing)


Unit = Literal["currency", "count", "pct", "days", "ratio", "score"]  # score: signed points (NPS)
Direction = Literal["higher", "lower"]
Kind = Literal["leading", "lagging"]


@dataclass(frozen=True)
class Measure:
    """An aggregate over a fact view; `date` assigns a fact to periods (None: every period, filter on p.start/p.end).

    Views: `won_lost` (opportunities as they stood at each period's end, close date in the period),
    `opp` (the as-of snapshot), and contract tables (activities, leads, surveys, accounts, costs) with owner_id.
    """

    view: str
    agg: Literal["sum", "count", "mean", "count_distinct"]
    expr: str = "1"
    date: str | None = "close_date"
    where: str = "TRUE"
    dims: dict[str, str] = field(default_factory=dict)  # dim name -> SQL expression of the view


Formula = Callable[[pd.DataFrame], "pd.Series[float]"]


@dataclass(frozen=True)
class Kpi:
    """One KPI's declaration: metadata shown on hover, what data it needs, and how it is computed."""

    id: str
    label: str
    unit: Unit
    direction: Direction
    kind: Kind
    definition: str
    needs: tuple[str, ...] = ()  # 'table' or 'table.column'
    measure: Measure | None = None
    inputs: tuple[str, ...] = ()  # KPI ids a formula reads (their value, and `<id>__target`)
    formula: Formula | None = None
    external: bool = False
    target_metric: str | None = None  # targets.metric giving its target (default: its own id)
    hidden: bool = False  # a building block, not shown in reports
    fixed_target: float | None = None  # e.g. 100 (%) for quota attainment

    def __post_init__(self) -> None:
        forms = [self.measure is not None, self.formula is not None, self.external]
        if sum(forms) != 1:
            raise KpiError(f"KPI {self.id!r}: declare exactly one of measure, formula or external")

    @property
    def sql_measure(self) -> Measure:
        """The measure of a KPI aggregated in SQL (KpiError for a formula or external KPI, which has none)."""
        if self.measure is None:
            raise KpiError(f"KPI {self.id!r} has no measure: it is computed by a formula or given externally")
        return self.measure

    @property
    def target_id(self) -> str:
        """The targets.metric that gives this KPI's target."""
        return self.target_metric or self.id


REGISTRY: dict[str, Kpi] = {}


def register(kpi: Kpi, *, replace: bool = False) -> Kpi:
    """Add a KPI to the registry (an id can be declared once unless `replace`)."""
    if kpi.id in REGISTRY and not replace:
        raise KpiError(f"KPI {kpi.id!r} is declared twice; pick another id or pass replace=True")
    for dep in kpi.inputs:
        if dep not in REGISTRY:
            raise KpiError(f"KPI {kpi.id!r} reads {dep!r}, which is not declared{did_you_mean(dep, REGISTRY)}")
    REGISTRY[kpi.id] = kpi
    return kpi


def get(kpi_id: str) -> Kpi:
    """The declaration of `kpi_id` (KpiError with a suggestion when unknown)."""
    try:
        return REGISTRY[kpi_id]
    except KeyError:
        raise KpiError(f"unknown KPI {kpi_id!r}{did_you_mean(kpi_id, REGISTRY)}") from None


def ratio(num: str, den: str, scale: float = 1.0) -> Formula:
    """A formula num/den × scale, NaN where the denominator is 0 or missing."""

    def f(w: pd.DataFrame) -> pd.Series:
        d = w[den].where(w[den] != 0)
        return w[num] / d * scale

    return f


def _pct_of_target(kpi_id: str) -> Formula:
    def f(w: pd.DataFrame) -> pd.Series:
        t = w[f"{kpi_id}__target"]
        return w[kpi_id] / t.where(t != 0)

    return f


def _nps(w: pd.DataFrame) -> pd.Series:
    n = w["survey_responses"].where(w["survey_responses"] != 0)
    return (w["survey_promoters"] - w["survey_detractors"]) / n * 100


def _discount(w: pd.DataFrame) -> pd.Series:
    lst = w["won_list_amount"].where(w["won_list_amount"] != 0)
    return (1 - w["won_amount_with_list"] / lst) * 100


def _cos(w: pd.DataFrame) -> pd.Series:
    b = w["bookings"].where(w["bookings"] != 0)
    return w["sales_cost"] / b * 100


WON = "is_won"
LOST = "is_closed AND NOT is_won"
OPP_DIMS = {"product": "product", "lead_source": "lead_source", "segment": "segment"}


def _builtins() -> list[Kpi]:
    m = Measure
    return [
        # ---- lagging: outcomes of the period
        Kpi("bookings", "Bookings", "currency", "higher", "lagging",
            "Sum of the amount of deals won with close date in the period.",
            ("opportunities.amount", "opportunities.close_date"),
            measure=m("won_lost", "sum", "coalesce(amount, 0)", where=WON, dims=OPP_DIMS)),
        Kpi("deals_won", "Deals won", "count", "higher", "lagging",
            "Number of deals won with close date in the period.", ("opportunities.close_date",),
            measure=m("won_lost", "count", where=WON, dims=OPP_DIMS)),
        Kpi("deals_lost", "Deals lost", "count", "lower", "lagging",
            "Number of deals lost with close date in the period.", ("opportunities.close_date",),
            measure=m("won_lost", "count", where=LOST)),
        Kpi("deals_closed", "Deals closed", "count", "higher", "lagging",
            "Deals won plus deals lost in the period.", ("opportunities.close_date",),
            measure=m("won_lost", "count", where="is_closed"), hidden=True),
        Kpi("closed_value", "Closed value", "currency", "higher", "lagging",
            "Amount of deals won or lost in the period.", ("opportunities.amount",),
            measure=m("won_lost", "sum", "coalesce(amount, 0)", where="is_closed"), hidden=True),
        Kpi("avg_deal_size", "Average deal size", "currency", "higher", "lagging",
            "Bookings divided by deals won.", ("opportunities.amount",),
            inputs=("bookings", "deals_won"), formula=ratio("bookings", "deals_won")),
        Kpi("win_rate", "Win rate", "pct", "higher", "lagging",
            "Deals won / (deals won + deals lost), counted, in the period.", ("opportunities.close_date",),
            inputs=("deals_won", "deals_closed"), formula=ratio("deals_won", "deals_closed", 100)),
        Kpi("win_rate_value", "Win rate (value)", "pct", "higher", "lagging",
            "Value won / value won or lost in the period.", ("opportunities.amount",),
            inputs=("bookings", "closed_value"), formula=ratio("bookings", "closed_value", 100)),
        Kpi("sales_cycle_days", "Sales cycle", "days", "lower", "lagging",
            "Mean days from creation to close over deals won in the period.",
            ("opportunities.created_date", "opportunities.close_date"),
            measure=m("won_lost", "mean", "date_diff('day', created_date, close_date)",
                      where=f"{WON} AND created_date IS NOT NULL")),
        Kpi("quota_attainment", "Quota attainment", "pct", "higher", "lagging",
            "Bookings / bookings target of the period.", ("opportunities.amount", "targets"),
            inputs=("bookings",), formula=lambda w: _pct_of_target("bookings")(w) * 100, fixed_target=100.0),
        Kpi("won_margin", "Margin on won deals", "currency", "higher", "lagging",
            "Sum of margin (or amount − cost) over deals won in the period.", ("opportunities.margin",),
            measure=m("won_lost", "sum", "coalesce(margin, amount - cost)", where=WON), hidden=True),
        Kpi("gross_margin_pct", "Gross margin", "pct", "higher", "lagging",
            "Sum of margin / bookings over deals won in the period.", ("opportunities.margin",),
            inputs=("won_margin", "bookings"), formula=ratio("won_margin", "bookings", 100)),
        Kpi("won_list_amount", "List value of won deals", "currency", "higher", "lagging",
            "Sum of list amount over won deals that have one.", ("opportunities.list_amount",),
            measure=m("won_lost", "sum", "list_amount", where=f"{WON} AND list_amount IS NOT NULL"), hidden=True),
        Kpi("won_amount_with_list", "Bookings with a list amount", "currency", "higher", "lagging",
            "Bookings of won deals that have a list amount.", ("opportunities.list_amount",),
            measure=m("won_lost", "sum", "coalesce(amount, 0)", where=f"{WON} AND list_amount IS NOT NULL"),
            hidden=True),
        Kpi("avg_discount_pct", "Average discount", "pct", "lower", "lagging",
            "1 − bookings / list amount over deals won in the period.", ("opportunities.list_amount",),
            inputs=("won_list_amount", "won_amount_with_list"), formula=_discount),
        Kpi("sales_cost", "Cost of sales", "currency", "lower", "lagging",
            "Cost of sales booked for the period.", ("costs",),
            measure=m("costs", "sum", "amount", date="period_start"), hidden=True),
        Kpi("cost_of_sales_pct", "Cost of sales", "pct", "lower", "lagging",
            "Costs of sales / bookings of the period.", ("costs", "opportunities.amount"),
            inputs=("sales_cost", "bookings"), formula=_cos),
        Kpi("expansion_bookings", "Expansion bookings", "currency", "higher", "lagging",
            "Bookings from accounts that had a won deal before the opportunity was created.",
            ("opportunities.account_id", "opportunities.created_date"),
            measure=m("won_lost", "sum", "coalesce(amount, 0)", where=f"{WON} AND is_expansion"), hidden=True),
        Kpi("expansion_share", "Expansion share", "pct", "higher", "lagging",
            "Share of bookings from accounts that were already customers.",
            ("opportunities.account_id", "opportunities.created_date"),
            inputs=("expansion_bookings", "bookings"), formula=ratio("expansion_bookings", "bookings", 100)),
        Kpi("customers_at_start", "Customers at period start", "count", "higher", "lagging",
            "Accounts that were customers at the start of the period.", ("accounts.customer_since",),
            measure=m("accounts", "count", date=None,
                      where="customer_since < p.start AND (churned_on IS NULL OR churned_on >= p.start)"),
            hidden=True),
        Kpi("customers_retained", "Customers retained", "count", "higher", "lagging",
            "Customers at period start not churned by period end.", ("accounts.customer_since",),
            measure=m("accounts", "count", date=None,
                      where="customer_since < p.start AND (churned_on IS NULL OR churned_on > p.asof_end)"),
            hidden=True),
        Kpi("retention_rate", "Retention rate", "pct", "higher", "lagging",
            "Customers at period start still customers at its end, over customers at its start.",
            ("accounts.customer_since",),
            inputs=("customers_retained", "customers_at_start"),
            formula=ratio("customers_retained", "customers_at_start", 100)),
        Kpi("survey_responses", "Survey responses", "count", "higher", "lagging", "Surveys in the period.",
            ("surveys",), measure=m("surveys", "count", date="date"), hidden=True),
        Kpi("survey_promoters", "Promoters", "count", "higher", "lagging", "Scores 9–10.", ("surveys",),
            measure=m("surveys", "count", date="date", where="score >= 9"), hidden=True),
        Kpi("survey_detractors", "Detractors", "count", "lower", "lagging", "Scores 0–6.", ("surveys",),
            measure=m("surveys", "count", date="date", where="score <= 6"), hidden=True),
        Kpi("nps", "NPS", "score", "higher", "lagging",
            "% of scores 9–10 minus % of scores 0–6, surveys in the period.", ("surveys",),
            inputs=("survey_responses", "survey_promoters", "survey_detractors"), formula=_nps),
        # ---- leading: inputs of the period
        Kpi("activities", "Activities", "count", "higher", "leading",
            "Calls, emails, meetings and demos logged in the period.", ("activities",),
            measure=m("activities", "count", date="date", dims={"type": "type"})),
        Kpi("meetings", "Meetings", "count", "higher", "leading", "Meetings held in the period.",
            ("activities",), measure=m("activities", "count", date="date", where="lower(type) = 'meeting'")),
        Kpi("leads", "Leads", "count", "higher", "leading", "Leads created in the period.", ("leads",),
            measure=m("leads", "count", date="created_date", dims={"channel": "channel"})),
        Kpi("leads_converted", "Leads converted", "count", "higher", "leading",
            "Leads of the period converted to an opportunity.", ("leads.converted_opportunity_id",),
            measure=m("leads", "count", date="created_date", where="converted_opportunity_id IS NOT NULL",
                      dims={"channel": "channel"}), hidden=True),
        Kpi("lead_conversion_rate", "Lead conversion", "pct", "higher", "leading",
            "Share of the period's leads converted to an opportunity.", ("leads.converted_opportunity_id",),
            inputs=("leads_converted", "leads"), formula=ratio("leads_converted", "leads", 100)),
        Kpi("opps_created", "Opportunities created", "count", "higher", "leading",
            "Opportunities created in the period.", ("opportunities.created_date",),
            measure=m("opp", "count", date="created_date", dims={"lead_source": "lead_source"})),
        Kpi("opps_created_value", "Pipeline created", "currency", "higher", "leading",
            "Amount of opportunities created in the period.", ("opportunities.created_date",),
            measure=m("opp", "sum", "coalesce(amount, 0)", date="created_date")),
        # ---- forward look and funnel: computed by spm_lib.engine.forecast, declared here
        Kpi("pipeline_open_value", "Open pipeline", "currency", "higher", "leading",
            "Open opportunities closing in the rest of the forward period.", ("opportunities.amount",),
            external=True),
        Kpi("weighted_pipeline", "Weighted pipeline", "currency", "higher", "leading",
            "Σ amount × win probability of the stage (calibrated from history).", ("opportunities.stage",),
            external=True),
        Kpi("bookings_to_date_q", "Bookings to date", "currency", "higher", "lagging",
            "Bookings of the forward period up to the as-of date.", ("opportunities.amount",), external=True,
            target_metric="bookings"),
        Kpi("forecast_expected", "Expected result", "currency", "higher", "leading",
            "Bookings to date + the open deals, each by its chance of being won within the period (learnt from "
            "history), + the deals not created yet; stage weighting without history.", ("opportunities.stage",),
            external=True, target_metric="bookings"),
        Kpi("gap_to_target", "Gap to target", "currency", "lower", "leading",
            "Target of the period − expected result.", ("targets",), external=True),
        Kpi("required_run_rate", "Required run-rate", "currency", "lower", "leading",
            "Remaining target per remaining month.", ("targets",), external=True),
        Kpi("pipeline_coverage", "Pipeline coverage", "ratio", "higher", "leading",
            "Open pipeline / remaining target of the period.", ("targets", "opportunities.amount"),
            external=True),
        Kpi("stage_conversion", "Stage conversion", "pct", "higher", "leading",
            "Share of opportunities that reached a stage and went on to the next.", ("opportunity_history",),
            external=True),
        Kpi("stage_exits", "Deals leaving the stage", "count", "higher", "leading",
            "Opportunities that reached a stage and left it in the trend window (what stage conversion counts).",
            ("opportunity_history",), external=True),
    ]


for _k in _builtins():
    register(_k)


def sql_agg(agg: str, expr: str) -> tuple[str, str | None]:
    """SQL for a measure's numerator and (for means) denominator."""
    if agg == "sum":
        return f"sum({expr})", None
    if agg == "count":
        return "count(*)" if expr == "1" else f"count({expr})", None
    if agg == "count_distinct":
        return f"count(DISTINCT {expr})", None
    return f"sum({expr})", f"count({expr})"


def register_custom(kpi_id: str, decl: CustomKpi) -> Kpi:
    """Register a KPI declared in config/kpis.yml `custom` (a measure with filters, or a ratio of KPIs)."""
    if decl.numerator is not None and decl.denominator is not None:
        scale = 100.0 if decl.unit == "pct" else 1.0
        for dep in (decl.numerator, decl.denominator):
            get(dep)
        needs = tuple(sorted(set(REGISTRY[decl.numerator].needs) | set(REGISTRY[decl.denominator].needs)))
        return register(_custom_kpi(kpi_id, decl, needs, inputs=(decl.numerator, decl.denominator),
                                    formula=ratio(decl.numerator, decl.denominator, scale)), replace=True)
    assert decl.table is not None and decl.agg is not None
    view = "won_lost" if decl.table == "opportunities" and (decl.date_column or "close_date") == "close_date" \
        else ("opp" if decl.table == "opportunities" else decl.table)
    expr = decl.column or "1"
    measure = Measure(view=view, agg=decl.agg, expr=expr, date=decl.date_column or _default_date(decl.table),
                      where=decl.filter or "TRUE")
    needs = (f"{decl.table}.{decl.column}",) if decl.column else (decl.table,)
    return register(_custom_kpi(kpi_id, decl, needs, measure=measure), replace=True)


def _custom_kpi(kpi_id: str, decl: CustomKpi, needs: tuple[str, ...], *, measure: Measure | None = None,
                inputs: tuple[str, ...] = (), formula: Formula | None = None) -> Kpi:
    """The Kpi of a config/kpis.yml `custom` declaration, computed by `measure` or by `formula` of `inputs`."""
    return Kpi(id=kpi_id, label=decl.label, unit=decl.unit, direction=decl.direction, kind=decl.kind,
               definition=decl.definition or decl.label, needs=needs, measure=measure, inputs=inputs, formula=formula)


def _default_date(table: str) -> str:
    return {"opportunities": "close_date", "activities": "date", "leads": "created_date", "surveys": "date",
            "costs": "period_start"}.get(table, "date")


def load_custom(cfg: Config) -> None:
    """Register the custom KPIs of config/kpis.yml and run the Python files it lists."""
    for path in cfg.kpis.python_files:
        file = cfg.path(path)
        if not file.is_file():
            raise KpiError(f"config/kpis.yml: python_files lists {path}, which does not exist")
        runpy.run_path(str(file), run_name="spm_custom_kpis")
    for kpi_id, decl in cfg.kpis.custom.items():
        register_custom(kpi_id, decl)


def formula_order(ids: list[str]) -> list[str]:
    """Formula KPIs in an order where inputs come first."""
    done: set[str] = set()
    out: list[str] = []

    def visit(i: str) -> None:
        if i in done:
            return
        for dep in REGISTRY[i].inputs:
            visit(dep)
        done.add(i)
        if REGISTRY[i].formula is not None:
            out.append(i)

    for i in ids:
        visit(i)
    return out


# What credits a fact table's rows to owners below the top; without it every row counts at the top only, so a KPI
# over the table is "not available" below the top, never a 0 (SPEC §3: absent is not zero).
OWNER_ATTRIBUTION: dict[str, str] = {"leads": "leads.owner_id", "surveys": "accounts"}


def attribution_needs(kpi_id: str) -> list[str]:
    """What KPI `kpi_id` (or any KPI it reads) needs to be credited to owners below the top (see OWNER_ATTRIBUTION)."""
    k = REGISTRY[kpi_id]
    out = {OWNER_ATTRIBUTION[k.measure.view]} if k.measure is not None and k.measure.view in OWNER_ATTRIBUTION \
        else set()
    for dep in k.inputs:
        out.update(attribution_needs(dep))
    return sorted(out)


def metadata() -> pd.DataFrame:
    """One row per declared KPI: id, label, unit, direction, kind, definition, needs, hidden."""
    return pd.DataFrame([{"kpi": k.id, "label": k.label, "unit": k.unit, "direction": k.direction, "kind": k.kind,
                          "definition": k.definition, "needs": list(k.needs), "hidden": k.hidden}
                         for k in REGISTRY.values()])

