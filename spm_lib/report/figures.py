"""An owner's email charts: the 2-4 key figures of their report, saved as plotly JSON beside it by `spm run`.

`spm run` saves them from the warm kernel that rendered the report (its figures are drawn already), by calling
`save_from_namespace`; `spm send` reads them back and draws them as images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plotly.io.json import to_json_plotly

from spm_lib.report.core import Report
from spm_lib.util.atomic import write_atomic

EMAIL_CHARTS = ("attainment", "forecast", "trend", "pipeline-stage")  # the key charts, in this order, at most 4
FIGURES_SUFFIX = ".email.json"

__all__ = ["EMAIL_CHARTS", "FIGURES_SUFFIX", "email_figures", "figures_json", "figures_path", "save_from_namespace",
           "write_figures"]


def email_figures(rpt: Any) -> dict[str, Any]:
    """The 2-4 key charts of an owner's email (attainment, forecast, trend, pipeline by stage), by key."""
    figs = rpt.figures()
    if not any(k in figs for k in EMAIL_CHARTS):  # the report's sections have not been drawn yet
        rpt.above_the_line()
        rpt.forward_look()
        figs = rpt.figures()
    return {k: figs[k] for k in EMAIL_CHARTS if k in figs}


def figures_path(report_html: str | Path) -> Path:
    """Where `spm run` keeps an owner's email charts: beside their report, <level>/<owner>.email.json."""
    return Path(report_html).with_suffix(FIGURES_SUFFIX)


def figures_json(rpt: Any) -> str:
    """The owner's email charts as plotly JSON text ({key: figure}), in email order."""
    return str(to_json_plotly({k: f.to_plotly_json() for k, f in email_figures(rpt).items()}))


def write_figures(rpt: Any, report_html: str | Path) -> Path:
    """Save the owner's email charts beside their report (done by `spm run`; `spm send` draws them)."""
    return write_atomic(figures_path(report_html), figures_json(rpt))


def save_from_namespace(namespace: dict[str, Any], report_html: str) -> bool:
    """Save the email charts of the notebook's own `rpt` (a kernel's globals); False when it has no Report."""
    rpt = namespace.get("rpt")
    if not isinstance(rpt, Report):
        return False
    write_figures(rpt, report_html)
    return True
