"""The HTML side of a report: helpers that escape CRM text, the vendored plotly.js bundle, and the slim,
self-contained, deterministic export (checked in a real headless Chromium, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import plotly.offline
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from spm_lib import charts
from spm_lib.export import PLOTLY_JS, export_html, write_atomic
from spm_lib.html import Html, RenderError, badge, banner, details, div_id, figure_html, fmt_value, table_html

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "spm_lib" / "static"
CHROMIUM = "/usr/bin/chromium"
XSS = "<script>alert(1)</script>"


# ---------------------------------------------------------------- the vendored bundle
def test_vendored_bundle_is_the_plotly_js_version_plotly_python_expects() -> None:
    expected = plotly.offline.get_plotlyjs_version()
    js = PLOTLY_JS.read_text(encoding="utf-8")
    header = re.search(r"plotly\.js \(finance - minified\) v(\d+\.\d+\.\d+)", js[:400])
    assert header is not None and header.group(1) == expected
    assert f'version="{expected}"' in js  # Plotly.version
    assert 1_000_000 < len(js.encode()) < 1_600_000  # the finance partial bundle, not the 4.8 MB full one


def test_vendored_bundle_ships_with_its_licence_and_provenance() -> None:
    assert "MIT License" in (STATIC / "LICENSE-plotly.js.txt").read_text(encoding="utf-8")
    readme = (STATIC / "README.md").read_text(encoding="utf-8")
    assert plotly.offline.get_plotlyjs_version() in readme and "npm pack" in readme


def test_report_css_stays_small() -> None:
    assert (STATIC / "report.css").stat().st_size <= 30 * 1024


# ---------------------------------------------------------------- html helpers
@pytest.mark.parametrize(("value", "unit", "currency", "expected"), [
    (1_234_567, "currency", "EUR", "1.2M €"),
    (120_000, "currency", "EUR", "120k €"),
    (12_500, "currency", "USD", "$12.5k"),
    (-90_000, "currency", "GBP", "-£90k"),
    (2_500_000_000, "currency", "SEK", "2.5B SEK"),
    (850, "currency", "EUR", "850 €"),
    (1234, "count", "EUR", "1,234"),
    (7, "count", "EUR", "7"),
    (31.0, "pct", "EUR", "31 %"),
    (4.54, "pct", "EUR", "4.5 %"),
    (12, "days", "EUR", "12 days"),
    (1, "days", "EUR", "1 day"),
    (1.4, "ratio", "EUR", "1.4×"),
    (float("nan"), "currency", "EUR", "—"),
    (None, "pct", "EUR", "—"),
    (pd.NA, "count", "EUR", "—"),
])
def test_fmt_value(value: object, unit: str, currency: str, expected: str) -> None:
    assert fmt_value(value, unit, currency) == expected


def test_fmt_value_rejects_an_unknown_unit_with_a_hint() -> None:
    with pytest.raises(RenderError, match=r"unknown unit 'pcts' \(did you mean 'pct'\?\)"):
        fmt_value(1, "pcts", "EUR")


def test_div_id_is_a_stable_safe_slug() -> None:
    assert div_id("rep-001", "pipeline") == "fig-rep-001-pipeline"
    assert div_id("rep-001", "pipeline") == div_id("rep-001", "pipeline")
    odd = div_id('O"wner 7/<x>', "Trend")
    assert re.fullmatch(r"fig-[a-z0-9-]+", odd) and odd.startswith("fig-o-wner-7-x-trend-")
    # ids that only differ in characters the slug drops stay distinct
    assert div_id("u_1", "kpis") != div_id("u-1", "kpis")


def test_table_html_escapes_every_cell_and_header() -> None:
    df = pd.DataFrame({"account": [XSS, "Acme & Sons"], "amount": [1500.0, np.nan]})
    out = table_html(df, {"account": "Account <name>", "amount": "Amount"},
                     {"amount": lambda v: fmt_value(v, "currency", "EUR")})
    assert XSS not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "Acme &amp; Sons" in out and "Account &lt;name&gt;" in out
    assert '<td class="num">1.5k €</td>' in out and '<td class="num">—</td>' in out
    assert out.startswith('<table class="spm-table">')
    wide = table_html(df, {"account": "A"}, classes="spm-kpis wide")
    assert wide.startswith('<table class="spm-table spm-kpis wide">')


def test_table_html_keeps_badges_from_formatters_and_shows_empty_tables() -> None:
    df = pd.DataFrame({"kpi": ["Bookings"], "status": ["red"]})
    out = table_html(df, {"kpi": "KPI", "status": "Status"}, {"status": lambda s: badge(s, s)})
    assert '<td><span class="spm-badge spm-badge-red">red</span></td>' in out
    empty = table_html(df.iloc[:0], {"kpi": "KPI", "status": "Status"})
    assert '<td class="spm-empty" colspan="2">No data for this period</td>' in empty
    with pytest.raises(RenderError, match="needs the column"):
        table_html(df, {"kpis": "KPI"})


def test_table_html_keeps_short_text_columns_on_one_line() -> None:
    df = pd.DataFrame({"id": ["opp-0031228"], "note": ["no activity for 64 days"]})
    out = table_html(df, {"id": "Id", "note": "What is wrong"})
    assert '<td class="short">opp-0031228</td><td>no activity for 64 days</td>' in out


def test_helpers_return_plain_strings_that_concatenate_without_surprises() -> None:
    table = table_html(pd.DataFrame({"a": [1]}), {"a": "A"})
    joined = "<h4>Deals</h4>" + table + badge("green", "ok")
    assert type(joined) is str and joined.startswith("<h4>Deals</h4><table")
    assert isinstance(badge("red", "x"), Html) and isinstance(table, str)


def test_badge_banner_and_details_escape_their_text() -> None:
    assert badge("amber", XSS) == '<span class="spm-badge spm-badge-amber">&lt;script&gt;alert(1)&lt;/script&gt;</span>'
    assert 'spm-badge-none' in badge("purple", "x")
    out = banner("warning", "3 stale <deals>", "<p>Review them.</p>")
    assert "3 stale &lt;deals&gt;" in out and "<p>Review them.</p>" in out and 'role="alert"' in out
    assert details("Deals <all>", "<table></table>") == (
        '<details class="spm-details"><summary>Deals &lt;all&gt;</summary><table></table></details>')
    with pytest.raises(RenderError, match="unknown banner kind"):
        banner("danger", "t", "")


def test_figure_html_is_a_fragment_without_plotly_js_in_the_given_div() -> None:
    out = figure_html(charts.pipeline_by_close_month(pd.DataFrame({"month": ["Mar"], "value": [1.0]}), "EUR"),
                      "fig-a-b")
    assert 'id="fig-a-b"' in out and out.count("Plotly.newPlot") == 1
    assert '"displaylogo": false' in out and '"responsive": true' in out
    assert '"showSendToCloud": false' in out  # never offer to upload sales data to Plotly Cloud
    assert "<html" not in out and len(out) < 20_000


# ---------------------------------------------------------------- export
SECTIONS = ["bullets", "forecast", "stage", "trend", "team", "tree"]


def six_figures() -> dict[str, object]:
    rows = pd.DataFrame({"label": ["Bookings", "Win rate"], "value": [1.2e6, 31.0], "target": [1.5e6, 30.0],
                         "attainment": [0.8, 31 / 30], "status": ["red", "green"], "unit": ["currency", "pct"],
                         "definition": ["Won value.", "Won / closed."]})
    return {
        "bullets": charts.attainment_bullets(rows, "EUR"),
        "forecast": charts.forecast_vs_target(1.0e6, 230e3, 1.5e6, "Bookings", "EUR"),
        "stage": charts.pipeline_by_stage(pd.DataFrame({"stage": ["Qualify", "Proposal"], "value": [8e5, 4e5],
                                                        "count": [20, 8]}), "EUR"),
        "trend": charts.trend(pd.DataFrame({"period": ["2026-01", "2026-02"], "value": [1e6, 1.1e6],
                                            "target": [1.2e6, 1.2e6]}), "Bookings", "currency", "EUR"),
        "team": charts.ranked_team(pd.DataFrame({"name": [XSS, "Ann"], "value": [3e5, 4e5], "target": [4e5, 4e5],
                                                 "attainment": [0.75, 1.0], "status": ["red", "green"]}),
                                   "Bookings", "currency", "EUR"),
        "tree": charts.driver_tree(pd.DataFrame({"node": ["b", "w"], "parent": [None, "b"],
                                                 "label": ["Bookings", "Win rate"], "unit": ["currency", "pct"],
                                                 "required": [1.5e6, 33.0], "actual": [1.2e6, 31.0],
                                                 "status": ["red", "amber"]}), "EUR"),
    }


def html_cell(html: str, *, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = new_code_cell("report.show_section()  # SECRET-CODE")
    cell.outputs = [new_output("display_data", data={"text/html": html, "text/plain": "<fig>"})]
    cell.metadata["tags"] = list(tags)
    return cell


def stream_cell(text: str, *, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = new_code_cell("print('SECRET-CODE')")
    cell.outputs = [new_output("stream", name="stdout", text=text)]
    cell.metadata["tags"] = list(tags)
    return cell


def error_cell(message: str, *, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = new_code_cell("report.broken()  # SECRET-CODE")
    cell.outputs = [new_output("error", ename="KpiError", evalue=message, traceback=[f"KpiError: {message}"])]
    cell.metadata["tags"] = list(tags)
    return cell


def report_notebook() -> nbformat.NotebookNode:
    cells = [new_markdown_cell("# Bookings report: Ann Lee\nMonthly · March 2026"),
             html_cell(banner("warning", "Trust", "<p>3 stale deals worth 120k €</p>")),
             stream_cell("loading run… SHOWN-STREAM\n"),
             stream_cell("kernel chatter HIDDEN-STREAM\n", tags=("hide-output",)),
             error_cell("HIDDEN-ERROR", tags=("hide-output",)),
             error_cell("SHOWN-ERROR no target for bookings")]
    for section, fig in six_figures().items():
        cells += [new_markdown_cell(f"## {section.title()}"), html_cell(figure_html(fig, div_id("ann", section)))]
    cells.append(html_cell(details("Below the line: deals", table_html(
        pd.DataFrame({"account": [XSS], "amount": [1.0]}), {"account": "Account", "amount": "Amount"}))))
    return new_notebook(cells=cells)


@pytest.fixture(scope="module")
def exported() -> str:
    return export_html(report_notebook(), "Ann Lee <March 2026>")


def test_export_is_small_and_carries_every_figure_once(exported: str) -> None:
    assert len(exported.encode("utf-8")) < 1_500_000
    assert exported.count("Plotly.newPlot(") == 6
    assert exported.count('class="plotly-graph-div"') == 6
    for section in SECTIONS:
        assert exported.count(f'<div id="fig-ann-{section}" class="plotly-graph-div"') == 1
    assert exported.count(PLOTLY_JS.read_text(encoding="utf-8")) == 1  # the bundle, inline, once
    assert exported.index("plotly.js (finance - minified)") < exported.index("</head>")


def test_export_has_no_remote_scripts_styles_require_js_or_mathjax(exported: str) -> None:
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", exported, flags=re.IGNORECASE)
    assert not [t for t in tags if re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", t)]
    assert not re.search(r"<script[^>]*\bsrc=", exported)
    assert "require.min.js" not in exported and "MathJax.js" not in exported and "cdn.jsdelivr" not in exported


def test_export_hides_code_and_tagged_noise_but_shows_failures(exported: str) -> None:
    assert "SECRET-CODE" not in exported and "In&nbsp;[" not in exported
    assert "SHOWN-STREAM" in exported and "HIDDEN-STREAM" not in exported
    assert "HIDDEN-ERROR" not in exported
    assert "This part of the report failed: KpiError: SHOWN-ERROR no target for bookings" in exported
    assert "<title>Ann Lee &lt;March 2026&gt;</title>" in exported
    assert XSS not in exported.split("</head>", 1)[1]


def test_the_same_notebook_gives_the_same_html_whatever_the_cell_ids(exported: str) -> None:
    renamed = report_notebook()
    for i, cell in enumerate(renamed.cells):
        cell.id = f"other-{i}"
    assert export_html(renamed, "Ann Lee <March 2026>") == exported
    assert "cell-id=" not in exported


def test_widget_and_javascript_outputs_leave_no_random_ids() -> None:
    cell = new_code_cell("slider")
    cell.outputs = [new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "IntSlider(value=3)"}),
        new_output("display_data", data={"application/javascript": "alert('JS-OUTPUT')"})]
    nb = new_notebook(cells=[cell])
    without_state = export_html(nb, "w")
    assert "IntSlider(value=3)" in without_state and "JS-OUTPUT" not in without_state
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {"abc": {"model_name": "IntSliderModel", "model_module": "@jupyter-widgets/controls",
                          "model_module_version": "2.0.0", "state": {"value": 3}}},
        "version_major": 2, "version_minor": 0}}
    with_state = export_html(nb, "w")
    assert with_state == export_html(nb, "w")
    assert "open the live report" in with_state and "widget-state" not in with_state


def test_write_atomic_replaces_the_file_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "rep" / "ann.html"
    write_atomic(target, "first")
    write_atomic(target, "second é")
    assert target.read_text(encoding="utf-8") == "second é"
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text(encoding="utf-8") == "second é"  # a failed write leaves the old report whole
    assert [p.name for p in target.parent.iterdir()] == ["ann.html"]


def test_write_atomic_gives_the_permissions_a_plain_write_would(tmp_path: Path) -> None:
    plain = tmp_path / "plain.html"
    plain.write_text("x", encoding="utf-8")
    atomic = write_atomic(tmp_path / "atomic.html", "x")
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's private 0600
    atomic.chmod(0o640)
    write_atomic(atomic, "y")
    assert atomic.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode


def test_charts_really_draw_offline_in_headless_chromium(tmp_path: Path, exported: str) -> None:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`"
    from playwright.sync_api import sync_playwright

    page_file = write_atomic(tmp_path / "report.html", exported)
    shots = ROOT / "test-output"
    shots.mkdir(exist_ok=True)
    remote: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-quic", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.route(re.compile(r"^(?!file:).*"), lambda route: (remote.append(route.request.url), route.abort()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_file.as_uri())
            page.wait_for_function("document.querySelectorAll('.plotly-graph-div .main-svg').length >= 6")
            drawn = page.evaluate("""Array.from(document.querySelectorAll('.plotly-graph-div'))
                                      .map(d => [d.id, d.querySelector('.main-svg') !== null])""")
            buttons = set(page.evaluate("""Array.from(document.querySelectorAll('.modebar-btn'))
                                           .map(b => b.getAttribute('data-title'))"""))
            page.screenshot(path=str(shots / "export_sample_report.png"), full_page=True)
        finally:
            browser.close()
    assert drawn == [[f"fig-ann-{s}", True] for s in SECTIONS]
    assert remote == [] and errors == []
    assert "Download plot as a PNG" in buttons and "Share chart..." not in buttons and "Lasso Select" not in buttons
