"""The live read path: a report opens as the owner's batch page of the run, at once, without a kernel.

A real `spm serve` with no preheated kernel at all serves a project whose monthly run rendered three owners' batch
reports (`spm run --owner`); headless Chromium opens them. The interactive report (a kernel's) is one click away.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest

from spm_lib.report import core
from spm_lib.report.core import latest_run
from spm_lib.store.runfolder import safe_name
from tests.live_server import CHARTS_DRAWN, SECRET, Server, free_port, live_project, sample_org, token
from tests.test_live import _cells, _numbers


def static_path(level: str, tok: str, owner: str | None = None, cadence: str = "monthly") -> str:
    """The static report page of `owner` (default: the link's owner)."""
    return f"/report/{level}_{cadence}?t={urllib.parse.quote(tok)}" + (f"&owner={owner}" if owner else "")


def _spm(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPM_PROJECT_DIR": str(project), "SPM_LINK_SECRET": SECRET}
    env.pop("SPM_LIVE", None)
    return subprocess.run([str(Path(sys.executable).parent / "spm"), *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def bare(source: Path, tmp_path_factory: pytest.TempPathFactory):
    """A live server without any preheated kernel; its monthly run holds the batch reports of three owners only."""
    proj = live_project(source, tmp_path_factory.mktemp("static") / "project", {"rep_monthly": 0}, max_kernels=3)
    srv = Server(proj, "127.0.0.1", free_port(), proj / "serve.log").start(pools=0, timeout=900)
    try:
        run = latest_run("monthly", proj)
        org = sample_org(run)
        for owner in (org["manager"], org["rep"], org["foreign_rep"]):
            done = _spm(proj, "run", "--as-of", run.name, "--owner", owner, "--workers", "1")
            assert done.returncode == 0, done.stderr[-2000:]
        yield srv, org
    finally:
        srv.stop()


def test_the_static_page_shows_the_owners_numbers_and_charts_without_a_kernel(bare, browser) -> None:
    srv, org = bare
    mgr = org["manager"]
    batch = core.load(mgr, "monthly", run_dir=org["run"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(srv.base + static_path("manager", token(mgr)))
    page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
    text = page.inner_text("body")
    assert batch.name in text and "This report cannot be opened" not in text
    packed = "".join(text.split())  # the batch page lays a value and its comparison out on lines of their own
    for cell in _cells(batch.above_the_line().body):  # every value, target, attainment of the owner's KPI table
        assert "".join(cell.split()) in packed, cell
    drawn = page.evaluate("[...document.querySelectorAll('.plotly-graph-div')].filter(d => d._fullLayout).length")
    assert drawn >= 5
    assert "Open the interactive report" in text
    # the page is the run's batch report of that owner, byte for byte below the live bar
    sent = srv.request("GET", static_path("manager", token(mgr)))
    on_disk = (Path(org["run"]) / "manager" / f"{safe_name(mgr)}.html").read_text(encoding="utf-8")
    assert sent.status == 200 and sent.body.endswith(on_disk.partition("<body>")[2])
    assert sent.headers["cache-control"] == "no-store" and sent.headers["x-frame-options"] == "DENY"
    page.close()
    # a manager opens a rep of their team from the landing page: the static page too
    page = browser.new_page()
    page.goto(srv.base + f"/?t={token(mgr)}")
    rep = core.load(org["rep"], "monthly", run_dir=org["run"])
    page.click(f"text={rep.name}")
    page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
    assert "/report/rep_monthly" in page.url and rep.name in page.inner_text("body")
    page.close()
    assert srv.kernel_pids() == [] and "Kernel started" not in srv.log.read_text()


def _refused(srv: Server, path: str, numbers: list[str], why: str) -> None:
    r = srv.request("GET", path)
    assert r.status == 403 and why in r.body, (path, r.status, r.body[-400:])
    assert "location" not in r.headers and "plotly-graph-div" not in r.body
    for n in numbers:
        assert n not in r.body, n


def test_a_link_opens_its_own_and_its_teams_static_pages_only(bare) -> None:
    srv, org = bare
    mgr, rep, foreign = org["manager"], org["rep"], org["foreign_rep"]
    good = token(mgr)
    mgr_numbers, foreign_numbers = _numbers(org["run"], mgr), _numbers(org["run"], foreign)
    tampered = good[:-3] + ("aaa" if not good.endswith("aaa") else "bbb")
    forged = token(foreign).rpartition(".")[0] + "." + good.rpartition(".")[2]  # the rep's claims, mgr's signature
    _refused(srv, static_path("manager", tampered), mgr_numbers, "This report cannot be opened")
    _refused(srv, static_path("rep", forged), foreign_numbers, "This report cannot be opened")
    _refused(srv, static_path("manager", token(mgr, days=-1)), mgr_numbers, "expired")
    _refused(srv, static_path("manager", token(mgr, "quarterly")), mgr_numbers, "opens quarterly reports")
    _refused(srv, static_path("rep", good, owner=foreign), foreign_numbers, "does not open that report")
    _refused(srv, static_path("manager", token(rep), owner=mgr), mgr_numbers, "does not open that report")
    other = token(org["other_manager"])
    _refused(srv, static_path("manager", other, owner=mgr), mgr_numbers, "does not open that report")
    _refused(srv, static_path("rep", good, owner=f"../manager/{mgr}"), mgr_numbers, "does not open that report")
    _refused(srv, static_path("manager", ""), mgr_numbers, "no valid link")
    _refused(srv, static_path("manager", good) + "&template=lab", mgr_numbers, "does not take")
    for path in (f"/report/..%2Fmanager%2F{mgr}?t={good}", f"/report/manager_monthly.html?t={good}",
                 f"/report/manager_monthly/../../runs?t={good}", f"/report/nobody_monthly?t={good}"):
        r = srv.request("GET", path)
        assert r.status in (403, 404) and "plotly-graph-div" not in r.body, path
    # the session cookie alone opens no report page: the link must be presented
    cookies = srv.request("GET", f"/?t={good}").cookies
    assert srv.request("GET", "/report/manager_monthly", cookies=cookies).status == 403
    # the link's own team member: allowed
    assert srv.request("GET", static_path("rep", good, owner=rep)).status == 200


def test_a_revoked_link_opens_no_static_page(bare) -> None:
    srv, org = bare
    t = token(org["rep"])
    assert srv.request("GET", static_path("rep", t)).status == 200
    out = _spm(srv.project, "link", "--revoke", t)
    assert out.returncode == 0, out.stderr
    time.sleep(5.5)  # the server re-reads the revocation list every 5 s
    _refused(srv, static_path("rep", t), _numbers(org["run"], org["rep"]), "revoked")


def test_without_a_batch_report_the_interactive_page_opens_and_the_bar_leads_to_it(bare, browser) -> None:
    srv, org = bare
    mgr = org["manager"]
    run = Path(org["run"])
    reps = pd.read_parquet(run / "owners.parquet").query("manager_id == @mgr")["owner_id"]
    unrendered = next(r for r in sorted(reps) if not (run / "rep" / f"{safe_name(r)}.html").exists())
    r = srv.request("GET", static_path("rep", token(mgr), owner=unrendered))
    assert r.status == 302 and r.headers["location"].startswith("/voila/render/rep_monthly.ipynb?t=")
    assert f"owner={unrendered}" in r.headers["location"]
    # the bar of a static page opens the interactive report: a kernel starts and the widgets attach
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(srv.base + static_path("manager", token(mgr)))
    page.wait_for_function(CHARTS_DRAWN, timeout=60_000)
    page.click("text=Open the interactive report")
    page.locator(".widget-dropdown").first.wait_for(timeout=120_000)
    assert "/voila/render/manager_monthly.ipynb" in page.url
    assert core.load(mgr, "monthly", run_dir=org["run"]).name in page.inner_text("body")
    assert len(srv.kernel_pids()) >= 1
    page.close()
