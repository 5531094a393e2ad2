"""The HTML side of a report: helpers that escape CRM text, the vendored plotly.js bundle, and the slim,
self-contained, deterministic export (checked in a real headless Chromium, offline)."""

from __future__ import annotations

import base64
import email
import gzip
import re
import shutil
from datetime import date
from email import policy
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import plotly.offline
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from playwright.sync_api import Browser, Page

from spm_lib.batch import export
from spm_lib.batch.export import PLOTLY_JS, export_html, pack_js, write_atomic
from spm_lib.batch.runner import run
from spm_lib.config import StateConfig, load_config
from spm_lib.deliver.compose import send_all
from spm_lib.report import charts
from spm_lib.report.markup import Html, RenderError, badge, banner, details, div_id, figure_html, fmt_value, table_html

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "spm_lib" / "static"
XSS = "<script>alert(1)</script>"
AS_OF = date(2026, 10, 31)
OWNER = "exec-01"  # the demo's executive: the report with the most figures
PACKED = re.compile(r'<script type="application/gzip" data-encoding="base64" id="spm-plotly-gz">([A-Za-z0-9+/=]+)'
                    r'</script>')
ALL_DRAWN = "[...document.querySelectorAll('.plotly-graph-div')].map(d => [d.id, Boolean(d._fullLayout)])"


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


def test_the_packed_bundle_decodes_to_the_vendored_file_and_never_changes() -> None:
    js = PLOTLY_JS.read_bytes()
    packed = pack_js(js)
    raw = base64.b64decode(packed, validate=True)
    assert gzip.decompress(raw) == js  # byte for byte: the vendored .js stays the one source
    assert raw[:4] == b"\x1f\x8b\x08\x00" and raw[4:8] == b"\x00\x00\x00\x00"  # gzip, deflate, mtime 0
    assert pack_js(js) == packed and pack_js(b"abc") == pack_js(b"abc") != pack_js(b"abd")
    assert len(packed) < 0.5 * len(js)  # ~0.57 MB instead of 1.3 MB


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
    # the drawing waits for the report's plotly.js through spmPlot, or runs at once where that is undefined
    script = re.findall(r"<script>(.*?)</script>", out, flags=re.DOTALL)
    assert len(script) == 1 and script[0].startswith("(window.spmPlot || function (draw) { draw(); })(function () {")
    assert script[0].endswith("});") and "Plotly.newPlot(" in script[0]
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


def test_export_is_small_and_carries_every_figure_and_the_packed_bundle_once(exported: str) -> None:
    bundle = PLOTLY_JS.read_bytes()
    size = len(exported.encode("utf-8"))
    assert size < 0.6 * len(bundle)  # the bundle alone was 1.3 MB of the page; packed, it is 0.57 MB
    assert exported.count("Plotly.newPlot(") == exported.count("window.spmPlot ||") == 6
    assert exported.count('class="plotly-graph-div"') == 6
    for section in SECTIONS:
        assert exported.count(f'<div id="fig-ann-{section}" class="plotly-graph-div"') == 1
    packed = PACKED.findall(exported)
    assert len(packed) == 1 and gzip.decompress(base64.b64decode(packed[0])) == bundle  # inline, once
    assert size - len(packed[0]) < 100_000  # everything else: CSS, loader, six figures
    assert "var Plotly=" not in exported  # no plain copy besides
    head = exported.split("</head>", 1)[0]
    assert "<!-- plotly.js (finance - minified) v4.1.1 Copyright 2012-2026, Plotly, Inc." in head  # credit kept
    assert head.index('id="spm-plotly-gz"') < head.index("window.spmPlot = function")


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
    export.forget_assets()  # the bundle packed again (as in a new process) gives the same page
    assert export_html(report_notebook(), "Ann Lee <March 2026>") == exported


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


def open_offline(browser: Browser, page_file: Path, init_script: str = "") -> tuple[Page, list[str], list[str]]:
    """`page_file` opened in a new page with every non-file request recorded and aborted; the page, those
    requests' URLs and the page's errors (both lists fill while the page lives)."""
    remote: list[str] = []
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    if init_script:
        page.add_init_script(init_script)
    page.route(re.compile(r"^(?!file:).*"), lambda route: (remote.append(route.request.url), route.abort()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_file.as_uri())
    return page, remote, errors


def wait_all_drawn(page: Page, n: int) -> list[list[object]]:
    """Wait until the page's `n` figure divs are all drawn by plotly.js; their [id, drawn] pairs."""
    page.wait_for_function(f"{ALL_DRAWN}.length === {n} && {ALL_DRAWN}.every(([, drawn]) => drawn)")
    return page.evaluate(ALL_DRAWN)


def test_charts_really_draw_offline_in_headless_chromium(tmp_path: Path, exported: str, browser: Browser) -> None:
    page_file = write_atomic(tmp_path / "report.html", exported)
    shots = ROOT / "test-output"
    shots.mkdir(exist_ok=True)
    page, remote, errors = open_offline(browser, page_file)
    drawn = wait_all_drawn(page, 6)
    version = page.evaluate("Plotly.version")
    note_hidden = page.locator("#spm-charts-note").is_hidden()
    buttons = set(page.evaluate("""Array.from(document.querySelectorAll('.modebar-btn'))
                                   .map(b => b.getAttribute('data-title'))"""))
    page.screenshot(path=str(shots / "export_sample_report.png"), full_page=True)
    page.close()
    assert drawn == [[f"fig-ann-{s}", True] for s in SECTIONS]
    assert version == plotly.offline.get_plotlyjs_version() and note_hidden
    assert remote == [] and errors == []
    assert "Download plot as a PNG" in buttons and "Share chart..." not in buttons and "Lasso Select" not in buttons


def test_a_browser_without_decompressionstream_shows_a_note_instead_of_charts(
        tmp_path: Path, exported: str, browser: Browser) -> None:
    page_file = write_atomic(tmp_path / "report.html", exported)
    page, remote, errors = open_offline(browser, page_file, init_script="delete window.DecompressionStream;")
    note = page.locator("#spm-charts-note")
    note.wait_for(state="visible")
    text = note.inner_text()
    drawn = page.evaluate(ALL_DRAWN)
    has_plotly = page.evaluate("typeof window.Plotly")
    page.close()
    assert text.startswith("Charts not shown") and "lacks DecompressionStream" in text
    assert drawn == [[f"fig-ann-{s}", False] for s in SECTIONS] and has_plotly == "undefined"
    assert remote == [] and errors == []


def test_figures_draw_at_once_on_a_page_that_loads_plotly_js_itself(tmp_path: Path, browser: Browser) -> None:
    """As on the live Voila page: plotly.js by a plain <script src>, no spmPlot: each figure draws as it comes."""
    figures = "".join(figure_html(fig, div_id("live", name)) for name, fig in six_figures().items())
    page_file = write_atomic(tmp_path / "live.html", f'<!DOCTYPE html><html><head><script src="{PLOTLY_JS.as_uri()}">'
                                                     f"</script></head><body>{figures}</body></html>")
    page, remote, errors = open_offline(browser, page_file)  # returns once the page has loaded
    drawn = page.evaluate(ALL_DRAWN)  # newPlot sets _fullLayout as each figure's script runs: no waiting
    page.close()
    assert drawn == [[div_id("live", name), True] for name in SECTIONS]
    assert remote == [] and errors == []


def test_a_real_report_attached_to_its_email_draws_every_figure_offline(
        small_project: Path, tmp_path: Path, browser: Browser, monkeypatch: pytest.MonkeyPatch) -> None:
    """The executive's report of a real monthly run, taken out of the .eml `spm send --dry-run` writes."""
    root = tmp_path / "p"
    shutil.copytree(small_project, root)
    manifest = run(load_config(root), "monthly", AS_OF, owner=OWNER, workers=1, progress=False)
    cfg = load_config(root)
    cfg = cfg.model_copy(update={"state": StateConfig(url=f"sqlite:///{root / 'state.sqlite'}")})
    run_dir = root / "runs/monthly/2026-10-31"
    monkeypatch.setenv("SPM_LINK_SECRET", "a-test-secret-of-enough-length")
    assert send_all(cfg, run_dir, owner=OWNER, dry_run=True, progress=False).sent == [OWNER]
    msg = email.message_from_bytes((run_dir / "email" / f"{OWNER}.eml").read_bytes(), policy=policy.default)
    attached = [p for p in msg.iter_attachments() if p.get_content_type() == "text/html"]
    assert len(attached) == 1
    report = bytes(attached[0].get_payload(decode=True))
    assert report == Path(manifest["owners"][OWNER]["html"]).read_bytes()
    assert len(report) < 0.6 * PLOTLY_JS.stat().st_size and len(PACKED.findall(report.decode())) == 1
    n_figures = report.decode().count("window.spmPlot ||")
    assert n_figures >= 6 and n_figures == report.decode().count('class="plotly-graph-div"')
    page_file = tmp_path / "attached.html"
    page_file.write_bytes(report)
    page, remote, errors = open_offline(browser, page_file)
    drawn = wait_all_drawn(page, n_figures)
    note_hidden = page.locator("#spm-charts-note").is_hidden()
    page.close()
    assert len(drawn) == n_figures and note_hidden
    assert remote == [] and errors == []


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (0.074, "rate", "7 % of open value"),
    (0.356, "material", "36 % of the forward pipeline"),
    (0.0031, "material", "<1 % of the forward pipeline"),  # 5 deals of 26.3k € in a 8.5M € pipeline: not '0 %'
    (0.0, "rate", "0 % of open value"),
    (float("inf"), "material", "no pipeline closing in the forward period"),
    (-23.4, "pct", "-23 %"),
    (16.0, "count", "16"),
])
def test_trust_value_text_says_what_the_value_is_a_share_of(value: float, unit: str, expected: str) -> None:
    from spm_lib.report.markup import trust_value_text

    assert trust_value_text(value, unit) == expected
