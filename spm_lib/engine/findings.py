"""Findings in words (SPEC §8, sections 0 and 5): rules that read one owner's slice of the cube and name the people,
deals, stages and breakdowns where the money is, each with the amount at stake, the largest first.

Each rule is a function `rule(scope, cfg) -> list[Finding]`; a rule whose data is absent (no targets, no stage
history, no breakdowns, no trust rows) returns nothing. Which rules a level runs and their thresholds are
config/findings.yml (`FindingsConfig`, carried in the cube's meta). Wording follows the level: a rep's findings speak
of deals, a manager's of reps and deals, a director's of teams, an executive's of units and segments. The report
(`Report.findings`) only lists them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from spm_lib.config import FindingsConfig
from spm_lib.engine.cube import Cube
from spm_lib.engine.slices import owner_kpis
from spm_lib.engine.trust import scope_offenders

__all__ = ["RULES", "Finding", "Scope", "findings", "findings_config", "who"]


@dataclass(frozen=True)
class Finding:
    """One finding: the money at stake (the ranking key, 0 when none is at stake), its sentence, the rule that made
    it and whom or what it names (an owner id, an opportunity id, a stage, or dim=value)."""

    value: float
    text: str
    kind: str
    subject: str


@dataclass(frozen=True)
class Scope:
    """What the rules read for one owner of one run: the cube, the owner, the as-of deals of the owner's scope
    (cube.facts rows), how to write an amount ('101k €') and the weak stage (Report.weak_stage; None: none)."""

    cube: Cube
    owner_id: str
    deals: pd.DataFrame
    money: Callable[[float], str]
    weak: dict[str, Any] | None = None

    @property
    def closed(self) -> str:
        """The closed period's label."""
        return str(self.cube.meta["closed_period"])

    @property
    def forward(self) -> str:
        """The forward period's label."""
        return str(self.cube.meta["forward_period"])

    def owner(self, owner_id: str | None = None) -> pd.Series:
        """The owners row of this owner (or `owner_id`)."""
        o = self.cube.owners
        return o[o["owner_id"].astype(str) == (owner_id or self.owner_id)].iloc[0]

    def reports(self, owner_id: str | None = None) -> pd.DataFrame:
        """The direct reports (owners rows) of this owner (or `owner_id`)."""
        return self._reports.get(owner_id or self.owner_id, self.cube.owners.iloc[0:0])

    @cached_property
    def _reports(self) -> dict[str, pd.DataFrame]:
        """Each manager's direct reports (owners rows, by owner id), grouped once."""
        o = self.cube.owners
        return {str(m): g.sort_values("owner_id") for m, g in o.groupby("manager_id", sort=False)}

    def below(self, depth: int) -> list[tuple[pd.Series, str]]:
        """The owners up to `depth` levels below this one, each with the words naming their numbers: 'Sofia
        Santos', 'Eloise Vincent's team', and two levels down 'Maya Brown's team (Leo Pereira's unit)'."""
        out, level = [], [(r, who(r)) for _, r in self.reports().iterrows()]
        for down in range(depth):
            out += level
            if down + 1 < depth:  # the level under the last one asked for is not needed (a top owner's: every rep)
                level = [(r, f"{who(r)} ({words})") for parent, words in level
                         for _, r in self.reports(str(parent["owner_id"])).iterrows()]
        return out

    def row(self, kpi: str, period: str, owner_id: str | None = None) -> dict[str, float] | None:
        """The value and target of a KPI (no breakdown) of this owner (or `owner_id`); None when absent or without
        a value."""
        return self._rows.get((owner_id or self.owner_id, kpi, period))

    def against_target(self, kpi: str, period: str, owner_id: str | None = None) -> tuple[float, float] | None:
        """(value, target) of a KPI with a positive target; None without one."""
        r = self.row(kpi, period, owner_id)
        if r is None or not (r["target"] > 0):  # NaN: no target
            return None
        return r["value"], r["target"]

    @cached_property
    def kpis(self) -> pd.DataFrame:
        """The cube's KPI rows of this owner and the two levels below (each owner's rows indexed once per cube)."""
        ids = [self.owner_id, *(str(r["owner_id"]) for r, _ in self.below(2))]
        return pd.concat([owner_kpis(self.cube, i) for i in ids])

    @cached_property
    def _rows(self) -> dict[tuple[str, str, str], dict[str, float]]:
        """The KPI rows the rules read, by (owner id, kpi, period)."""
        k = self.kpis
        k = k[k["kpi"].isin(_READ) & k["period"].isin([self.closed, self.forward]) & k["dim"].isna()
              & k["value"].notna()]
        return {(str(o), str(kp), str(pe)): {"value": float(v), "target": float(t)}
                for o, kp, pe, v, t in zip(k["owner_id"], k["kpi"], k["period"], k["value"], k["target"],
                                           strict=True)}


_READ = ("bookings", "forecast_expected", "pipeline_coverage")  # the KPIs (no breakdown) the rules read


def findings_config(meta: dict[str, Any]) -> FindingsConfig:
    """The findings rules' config a run was computed with (its cube meta); the defaults for a cube made before
    findings.yml existed or in a project without it."""
    return FindingsConfig(**(meta.get("findings") or {}))


_SCOPE_WORDS = {"team": "team", "unit": "unit", "org": "company"}


def who(owner: pd.Series) -> str:
    """How a finding names an owner's numbers by the scope they own: a rep by name, a manager's as
    'Eloise Vincent's team', a director's as 'Leo Pereira's unit'."""
    name = str(owner.get("name") or owner["owner_id"])
    kind = _SCOPE_WORDS.get(str(owner.get("scope") or ""), "")
    return f"{name}'s {kind}" if kind else name


def _own_words(owner: pd.Series) -> str:
    """How a report names its own owner's numbers: 'The team', 'The unit', 'The company', or the rep's name."""
    kind = _SCOPE_WORDS.get(str(owner.get("scope") or ""), "")
    return f"The {kind}" if kind else str(owner.get("name") or owner["owner_id"])


def _short(value: float, target: float) -> float:
    """The money missing to reach a target (0 when reached or unknown)."""
    gap = target - value
    return gap if math.isfinite(gap) and gap > 0 else 0.0


def _pct(value: float, target: float) -> str:
    return f"{value / target * 100:.0f} %" if target else "—"


def _against(gap: float, money: Callable[[float], str]) -> str:
    """'926k € short' or '926k € ahead': the sign in words, never a signed gap."""
    return f"{money(abs(gap))} {'short' if gap > 0 else 'ahead'}"


# ---------------------------------------------------------------- the rules
def standing(s: Scope, cfg: FindingsConfig) -> list[Finding]:
    """Where the owner stands: the closed period's bookings against target and the forward period's expected result
    against target with the coverage of what is left; at stake, the larger shortfall of the two."""
    me = s.owner()
    parts, at_stake = [], 0.0
    b = s.against_target("bookings", s.closed)
    if b is not None:
        v, t = b
        parts.append(f"{_own_words(me)} booked {s.money(v)} of a {s.money(t)} target for {s.closed} "
                     f"({_pct(v, t)}, {_against(t - v, s.money)})")
        at_stake = _short(v, t)
    f = s.against_target("forecast_expected", s.forward)
    if f is not None:
        v, t = f
        text = f"{s.forward} is expected at {s.money(v)} against a {s.money(t)} target: {_against(t - v, s.money)}"
        cov = s.row("pipeline_coverage", s.forward)
        if cov is not None and math.isfinite(float(cov["value"])):
            text += f", with open pipeline covering {float(cov['value']):.1f}× of what is left"
        parts.append(text if parts else text[0].upper() + text[1:])
        at_stake = max(at_stake, _short(v, t))
    if not parts:
        return []
    return [Finding(at_stake, "; ".join(parts) + ".", "standing", s.owner_id)]


def people(s: Scope, cfg: FindingsConfig) -> list[Finding]:
    """The direct reports below `people.below_pct` % of their bookings target for the closed period, or expected
    below it for the forward period, named with the money missing (the larger of the two), largest first; for the
    levels of `people.deeper` (an executive) their teams too."""
    rule, out = cfg.people, []
    level = str(s.owner().get("level") or "")
    for r, name in s.below(2 if level in rule.deeper else 1):
        oid = str(r["owner_id"])
        said, at_stake = [], 0.0
        b = s.against_target("bookings", s.closed, oid)
        if b is not None and b[0] / b[1] * 100 < rule.below_pct:
            v, t = b
            said.append(f"{name} booked {s.money(v)} of a {s.money(t)} target for {s.closed} "
                        f"({_against(t - v, s.money)})")
            at_stake = _short(v, t)
        f = s.against_target("forecast_expected", s.forward, oid)
        if f is not None and f[0] / f[1] * 100 < rule.below_pct:
            v, t = f
            said.append(f"{'and is' if said else name + ' is'} expected {s.money(t - v)} short of the "
                        f"{s.forward} target ({s.money(v)} of {s.money(t)})")
            at_stake = max(at_stake, _short(v, t))
        if said:
            out.append(Finding(at_stake, " ".join(said) + ".", "people", oid))
    return sorted(out, key=lambda f: -f.value)[:rule.max]


def deals(s: Scope, cfg: FindingsConfig) -> list[Finding]:
    """The largest open deals closing by the end of the forward period that have a reason to act (a trust flag of
    `deals.checks`, or no next step where the CRM fills next steps), with their days left and the reasons."""
    rule, d = cfg.deals, s.deals
    if d.empty or "close_date" not in d or not rule.max:
        return []
    d = d[[c for c in _DEAL_COLUMNS if c in d]]
    as_of = pd.Timestamp(str(s.cube.meta["as_of"]))
    end = pd.Timestamp(str(s.cube.meta["forward_end"]))
    open_ = d[~d["is_closed"].fillna(False).astype(bool) & d["close_date"].notna()
              & (pd.to_datetime(d["close_date"]) <= end) & d["amount"].notna()]
    if open_.empty:
        return []
    flagged = scope_offenders(s.cube.trust_rows, open_, rule.checks)
    reasons: dict[str, list[str]] = {}
    for oid, check, detail, at in zip(flagged["opportunity_id"].astype(str), flagged["check"], flagged["detail"],
                                      flagged["stage"], strict=True):
        said = reasons.setdefault(oid, [])
        if check == "opps_early_stage_closing_30d":  # its detail repeats the close date: say the stage instead
            said.append(f"{at}: an early stage so close to its date")
        elif check != "opps_past_close_date":  # the sentence says the date has passed
            said.append(str(detail))
    if rule.no_next_step and "next_step" in d and _filled(d["next_step"]).any():
        for oid in open_.loc[~_filled(open_["next_step"]), "opportunity_id"].astype(str):
            reasons.setdefault(oid, []).append("no next step")
    chosen = open_[open_["opportunity_id"].astype(str).isin(reasons)]
    chosen = chosen.sort_values(["amount", "opportunity_id"], ascending=[False, True]).head(rule.max)
    left = f"of the {(end - as_of).days} left in {s.forward}"
    names = s.cube.owners.set_index(s.cube.owners["owner_id"].astype(str))
    mine = s.reports().empty  # a rep's own deals: no owner to name
    out = []
    for _, x in chosen.iterrows():
        oid = str(x["opportunity_id"])
        whose = "" if mine or str(x["owner_id"]) not in names.index else \
            f"{names.loc[str(x['owner_id']), 'name']!s}, "
        close = pd.Timestamp(x["close_date"])
        when = f"closes in {_days((close - as_of).days)} ({close.date()}) {left}" if close > as_of else \
            f"was due on {close.date()}, {_days((as_of - close).days)} ago"
        why = "; ".join(dict.fromkeys(reasons[oid]))
        text = (f"{x.get('name') or oid} ({whose}{s.money(float(x['amount']))}, {x.get('stage')}) {when}"
                f"{': ' + why if why else ''}.")
        out.append(Finding(float(x["amount"]), text, "deals", oid))
    return out


_DEAL_COLUMNS = ("opportunity_id", "owner_id", "name", "stage", "amount", "close_date", "is_closed", "next_step")


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _filled(s: pd.Series) -> pd.Series:
    """True where a text column holds something other than blanks."""
    return s.notna() & (s.astype("string").str.strip().fillna("") != "")


def stage(s: Scope, cfg: FindingsConfig) -> list[Finding]:
    """The weak stage (engine.forecast.weak_stage, worked out by the report): its conversion against the benchmark
    and the bookings the missing conversions cost."""
    w = s.weak
    if not w:
        return []
    raw = w.get("cost")
    cost = float(raw) if raw is not None and math.isfinite(float(raw)) else None
    worth = f", ≈ {s.money(cost)} of bookings lost" if cost is not None else ""
    text = (f"{w['stage']} → {w.get('next', 'the next stage')} converts at {float(w['rate']):.0f} % against "
            f"{float(w['benchmark_rate']):.0f} % for {w.get('benchmark', 'the benchmark')}: "
            f"{w['deals']} deals{worth}.")
    return [Finding(cost or 0.0, text, "stage", str(w["stage"]))]


_PER_PERIOD = {"weekly": ("a week", 52), "monthly": ("a month", 12), "quarterly": ("a quarter", 4),
               "annual": ("a year", 1)}
_DIM_WORDS = {"lead_source": "lead source", "product": "product", "segment": "segment", "channel": "channel"}


def dimensions(s: Scope, cfg: FindingsConfig) -> list[Finding]:
    """The segments, products and lead sources (`dimensions.dims`) whose closed-period bookings fell at least
    `dimensions.drop_pct` % (and `min_amount`) below their trailing-twelve-month average per period."""
    rule = cfg.dimensions
    per, n = _PER_PERIOD.get(str(s.cube.meta.get("cadence")), ("a period", 0))
    if n <= 1 or not rule.max:  # an annual period is its trailing year: nothing to compare
        return []
    k = s.kpis
    mine = k[(k["owner_id"] == s.owner_id) & (k["kpi"] == "bookings") & k["dim"].isin(rule.dims)]
    now = mine[mine["period"] == s.closed]
    ttm = mine[mine["period"] == "TTM"]
    if ttm.empty:
        return []
    df = ttm[["dim", "dim_value", "value"]].merge(now[["dim", "dim_value", "value"]], on=["dim", "dim_value"],
                                                  how="left", suffixes=("_ttm", "")).fillna({"value": 0.0})
    df = df.assign(usual=df["value_ttm"] / n)
    df = df.assign(drop=df["usual"] - df["value"])
    df = df[(df["usual"] > 0) & (df["drop"] >= df["usual"] * rule.drop_pct / 100) & (df["drop"] >= rule.min_amount)
            & (df["drop"] > 0)]
    out = []
    for _, r in df.sort_values(["drop", "dim", "dim_value"], ascending=[False, True, True]).head(rule.max).iterrows():
        word = _DIM_WORDS.get(str(r["dim"]), str(r["dim"]).replace("_", " "))
        text = (f"{word.capitalize()} {r['dim_value']} booked {s.money(float(r['value']))} in {s.closed}, "
                f"{s.money(float(r['drop']))} below its trailing-year average of {s.money(float(r['usual']))} "
                f"{per} (−{float(r['drop']) / float(r['usual']) * 100:.0f} %).")
        out.append(Finding(float(r["drop"]), text, "dimensions", f"{r['dim']}={r['dim_value']}"))
    return out


def stale(s: Scope, cfg: FindingsConfig) -> list[Finding]:
    """The open deals of the scope with no update for too long (trust check opps_stale_60d): their count and
    value, which the forecast counts until they are updated or closed."""
    t = s.cube.trust
    r = t[(t["owner_id"].astype(str) == s.owner_id) & (t["check"] == "opps_stale_60d")]
    if r.empty or pd.isna(r.iloc[0]["count"]) or not r.iloc[0]["count"] or pd.isna(r.iloc[0]["amount"]):
        return []
    n, amount = int(r.iloc[0]["count"]), float(r.iloc[0]["amount"])
    text = (f"{n} open deal{'s' if n != 1 else ''} worth {s.money(amount)} had no update for too long "
            f"({str(r.iloc[0].get('label') or 'stale deals').lower()}): update or close "
            f"{'them' if n != 1 else 'it'} before counting on {'them' if n != 1 else 'it'}.")
    return [Finding(amount, text, "stale", "opps_stale_60d")]


RULES: dict[str, Callable[[Scope, FindingsConfig], list[Finding]]] = {
    "standing": standing, "people": people, "deals": deals, "stage": stage, "dimensions": dimensions,
    "stale": stale}


def findings(s: Scope, cfg: FindingsConfig | None = None) -> list[Finding]:
    """Every finding of the rules the owner's level runs (config/findings.yml), the most money at stake first
    (ties: the rules' order)."""
    cfg = cfg or findings_config(s.cube.meta)
    level = str(s.owner().get("level") or "")
    out = [f for rule in cfg.rules_for(level) for f in RULES[rule](s, cfg)]
    return sorted(out, key=lambda f: -f.value)
