"""Which alerts of config/alerts.yml are true in a cube: one row per (rule, owner, subject), or a note saying why a
rule could not be evaluated.

A rule watches a KPI of the forward (or closed) period, a trust check of the owner's scope, the forecast gap of the
forward period, or the open deals of the owner's scope. It applies to the owners of its `levels`. The subject is
what the alert is about inside the owner's scope: '' for a KPI or the gap, the check id for a trust check, the
opportunity id for a deal, so one alert is one thing that can later clear. Mailing them is
`spm_lib.deliver.alerts`; the values here are raw numbers with their unit, formatted by the email.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from spm_lib.config import AlertRule, AlertsConfig
from spm_lib.engine.cube import Cube
from spm_lib.errors import ConfigError, did_you_mean
from spm_lib.metrics import kpis as registry

ALERT_COLUMNS = ["rule_id", "owner_id", "level", "subject", "subject_name", "value", "threshold", "unit", "period",
                 "amount", "count", "close_date", "days_left"]
NEEDS_HISTORY = "not available — needs opportunity_history"


@dataclass
class Evaluation:
    """The alerts true in a cube (ALERT_COLUMNS, one row per rule × owner × subject) and the rules skipped, why."""

    alerts: pd.DataFrame
    notes: dict[str, str] = field(default_factory=dict)  # rule id -> why it was not evaluated
    as_of: date | None = None
    forward: str = ""
    days_left: int | None = None


def days_left(cube: Cube) -> int:
    """Days of the forward period left after the as-of day."""
    return (date.fromisoformat(str(cube.meta["forward_end"])) - date.fromisoformat(str(cube.meta["as_of"]))).days


def _where(rule_id: str, key: str) -> str:
    return f"config/alerts.yml: key `rules.{rule_id}.{key}`"


def _levels(rule: AlertRule, level: pd.Series) -> pd.Series:
    return level.isin(rule.levels) if rule.levels is not None else pd.Series(True, index=level.index)


def _frame(rows: pd.DataFrame, rule_id: str, **columns: object) -> pd.DataFrame:
    """`rows` (owner_id, level …) as alert rows of `rule_id`, the named columns set, the others empty."""
    out = pd.DataFrame({"rule_id": rule_id, "owner_id": rows["owner_id"].astype(str).to_numpy(),
                        "level": rows["level"].astype(str).to_numpy()})
    for col in ALERT_COLUMNS[3:]:
        value: Any = columns.get(col, np.nan)
        out[col] = value.to_numpy() if isinstance(value, pd.Series) else value
    return out


def _kpi(rule_id: str, rule: AlertRule, cube: Cube) -> pd.DataFrame | str:
    assert rule.kpi is not None
    known = set(cube.kpis["kpi"].astype(str))
    if rule.kpi not in known:
        raise ConfigError(f"{_where(rule_id, 'kpi')}: unknown KPI {rule.kpi!r}{did_you_mean(rule.kpi, known)}; "
                          "`spm kpis --period all` lists them")
    period = str(cube.meta["forward_period" if rule.period == "forward" else "closed_period"])
    k = cube.kpis
    rows = k[(k["kpi"] == rule.kpi) & (k["period"] == period) & k["dim"].isna() & _levels(rule, k["level"])]
    if rows.empty:
        return f"{rule.kpi} has no value for {period}"
    usable = rows[rows["available"].astype(bool) & rows["value"].notna()]
    if usable.empty:
        reasons = rows["na_reason"].dropna().astype(str)
        return reasons.iloc[0] if len(reasons) else f"{rule.kpi} is not available for {period}"
    value = usable["value"].astype(float)
    threshold = rule.below if rule.below is not None else rule.above
    assert threshold is not None  # config.AlertRule refuses a kpi rule without `below` or `above`
    hit = value < threshold if rule.below is not None else value > float(threshold)
    left = days_left(cube)
    if rule.days_left_below is not None and not left < rule.days_left_below:
        hit &= False
    decl = registry.REGISTRY.get(rule.kpi)
    found = usable[hit]
    return _frame(found, rule_id, subject="", subject_name=decl.label if decl else rule.kpi,
                  value=found["value"].astype(float),
                  threshold=float(threshold),
                  unit=decl.unit if decl else "count", period=period, days_left=left)


def _trust(rule_id: str, rule: AlertRule, cube: Cube) -> pd.DataFrame | str:
    t = cube.trust
    known = set(t["check"].astype(str))
    if rule.check != "any" and rule.check not in known:
        raise ConfigError(f"{_where(rule_id, 'check')}: unknown trust check {rule.check!r}"
                          f"{did_you_mean(str(rule.check), known)}; allowed: any, {', '.join(sorted(known))}")
    rows = t if rule.check == "any" else t[t["check"] == rule.check]
    if not rows["available"].astype(bool).any():
        reasons = rows["na_reason"].dropna().astype(str)
        return reasons.iloc[0] if len(reasons) else f"trust check {rule.check} is not available"
    statuses = ["fail"] if rule.status == "fail" else ["warn", "fail"]
    found = rows[rows["status"].isin(statuses) & rows["available"].astype(bool) & _levels(rule, rows["level"])]
    return _frame(found, rule_id, subject=found["check"].astype(str), subject_name=found["label"].astype(str),
                  value=found["value"].astype(float), threshold=found["fail" if rule.status == "fail" else "warn"]
                  .astype(float), unit=found["unit"].astype(str), period=str(cube.meta["closed_period"]),
                  amount=found["amount"].astype(float), count=found["count"].astype("Float64").astype(float))


def _gap(rule_id: str, rule: AlertRule, cube: Cube) -> pd.DataFrame | str:
    period = str(cube.meta["forward_period"])
    k = cube.kpis[(cube.kpis["period"] == period) & cube.kpis["dim"].isna()]
    gap = k[k["kpi"] == "gap_to_target"].set_index("owner_id")
    target = k[k["kpi"] == "forecast_expected"].set_index("owner_id")["target"]
    if gap.empty or not (gap["available"].astype(bool) & gap["value"].notna()).any():
        reasons = gap["na_reason"].dropna().astype(str) if not gap.empty else pd.Series(dtype=str)
        return reasons.iloc[0] if len(reasons) else f"gap_to_target has no value for {period} (needs targets)"
    gap = gap[gap["value"].notna() & _levels(rule, gap["level"])].assign(target=target)
    share = gap["value"] / gap["target"].where(gap["target"] > 0)
    hit = pd.Series(True, index=gap.index)
    if rule.gap_share_above is not None:
        hit &= share > rule.gap_share_above
    if rule.gap_above is not None:
        hit &= gap["value"] > rule.gap_above
    left = days_left(cube)
    if rule.days_left_below is not None and not left < rule.days_left_below:
        hit &= False
    found = gap[hit.fillna(False).astype(bool)].reset_index()
    return _frame(found, rule_id, subject="", subject_name="Forecast gap to target", value=found["value"],
                  threshold=found["target"], unit="currency", period=period, amount=found["target"],
                  days_left=left)


def _deal(rule_id: str, rule: AlertRule, cube: Cube) -> pd.DataFrame | str:
    f = cube.facts
    if rule.pushes_at_least is not None and ("pushes" not in f.columns or f["pushes"].isna().all()):
        return NEEDS_HISTORY
    open_ = f[~f["is_closed"].astype("boolean").fillna(False).astype(bool)]
    hit = pd.Series(True, index=open_.index)
    if rule.amount_above is not None:
        hit &= open_["amount"].astype(float) > rule.amount_above
    if rule.pushes_at_least is not None:
        hit &= pd.to_numeric(open_["pushes"], errors="coerce").fillna(0) >= rule.pushes_at_least
    deals = open_[hit.astype(bool)]
    # each deal alerts every owner whose scope holds it (its owner and their managers) at the rule's levels
    per_scope = deals[["opportunity_id", "scope_ids"]].explode("scope_ids").dropna(subset=["scope_ids"])
    levels = cube.owners.set_index("owner_id")["level"].astype(str)
    per_scope = per_scope.assign(owner_id=per_scope["scope_ids"].astype(str))
    per_scope = per_scope.assign(level=per_scope["owner_id"].map(levels))
    per_scope = per_scope[per_scope["level"].notna() & _levels(rule, per_scope["level"])]
    found = per_scope[["opportunity_id", "owner_id", "level"]].merge(
        deals[["opportunity_id", "name", "amount", "pushes", "close_date"]], on="opportunity_id")
    return _frame(found, rule_id, subject=found["opportunity_id"].astype(str), subject_name=found["name"].astype(str),
                  value=pd.to_numeric(found["pushes"], errors="coerce").astype(float),
                  threshold=float(rule.pushes_at_least or np.nan), unit="count",
                  period=str(cube.meta["forward_period"]), amount=found["amount"].astype(float),
                  close_date=pd.to_datetime(found["close_date"]).dt.strftime("%Y-%m-%d"))


_EVALUATORS = {"kpi": _kpi, "trust": _trust, "forecast_gap": _gap, "deal": _deal}


def evaluate(rules: AlertsConfig, cube: Cube) -> Evaluation:
    """Every alert of `rules` true in `cube`, sorted by rule, owner and subject; rules lacking data are noted."""
    found, notes = [], {}
    for rule_id, rule in rules.rules.items():
        result = _EVALUATORS[rule.type](rule_id, rule, cube)
        if isinstance(result, str):
            notes[rule_id] = result
        else:
            found.append(result)
    alerts = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=ALERT_COLUMNS)
    alerts = alerts.sort_values(["rule_id", "owner_id", "subject"], kind="stable").reset_index(drop=True)
    return Evaluation(alerts[ALERT_COLUMNS], notes, date.fromisoformat(str(cube.meta["as_of"])),
                      str(cube.meta["forward_period"]), days_left(cube))
