"""Live sessions: a real `spm serve` (Voila, preheated kernels) driven by headless Chromium, and its HTTP layer."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import nbformat
import pandas as pd
from nbclient import NotebookClient

from spm_lib.report import core
from spm_lib.store.runfolder import ensure_cube
from tests.live_server import (
    CHARTS_DRAWN,
    LIVE_POOLS,
    SECRET,
    Server,
    free_port,
    live_project,
    report_path,
    screenshot,
    token,
)

ROOT = Path(__file__).resolve().parents[1]
_TD = re.compile(r"<td[^>]*>(.*?)</td>", re.S)
_TAG = re.compile(r"<[^>]+>")


def _cells(fragment: str) -> list[str]:
    """The visible text of every table cell of an HTML fragment."""
    out = []
    for raw in _TD.findall(fragment):
        text = re.sub(r"\s+", " ", _TAG.sub("", raw)).strip()
        if text:
            out.append(html.unescape(text).replace("\xa0", " "))
    return out


def _open(browser, server: Server, path: str, name: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)  # a loaded machine: an interactive page's kernel may take long to run it
    page.goto(server.base + path)
    return page


# ---------------------------------------------------------------- start-up
def test_serve_refuses_to_start_without_the_secret(small_project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPM_LINK_SECRET"}
    env["SPM_PROJECT_DIR"] = str(small_project)
    spm = Path(sys.executable).parent / "spm"
    proc = subprocess.run([str(spm), "serve", "--port", str(free_port())], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "SPM_LINK_SECRET is not set" in proc.stderr and "export SPM_LINK_SECRET=" in proc.stderr


# ---------------------------------------------------------------- what a person sees
def test_owner_sees_their_own_numbers_and_charts(server: Server, org: dict[str, str], browser) -> None:
    mgr = org["manager"]
    batch = core.load(mgr, "monthly", run_dir=org["run"])
    page = _open(browser, server, report_path("manager", "monthly", token(mgr)), "manager")
    page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
    text = page.inner_text("body").replace("\xa0", " ")
    assert batch.name in text and "Manager · monthly session" in text
    assert "This report cannot be opened" not in text
    packed = "".join(text.split())  # a value and its comparison may be laid out on lines of their own
    for cell in _cells(batch.above_the_line().body):  # every value, target, attainment of the cube's KPI table
        assert "".join(cell.split()) in packed, cell
    drawn = page.evaluate("[...document.querySelectorAll('.plotly-graph-div')].filter(d => d._fullLayout).length")
    assert drawn >= 5
    # nothing loaded from another host (JupyterLab's theme links are absolute URLs of this server)
    remote = page.evaluate("[...document.querySelectorAll('script[src], link[href]')]"
                           ".map(e => new URL(e.src || e.href, location.href))"
                           ".filter(u => u.protocol.startsWith('http') && u.origin !== location.origin)"
                           ".map(u => u.href)")
    assert remote == []
    screenshot(page, "manager-monthly")
    page.close()


def test_landing_page_lists_own_reports_and_subtree_only(server: Server, org: dict[str, str], browser) -> None:
    mgr, rep, foreign = org["manager"], org["rep"], org["foreign_rep"]
    owners = pd.read_parquet(Path(org["run"]) / "owners.parquet").set_index("owner_id")
    page = _open(browser, server, f"/?t={token(mgr, 'quarterly')}", "landing-quarterly")
    text = page.inner_text("body")
    assert "Quarterly report" in text and "Monthly report" not in text  # a link opens its own cadence only
    page.close()
    status, body = server.get(f"/?t={token(mgr, 'weekly')}")
    assert status == 200 and "Weekly report" not in body  # managers have no weekly template: their reps do
    page = _open(browser, server, f"/?t={token(mgr)}", "landing")
    text = page.inner_text("body")
    assert owners.loc[mgr, "name"] in text
    assert "Monthly report" in text and "Quarterly report" not in text and "Annual report" not in text
    for r in owners.index[owners["manager_id"] == mgr]:
        assert owners.loc[r, "name"] in text
    assert owners.loc[foreign, "name"] not in text
    screenshot(page, "landing")
    page.click(f"text={owners.loc[rep, 'name']}")  # drill into a rep's report from the landing page
    page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
    body = page.inner_text("body")
    assert owners.loc[rep, "name"] in body and "Sales executive · monthly session" in body
    page.close()


# ---------------------------------------------------------------- who may see what
def _refused(server: Server, browser, path: str, numbers: list[str]) -> None:
    status, body = server.get(path)
    assert status == 403 and "This report cannot be opened" in body
    assert "Traceback" not in body and "plotly-graph-div" not in body
    page = _open(browser, server, path, "refused")
    text = page.inner_text("body")
    assert "This report cannot be opened" in text and "Ask the person who sent you the link" in text
    for n in numbers:
        assert n not in text
    page.close()


def _numbers(run: str, owner: str) -> list[str]:
    rpt = core.load(owner, "monthly", run_dir=run)
    return [rpt.name] + [c for c in _cells(rpt.above_the_line().body) if re.search(r"\d", c) and len(c) > 3]


def test_tampered_expired_and_foreign_links_are_refused(server: Server, org: dict[str, str], browser) -> None:
    mgr, foreign = org["manager"], org["foreign_rep"]
    good = token(mgr)
    tampered = good[:-3] + ("aaa" if not good.endswith("aaa") else "bbb")
    forged_owner = token(foreign).rpartition(".")[0] + "." + good.rpartition(".")[2]  # the rep's body, mgr's signature
    numbers = _numbers(org["run"], mgr)
    _refused(server, browser, report_path("manager", "monthly", tampered), numbers)
    _refused(server, browser, report_path("manager", "monthly", forged_owner), numbers)
    _refused(server, browser, report_path("manager", "monthly", token(mgr, days=-1)), numbers)
    _refused(server, browser, report_path("rep", "monthly", good, owner=foreign), _numbers(org["run"], foreign))
    _refused(server, browser, f"/?t={tampered}", numbers)
    _refused(server, browser, report_path("manager", "monthly", ""), numbers)
    status, body = server.get("/")
    assert status == 403 and "no valid link" in body
    status, body = server.get(f"/?t={token(mgr, days=-1)}")
    assert status == 403 and "expired" in body


def test_voila_file_browser_and_contents_api_are_gone(server: Server, org: dict[str, str]) -> None:
    t = token(org["manager"])
    for path in ("/voila/tree", f"/voila/tree?t={t}", f"/voila/api/contents?t={t}", f"/voila/files/x.ipynb?t={t}"):
        status, body = server.get(path)
        assert status in (403, 404), path
        assert "ipynb" not in body or status == 403


def test_tokens_never_reach_the_log(server: Server, org: dict[str, str]) -> None:
    t = token(org["manager"])
    assert server.get(f"/?t={t}")[0] == 200
    log = server.log.read_text()
    assert "GET /" in log
    assert t not in log and t.split(".")[-1] not in log
    assert "?t=" not in log
    assert "jupyterlab-plotly" not in log  # the 4.8 MB extension is never sent to live pages


# ---------------------------------------------------------------- the kernel fails closed
def _run_template_live(project: Path, env_extra: dict[str, str]) -> str:
    nb = nbformat.read(project / "templates" / "manager_monthly.ipynb", as_version=4)
    env = {**os.environ, "SPM_PROJECT_DIR": str(project), "SPM_LINK_SECRET": SECRET, "SPM_LIVE": "1", **env_extra}
    saved = os.environ.copy()
    os.environ.clear()
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(project)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return "\n".join(str(o.get("data", {}).get("text/html", "")) for c in nb.cells for o in c.get("outputs", []))


def test_a_kernel_that_receives_no_request_shows_the_refusal(server: Server, org: dict[str, str]) -> None:
    # preheated, but the server it would ask (VOILA_APP_IP:VOILA_APP_PORT) is not there: wait_for_request only warns
    out = _run_template_live(server.project, {"VOILA_PREHEAT": "True", "VOILA_KERNEL_ID": "k-1",
                                              "VOILA_APP_IP": "127.0.0.1", "VOILA_APP_PORT": str(free_port()),
                                              "QUERY_STRING": f"t={token(org['manager'])}"})
    assert "This report cannot be opened" in out and "no verified request reached this report" in out
    assert "plotly-graph-div" not in out
    for n in _numbers(org["run"], org["manager"]):
        assert n not in out


def test_a_kernel_refuses_a_foreign_owner_even_when_asked_directly(server: Server, org: dict[str, str]) -> None:
    # not preheated (Voila's fallback path hands the query string over in the environment)
    q = f"t={token(org['manager'])}&owner={org['foreign_rep']}"
    out = _run_template_live(server.project, {"VOILA_PREHEAT": "False", "QUERY_STRING": q})
    assert "This report cannot be opened" in out and "plotly-graph-div" not in out
    ok = _run_template_live(server.project, {"VOILA_PREHEAT": "False",
                                             "QUERY_STRING": f"t={token(org['manager'])}"})
    assert core.load(org["manager"], "monthly", run_dir=org["run"]).name in ok and "plotly-graph-div" in ok


def test_bound_to_another_loopback_address_reports_still_open(project: Path, org: dict[str, str], browser,
                                                             tmp_path: Path) -> None:
    # spm serve sets VOILA_APP_IP to the address it binds: preheated kernels reach it at 127.0.0.2 too
    srv = Server(project, "127.0.0.2", free_port("127.0.0.2"), tmp_path / "serve2.log").start(pools=len(LIVE_POOLS))
    try:
        mgr = org["manager"]
        page = _open(browser, srv, report_path("manager", "monthly", token(mgr)), "manager-127.0.0.2")
        page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
        assert core.load(mgr, "monthly", run_dir=org["run"]).name in page.inner_text("body")
        page.close()
        _refused(srv, browser, report_path("manager", "monthly", token(org["foreign_rep"]) + "x"),
                 _numbers(org["run"], mgr))
        _refused(srv, browser, report_path("rep", "monthly", token(mgr), owner=org["foreign_rep"]),
                 _numbers(org["run"], org["foreign_rep"]))
    finally:
        srv.stop()


# ---------------------------------------------------------------- drill-down and the action register, live
def _widget(page, kind: str, label: str):
    """The form control of the ipywidget of class widget-`kind` whose description is `label`."""
    return page.locator(f".widget-{kind}", has=page.locator("label", has_text=label))


def test_drill_down_shows_the_reps_numbers_and_the_deals_behind_a_number(server: Server, org: dict[str, str],
                                                                       browser) -> None:
    mgr, rep = org["manager"], org["rep"]
    batch_rep = core.load(rep, "monthly", run_dir=org["run"])
    page = _open(browser, server, report_path("manager", "monthly", token(mgr)), "drill")
    page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
    picker = _widget(page, "dropdown", "Drill into").locator("select")
    picker.wait_for(timeout=60_000)
    picker.select_option(label=f"{batch_rep.name} ({rep})")
    page.wait_for_function(f"document.body.innerText.includes({batch_rep.name!r} + ': the KPIs')", timeout=30_000)
    text = page.inner_text("body")
    for kpi_id in batch_rep.above_the_line_ids():  # the rep's own values, as their batch report shows them
        row = batch_rep.kpi(kpi_id)
        if row is not None and pd.notna(row["value"]):
            assert batch_rep.fmt(kpi_id, row["value"]) in text, kpi_id
    # the deals behind the manager's bookings of the closed month: every deal won in the month, by id
    mine = core.load(mgr, "monthly", run_dir=org["run"])
    f = mine.scope_facts()
    month = pd.Period(mine.closed)
    won = f[f["is_won"].fillna(False).astype(bool) & (pd.to_datetime(f["close_date"]).dt.to_period("M") == month)]
    _widget(page, "dropdown", "Deals behind").locator("select").select_option(label="Bookings (deals won)")
    page.wait_for_function("document.body.innerText.includes('deals, total')", timeout=30_000)
    text = page.inner_text("body")
    for opp in won.sort_values("amount", ascending=False)["opportunity_id"].head(20):
        assert str(opp) in text
    screenshot(page, "manager-drill-down")
    page.close()


def test_an_action_recorded_live_survives_a_restart_and_reaches_the_next_report(project: Path, org: dict[str, str],
                                                                              browser, tmp_path: Path) -> None:
    mgr = org["manager"]
    text = f"Call the five largest stalled deals ({tmp_path.name})"
    srv = Server(project, "127.0.0.1", free_port(), tmp_path / "serve.log").start(pools=len(LIVE_POOLS))
    try:
        page = _open(browser, srv, report_path("manager", "monthly", token(mgr)), "action")
        page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
        area = _widget(page, "textarea", "Action").locator("textarea")
        area.wait_for(timeout=60_000)
        area.fill(text)
        _widget(page, "text", "Support asked").locator("input").fill("Join two customer calls")
        _widget(page, "datepicker", "Due date").locator("input").fill("2026-11-20")
        _widget(page, "dropdown", "KPI it should move").locator("select").select_option(label="Bookings")
        page.locator("button", has_text="Record").dblclick()  # a double click records one action
        page.wait_for_function("document.body.innerText.includes('Recorded action #')", timeout=30_000)
        screenshot(page, "manager-action-recorded")
        page.close()
    finally:
        srv.stop()
    srv = Server(project, "127.0.0.1", free_port(), tmp_path / "serve-again.log").start(pools=len(LIVE_POOLS))
    try:  # after a restart the register still holds it, once
        page = _open(browser, srv, report_path("manager", "monthly", token(mgr)), "action-again")
        page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
        page.wait_for_function(f"document.body.innerText.includes({text!r})", timeout=60_000)
        body = page.inner_text("body")
        assert "Join two customer calls" in body
        page.close()
    finally:
        srv.stop()
    from spm_lib.config import load_config
    from spm_lib.state.actions import list_actions

    cfg = load_config(project)
    acts = list_actions(cfg, owner_id=mgr)
    assert (acts["text"] == text).sum() == 1
    rec = acts[acts["text"] == text].iloc[0]
    assert rec["recorded_by"] == mgr and rec["kpi"] == "bookings" and rec["status"] == "open"
    # the next period's batch report (a new run) lists it among the open actions, overdue by then
    from spm_lib.domain.periods import FiscalCalendar

    cal = FiscalCalendar.from_config(cfg)
    nxt = cal.shift(cal.period("month", date.fromisoformat(Path(org["run"]).name)), 1).end
    folder = ensure_cube(cfg, "monthly", nxt)
    env = {**os.environ, "SPM_PROJECT_DIR": str(project)}
    out = subprocess.run([sys.executable, "-c", "from spm_lib.report import core; import sys; "
                          f"print(core.load({mgr!r}, 'monthly', run_dir={str(folder)!r}).actions().body)"],
                         env=env, capture_output=True, text=True, check=True)
    assert text in out.stdout and "overdue" in out.stdout


def test_kernels_of_abandoned_tabs_are_culled(project: Path, org: dict[str, str], browser, tmp_path: Path) -> None:
    quick = live_project(project, tmp_path / "quick", {"rep_monthly": 1}, cull_idle_s=2)
    srv = Server(quick, "127.0.0.1", free_port(), tmp_path / "serve.log").start(pools=1)
    try:
        page = _open(browser, srv, report_path("rep", "monthly", token(org["rep"])), "abandoned")
        page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
        page.close(run_before_unload=False)  # the tab goes away without saying goodbye
        deadline = time.monotonic() + 120
        while "Culling 'idle' kernel" not in srv.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "Culling 'idle' kernel" in srv.log.read_text()
        status, body = srv.get(report_path("rep", "monthly", token(org["rep"])))  # the pool still serves
        assert status == 200 and "plotly-graph-div" in body
    finally:
        srv.stop()


# ---------------------------------------------------------------- newer runs
def test_a_newer_run_is_picked_up_without_restart(server: Server, org: dict[str, str], browser) -> None:
    from spm_lib.config import load_config
    from spm_lib.domain.periods import FiscalCalendar

    cfg = load_config(server.project)
    current = date.fromisoformat(Path(org["run"]).name)
    cal = FiscalCalendar.from_config(cfg)
    nxt = cal.shift(cal.period("month", current), 1).end
    ensure_cube(cfg, "monthly", nxt)
    mgr = org["manager"]
    page = _open(browser, server, report_path("manager", "monthly", token(mgr)), "newer")
    page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
    assert f"as of {nxt.isoformat()}" in page.inner_text("body")
    page.close()
