"""The trust checks' declarations (SPEC §6): what each shows, what data it needs and its default threshold.

The computation of each check lives in spm_lib.engine.trust; the data layer reads `NEEDS` here to say which checks a
missing table or column makes unavailable. A check registered later (engine.trust.register) adds its needs too.
"""

from __future__ import annotations

from dataclasses import dataclass

from spm_lib.config import Threshold

__all__ = ["BUILTIN", "NEEDS", "CheckInfo"]


@dataclass(frozen=True)
class CheckInfo:
    """One trust check's declaration: id, label, definition, the data it needs and its default threshold."""

    id: str
    label: str
    definition: str
    needs: tuple[str, ...]  # 'table' or 'table.column'
    default: Threshold  # the rule for every level unless config/trust.yml names a threshold for the check


BUILTIN: dict[str, CheckInfo] = {c.id: c for c in [
    CheckInfo("forecast_deviation_pct", "Forecast accuracy",
              "(actual bookings of last month − forecast submitted at its start) / that forecast, in %",
              ("forecasts",), Threshold(warn=10, fail=25, unit="pct")),
    CheckInfo("opps_past_close_date", "Close date in the past",
              "open opportunities whose close date is before the as-of date",
              ("opportunities.close_date",), Threshold(warn=0, fail=0.10, unit="material")),
    CheckInfo("opps_stale_60d", "Stale opportunities",
              "open opportunities not updated for 60 days or more (config trust.stale_days)",
              ("opportunities.last_modified_date",), Threshold(warn=0.05, fail=0.10, unit="material")),
    CheckInfo("opps_early_stage_closing_30d", "Early stage, closing soon",
              "open opportunities closing within 30 days but still in one of the first two stages",
              ("opportunities.close_date", "opportunities.stage"), Threshold(warn=0.05, unit="rate")),
    CheckInfo("opps_missing_fields", "Missing amount or close date",
              "open opportunities without an amount or without a close date",
              (), Threshold(warn=0, fail=0.10, unit="material")),
    CheckInfo("opps_pushed", "Pushed deals",
              "open opportunities whose close date moved later 3 or more times",
              ("opportunity_history.close_date",), Threshold(warn=0.10, unit="rate")),
    CheckInfo("deals_no_activity", "No recent activity",
              "open opportunities with no activity logged on them in the last 30 days",
              ("activities.opportunity_id",), Threshold(warn=0.10, unit="rate")),
    CheckInfo("deals_stalled_in_stage", "Stalled in stage",
              "open opportunities in their stage for more than 1.5 × the usual (median) time",
              ("opportunity_history.stage",), Threshold(warn=0.10, unit="rate")),
    CheckInfo("deals_amount_decreased", "Amount decreased",
              "open opportunities whose amount was lowered",
              ("opportunity_history.amount",), Threshold(warn=0.10, unit="rate")),
]}
NEEDS: dict[str, tuple[str, ...]] = {c.id: c.needs for c in BUILTIN.values()}  # every declared check, custom too
