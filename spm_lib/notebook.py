"""The one import of every template: `notebook.load(...)` opens the owner's report where the notebook runs.

In batch (papermill) and JupyterLab it is the static `Report` of the run folder; in a kernel of `spm serve` it is the
`LiveReport` of the verified request (or a refusal), whatever parameters the notebook was given.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from spm_lib.live import request as live
from spm_lib.report.core import Report
from spm_lib.report.core import load as load_static

__all__ = ["load"]


def load(owner_id: str | None = None, cadence: str | None = None, as_of: str | date | None = None,
         run_dir: str | Path | None = None, *, level: str | None = None,
         default_cadence: str = "monthly") -> Report:
    """Open one owner's report: the given run and owner in batch and Lab; live, the verified request's."""
    if live.live_mode():
        from spm_lib.live.report import load_live  # live kernels only: batch never imports ipywidgets

        return load_live(level, cadence or default_cadence)  # type: ignore[return-value] # a Refusal reads alike
    return load_static(owner_id, cadence, as_of, run_dir, level=level, default_cadence=default_cadence)
