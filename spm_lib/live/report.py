"""A live report: the batch report with its interactive panels, opened from a verified request in a kernel.

`load_live` runs in a kernel of `spm serve`: it warms up before anyone asks (cube read, indexes built, plotly and
ipywidgets imported), waits for its request, verifies it again and opens that owner's `LiveReport`, or a `Refusal`.
`LiveReport` is the batch `Report` whose `_panel` hook adds the drill-down, what-if, deals-behind and action-form
panels of spm_lib.live.widgets; every number comes from the same cube.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

from spm_lib.config import cached_config
from spm_lib.domain import links
from spm_lib.domain.org import org_of
from spm_lib.engine.cube import Cube
from spm_lib.engine.slices import owner_kpis, scope_positions
from spm_lib.errors import OrgError, RunError, SpmError
from spm_lib.live import request as live
from spm_lib.live import widgets
from spm_lib.report import charts, markup
from spm_lib.report.core import Html, Report, esc, latest_run, load_cube, project_root
from spm_lib.state import revocations
from spm_lib.store.runfolder import has_cube

KERNEL_NICE = 10  # live kernels' niceness: the server (the read path) always comes first


class LiveReport(Report):
    """The batch report with the live panels around its sections (drill-down, what-if, deals behind, actions)."""

    live = True

    def _panel(self, section: str, static: Html) -> Html:
        """The section's static HTML with its interactive panel."""
        if section == "forward_look":
            return widgets.Live(static.body, widgets.what_if_panel(self))
        if section == "where_to_focus" and not self.reports.empty:
            return widgets.Live(static.body, widgets.drill_down(self))
        if section == "actions":
            form = widgets.action_form(self)  # shows the register itself, refreshed after each change
            return widgets.Live(form.register.value, form, show_body=False)
        if section == "below_the_line":
            tree = self.cube.decomposition[self.cube.decomposition["owner_id"] == self.owner_id]
            panels = [widgets.deals_behind_panel(self)] + ([widgets.what_if_panel(self)] if not tree.empty else [])
            return widgets.Live(static.body, widgets.w.VBox(panels))
        return static


class Refusal:
    """What a live page shows when its request cannot be served: a plain refusal, no numbers, no traceback."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.live = True

    def header(self) -> Html:
        """The refusal notice (the only thing the page shows)."""
        return Html(markup.banner("error", live.REFUSAL_TITLE, f"<p>{esc(self.reason)}.</p><p>Ask the person who "
                                "sent you the link for a new one.</p>"))

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: Html("")  # every other section shows nothing


def _live_run(cadence: str, as_of: date | None) -> Path:
    """The run folder a live page reads: the requested or pinned as-of, else the latest run of the cadence."""
    day = as_of or live.pinned_as_of()
    return project_root() / "runs" / cadence / day.isoformat() if day else latest_run(cadence)


def below_the_server() -> None:
    """Run this kernel at a lower CPU priority than the server (niceness KERNEL_NICE): a pool refill warming up never
    slows down a page the server is sending."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(KERNEL_NICE, os.getpriority(os.PRIO_PROCESS, 0)))
    except (AttributeError, OSError):  # not a POSIX system, or not allowed: the kernel keeps its priority
        pass


def warm_up(cadence: str) -> Cube | None:
    """Before the request: read the cube live pages will most likely need and build its per-owner indexes."""
    below_the_server()
    try:
        cube = load_cube(_live_run(cadence, None))
        first = str(cube.owners["owner_id"].iloc[0])
        owner_kpis(cube, first)
        scope_positions(cube, first)
        charts.warm_up()
        cached_config()
        org_of(cube.owners).subtree(first)
        return cube
    except Exception:  # noqa: BLE001 - a failed warm-up is retried after the request, where errors are shown
        return None


def load_live(level: str | None, cadence: str) -> LiveReport | Refusal:
    """Live: warm up, wait for the request, verify it again in the kernel and open that owner's report (or refuse)."""
    warm = warm_up(cadence)
    query = live.receive_query()
    try:
        secret = links.secret_from_env()
        owners = warm.owners if warm is not None else load_cube(_live_run(cadence, None)).owners
        req = live.parse_request(query, owners, secret=secret, level=level, cadence=cadence,
                                 revoked=lambda c: revocations.read(cached_config()).revoked(c))
        folder = _live_run(cadence, req.as_of)
        if not has_cube(folder):
            raise RunError(f"there is no {cadence} report as of {folder.name}")
        cube = load_cube(folder)  # the newest run: a kernel warmed on an older run reloads here
        if req.owner_id not in set(cube.owners["owner_id"].astype(str)):
            raise OrgError(f"owner {req.owner_id} has no report in the run as of {folder.name}")
        return LiveReport(cube=cube, owner_id=req.owner_id, run_dir=folder, viewer_id=req.viewer_id)
    except SpmError as e:
        return Refusal(str(e).rstrip("."))
