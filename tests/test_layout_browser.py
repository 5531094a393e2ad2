"""Every template of every level and cadence, rendered by `spm run` and opened in headless Chromium at 1440 and
390 px: no sideways scrolling, no overlapping or cut-off text in a chart, no chart of fewer than 2 points.

The screenshots stay in the test's tmp folder and are copied to test-output/layout/ (the failure names them).
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from spm_lib.batch.runner import run
from spm_lib.config import load_config
from spm_lib.report.charts import NO_DATA

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "layout"
AS_OF = {"weekly": date(2026, 10, 25), "monthly": date(2026, 10, 31), "quarterly": date(2026, 9, 30),
         "annual": date(2025, 12, 31)}
WIDTHS = (1440, 390)
LEVELS = ("rep", "manager", "director", "executive")
TOLERANCE_PX = 1.5  # text boxes may touch; a real overlap or cut is larger

# Opens every collapsed block before the charts draw, so that the charts below the line are checked (and shown) too.
OPEN_DETAILS = "document.addEventListener('DOMContentLoaded', () => " \
               "document.querySelectorAll('details').forEach(d => { d.open = true; }));"
ALL_DRAWN = "[...document.querySelectorAll('.plotly-graph-div')].every(d => Boolean(d._fullLayout))"
MEASURE = """(tol) => {
  const boxes = (gd) => [...gd.querySelectorAll('svg text')]
    .filter(t => t.textContent.trim() && !t.closest('.hoverlayer'))
    .map(t => { const r = t.getBoundingClientRect();
                return {s: t.textContent.trim(), x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; })
    .filter(b => b.x1 - b.x0 > 0 && b.y1 - b.y0 > 0);
  const figures = [...document.querySelectorAll('.plotly-graph-div')].map(gd => {
    const r = gd.getBoundingClientRect();
    const shown = r.width > 0 && r.height > 0;
    const b = shown ? boxes(gd) : [];
    const overlaps = [];
    for (let i = 0; i < b.length; i++) for (let j = i + 1; j < b.length; j++) {
      const w = Math.min(b[i].x1, b[j].x1) - Math.max(b[i].x0, b[j].x0);
      const h = Math.min(b[i].y1, b[j].y1) - Math.max(b[i].y0, b[j].y0);
      if (w > tol && h > tol) overlaps.push([b[i].s, b[j].s]);
    }
    const cut = b.filter(x => x.x0 < r.left - tol || x.x1 > r.right + tol).map(x => x.s);
    const lines = shown ? [...gd.querySelectorAll('.shapelayer path, .scatterlayer path.js-line')]
      .map(p => p.getBoundingClientRect()).filter(l => l.width < 4 || l.height < 4) : [];
    const crossed = b.filter(x => lines.some(l => Math.min(x.x1, l.right + 1) - Math.max(x.x0, l.left - 1) > 1
                                               && Math.min(x.y1, l.bottom + 1) - Math.max(x.y0, l.top - 1) > 1))
      .map(x => x.s);
    const data = gd._fullData || [];
    const notes = ((gd._fullLayout || {}).annotations || []).map(a => a.text);
    return {id: gd.id, shown, overlaps, cut, crossed, traces: data.length,
            points: Math.max(0, ...data.map(t => t._length ?? 0)), notes};
  });
  const scrollers = [...document.querySelectorAll('body *')]
    .filter(e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowX) && e.scrollWidth > e.clientWidth + 1)
    .map(e => [...e.querySelectorAll('table')].find(t => t.getBoundingClientRect().width > e.clientWidth + 1) || e)
    .map(t => (t.querySelector('caption, th') || t).textContent.trim().slice(0, 40));
  return {scroll: document.documentElement.scrollWidth, width: window.innerWidth, figures, scrollers};
}"""


@pytest.fixture(scope="module")
def reports(small_project: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[dict[tuple[str, str], Path], list[str]]:
    """(level, cadence) -> the HTML report of the first owner of that level rendered, from one `spm run` per
    cadence; and the reports that failed ('<cadence> <owner>: <error>')."""
    root = tmp_path_factory.mktemp("layout") / "p"
    shutil.copytree(small_project, root)
    cfg = load_config(root)
    out: dict[tuple[str, str], Path] = {}
    failed = []
    for cadence, as_of in AS_OF.items():
        manifest = run(cfg, cadence, as_of, workers=2, progress=False)
        for owner_id in sorted(manifest["owners"]):
            o = manifest["owners"][owner_id]
            if o["status"] == "ok":
                out.setdefault((o["level"], cadence), Path(o["html"]))
            else:
                failed.append(f"{cadence} {owner_id}: {str(o['error'])[-300:]}")
    return out, failed


def problems(measured: dict[str, Any]) -> list[str]:
    """What a reader would trip over on one page at one width, in words (empty when nothing)."""
    found = []
    if measured["scroll"] > measured["width"]:
        found.append(f"the page scrolls sideways: {measured['scroll']} px wide in a {measured['width']} px window")
    if measured["scrollers"]:
        found.append(f"blocks scroll sideways (their first heading): {measured['scrollers'][:5]}")
    for f in measured["figures"]:
        if f["overlaps"]:
            found.append(f"{f['id']}: overlapping text {f['overlaps'][:3]}")
        if f["crossed"]:
            found.append(f"{f['id']}: a line runs through text {f['crossed'][:3]}")
        if f["cut"]:
            found.append(f"{f['id']}: text cut off at the chart's edge {f['cut'][:3]}")
        if f["traces"] == 0 and NO_DATA not in f["notes"]:
            found.append(f"{f['id']}: an empty chart that does not say there is no data")
        if f["traces"] > 0 and f["points"] < 2:
            found.append(f"{f['id']}: a chart of {f['points']} point(s)")
    return found


def test_every_template_reads_at_desktop_and_phone_width(
        reports: tuple[dict[tuple[str, str], Path], list[str]], browser: Browser, tmp_path: Path) -> None:
    pages, failures = reports[0], [f"report failed: {f}" for f in reports[1]]
    templates = {tuple(p.stem.split("_")) for p in (ROOT / "templates").glob("*.ipynb")}
    assert set(pages) == templates and len(templates) == 13, failures
    SHOTS.mkdir(parents=True, exist_ok=True)
    shown = 0
    for (level, cadence), html in sorted(pages.items(), key=lambda kv: (kv[0][1], LEVELS.index(kv[0][0]))):
        for width in WIDTHS:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.add_init_script(OPEN_DETAILS)
            page.goto(html.as_uri(), timeout=120_000)  # a loaded machine (2 shared cores) is slow
            page.wait_for_function(ALL_DRAWN, timeout=120_000)
            page.wait_for_timeout(200)  # responsive figures settle to the width of their (opened) blocks
            measured = page.evaluate(MEASURE, TOLERANCE_PX)
            shot = tmp_path / f"{cadence}_{level}_{width}.png"
            page.screenshot(path=str(shot), full_page=True)
            page.close()
            shutil.copy2(shot, SHOTS / shot.name)
            shown += sum(f["shown"] for f in measured["figures"])
            failures += [f"{cadence} {level} at {width} px ({SHOTS / shot.name}): {p}" for p in problems(measured)]
    assert shown > 13 * 2 * 3  # the checks measured real, drawn charts
    assert not failures, "\n".join(failures)
