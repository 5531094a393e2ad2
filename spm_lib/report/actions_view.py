"""The report's "Decisions and actions" section: the owner's open actions and those closed since the last session."""

from __future__ import annotations

from typing import Any

import pandas as pd
from markupsafe import escape

from spm_lib.config import cached_config
from spm_lib.metrics import kpis as registry
from spm_lib.report import markup
from spm_lib.state.actions import for_report

STATUS_BADGE = {"open": "none", "done": "green", "dropped": "none"}

__all__ = ["actions_html"]


def _kpi_label(kpi_id: object) -> str:
    k = registry.REGISTRY.get(str(kpi_id))
    return k.label if k is not None else str(kpi_id)


def _day(value: Any) -> str:
    return str(pd.Timestamp(value).date())


def actions_html(rpt: Any) -> str:
    """The report's 'Decisions and actions' section: open actions (overdue marked), those closed since last session."""
    cfg = cached_config()
    df = for_report(cfg, rpt.owner_id, rpt.cadence, rpt.as_of)
    df["closed_at"] = df["closed_at"].dt.tz_localize("UTC").dt.tz_convert(cfg.company.timezone)  # company's day
    open_ = df[df["status"] == "open"]
    open_ = open_.assign(state=open_["overdue"].astype(bool).map({True: "overdue", False: "open"}))
    closed = df[df["status"] != "open"]
    late = int((open_["state"] == "overdue").sum())
    parts = [f"<h4>Open actions ({len(open_)}{f', {late} overdue' if late else ''})</h4>",
             markup.table_html(open_, {"text": "Action", "kpi": "KPI to move", "support_asked": "Support asked",
                                     "due_date": "Due", "state": "Status", "period": "Agreed in"},
                             {"kpi": _kpi_label, "due_date": _day,
                              "state": lambda s: markup.badge("red" if s == "overdue" else "none", s)},
                             empty_text="No open actions."),
             f"<h4>Closed since the last session (since the start of {escape(str(rpt.closed))})</h4>",
             markup.table_html(closed, {"text": "Action", "kpi": "KPI to move", "status": "Status",
                                      "closed_at": "Closed", "updated_by": "By"},
                             {"kpi": _kpi_label, "closed_at": _day,
                              "status": lambda s: markup.badge(STATUS_BADGE.get(s, "none"), s)},
                             empty_text="No action closed since the last session."),
             '<p class="spm-muted">New actions are agreed in the session and recorded in the live report; '
             "the owner of the numbers owns them, with the support they ask of their leader.</p>"]
    return markup.Html("".join(parts))
