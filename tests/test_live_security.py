"""The live server attacked as an outsider holding one valid link would: each attack against a real `spm serve`.

One server (pools of one manager and one rep kernel) serves the tests that need no special configuration; the load,
culling and shutdown tests start their own, configured for what they check.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import date
from pathlib import Path

import pandas as pd
import psutil
import websocket

from spm_lib.config import load_config
from spm_lib.domain.periods import FiscalCalendar
from spm_lib.report import core
from spm_lib.store.runfolder import ensure_cube
from tests.live_server import (
    CHARTS_DRAWN,
    SECRET,
    Server,
    free_port,
    kernel_id_of,
    live_project,
    report_path,
    token,
)

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _open_report(server: Server, level: str, tok: str, owner: str | None = None):
    """GET a report page: (reply, its kernel id, the viewer's cookies)."""
    r = server.request("GET", report_path(level, "monthly", tok, owner))
    assert r.status == 200, (r.status, r.body[:500])
    return r, kernel_id_of(r.body), r.cookies


def _ws_status(url: str, **kw) -> int:
    """101 when a websocket opens at `url`, else the HTTP status of the refusal."""
    try:
        ws = websocket.create_connection(url, timeout=10, **kw)
    except websocket.WebSocketBadStatusException as e:
        return int(e.status_code)
    ws.close()
    return 101


# ---------------------------------------------------------------- 1. nobody but the kernel receives a request
def test_an_outsider_cannot_receive_the_next_viewers_request(server: Server, org: dict[str, str], browser) -> None:
    waiting = server.kernel_ids()
    assert len(waiting) >= 2
    ws = f"ws://127.0.0.1:{server.port}"
    # Voila's own address of the query socket is gone, and a wrong key is refused
    for kid in waiting:
        assert _ws_status(f"{ws}/voila/query/{kid}") in (403, 404)
        assert _ws_status(f"{ws}/voila/query/{'0' * 64}/{kid}") == 403
    # the victim opens their report: it renders (not hung), and nobody else heard the request
    page = browser.new_page()
    page.goto(server.base + report_path("manager", "monthly", token(org["manager"])))
    page.wait_for_function(CHARTS_DRAWN, timeout=90_000)
    assert core.load(org["manager"], "monthly", run_dir=org["run"]).name in page.inner_text("body")
    page.close()


def test_no_kernel_id_or_token_in_the_log(server: Server, org: dict[str, str]) -> None:
    t = token(org["manager"])
    server.request("GET", f"/?t={t}")
    server.request("GET", report_path("manager", "monthly", t) + "&template=..%2f..%2f..%2ftmp")
    server.request("GET", f"/voila/render/nothing.ipynb?t={t}")
    log = server.log.read_text()
    assert "Kernel started" in log and "101 GET /voila/query/" in log
    assert UUID.findall(log) == []  # kernel ids appear as kernel:<digest> only
    assert t not in log and not any(part in log for part in t.split(".") if part)
    assert "?t=" not in log and "next=" not in log


# ---------------------------------------------------------------- 2. a kernel answers the viewer it was handed to
def test_another_viewers_kernel_is_out_of_reach(server: Server, org: dict[str, str]) -> None:
    _, mgr_kernel, mgr_cookies = _open_report(server, "manager", token(org["manager"]))
    _, rep_kernel, rep_cookies = _open_report(server, "rep", token(org["rep"]))
    assert "spm-session" in rep_cookies and "_xsrf" in rep_cookies
    # control: the rep reaches their own kernel
    assert server.request("GET", f"/api/kernels/{rep_kernel}", cookies=rep_cookies).status == 200
    # with the rep's cookie: the manager's kernel model, channels, Voila shutdown and DELETE are all refused
    assert server.request("GET", f"/api/kernels/{mgr_kernel}", cookies=rep_cookies).status == 403
    ws = f"ws://127.0.0.1:{server.port}/api/kernels/{mgr_kernel}/channels"
    cookie = "; ".join(f"{k}={v}" for k, v in rep_cookies.items())
    assert _ws_status(ws, cookie=cookie, origin=server.base) == 403
    xsrf = {**rep_cookies, "_xsrf": "chosen-by-attacker"}
    shut = server.request("POST", f"/voila/api/shutdown/{mgr_kernel}", cookies=xsrf,
                          headers={"X-XSRFToken": "chosen-by-attacker", "Origin": server.base,
                                   "Content-Type": "application/x-www-form-urlencoded"},
                          body=b"_xsrf=chosen-by-attacker")
    assert shut.status == 403
    assert server.request("DELETE", f"/api/kernels/{mgr_kernel}", cookies=xsrf,
                          headers={"X-XSRFToken": "chosen-by-attacker", "Origin": server.base}).status == 403
    # without any cookie, and with the manager's own cookie on the rep's kernel
    assert server.request("GET", f"/api/kernels/{mgr_kernel}").status == 403
    assert server.request("GET", f"/api/kernels/{rep_kernel}", cookies=mgr_cookies).status == 403
    assert mgr_kernel in server.kernel_ids()  # still alive
    assert server.request("GET", f"/api/kernels/{mgr_kernel}", cookies=mgr_cookies).status == 200


def test_the_session_cookie_is_opaque_httponly_and_secure_behind_a_trusted_proxy(server: Server,
                                                                                org: dict[str, str]) -> None:
    t = token(org["rep"])
    direct = server.request("GET", f"/?t={t}", headers={"X-Forwarded-Proto": "https"})
    line = next(c for c in direct.set_cookie if c.startswith("spm-session="))
    assert direct.status == 200 and "httponly" in line.lower() and "samesite=lax" in line.lower()
    assert "secure" not in line.lower().replace("httponly", "")  # 127.0.0.1 is not a trusted proxy
    value = urllib.parse.unquote(direct.cookies["spm-session"])
    assert t not in value and not any(part in value for part in t.split(".") if part)
    proxied = server.request("GET", f"/?t={t}", headers={"X-Forwarded-Proto": "https"}, source="127.0.0.2")
    line = next(c for c in proxied.set_cookie if c.startswith("spm-session="))
    assert "; secure" in line.lower()
    # the cookie alone opens the landing page again (the session is on the server)
    again = server.request("GET", "/", cookies={"spm-session": direct.cookies["spm-session"]})
    assert again.status == 200 and core.load(org["rep"], "monthly", run_dir=org["run"]).name in again.body


def test_every_page_carries_anti_framing_and_no_referrer(server: Server, org: dict[str, str]) -> None:
    t = token(org["rep"])
    for path in ("/", f"/?t={t}", report_path("rep", "monthly", t), "/spm/static/report.css", "/nowhere",
                 report_path("rep", "monthly", t) + "&theme=dark", "/login"):
        h = server.request("GET", path).headers
        assert h.get("x-frame-options") == "DENY", path
        assert "frame-ancestors 'none'" in h.get("content-security-policy", ""), path
        assert h.get("referrer-policy") == "no-referrer", path


# ---------------------------------------------------------------- 6, 7, 9. what a link may open
def test_template_theme_as_of_and_cadence_cannot_be_switched(server: Server, org: dict[str, str]) -> None:
    t = token(org["manager"])
    base = report_path("manager", "monthly", t)
    for extra in ("&template=lab", "&template=reveal", "&theme=dark", "&voila-template=lab"):
        r = server.request("GET", base + extra)
        assert r.status == 403 and "does not take" in r.body and "font-awesome" not in r.body.lower(), extra
    run = Path(org["run"])
    cal = FiscalCalendar.from_config(load_config(server.project))
    newer = cal.shift(cal.period("month", date.fromisoformat(run.name)), 1).end
    ensure_cube(load_config(server.project), "monthly", newer)
    pinned = token(org["manager"], as_of=date.fromisoformat(run.name))
    r = server.request("GET", report_path("manager", "monthly", pinned) + f"&as_of={newer}")
    assert r.status == 403 and f"opens the run as of {run.name}" in r.body
    r = server.request("GET", report_path("manager", "monthly", pinned))
    assert r.status == 200 and f"as of {run.name}" in r.body  # the pinned run, though a newer one exists
    r = server.request("GET", report_path("manager", "quarterly", t))
    assert r.status == 403 and "opens monthly reports, not quarterly ones" in r.body


def test_refusals_answer_403_at_once_without_redirect_or_token(server: Server, org: dict[str, str]) -> None:
    ghost = token("nobody-here")
    r = server.request("GET", f"/?t={ghost}")
    assert r.status == 403 and "has no report" in r.body
    for path in (report_path("manager", "monthly", token(org["other_manager"]), org["rep"]),
                 report_path("manager", "monthly", token(org["manager"], days=-1)),
                 report_path("manager", "monthly", token(org["manager"])[:-4])):
        r = server.request("GET", path)
        assert r.status == 403 and "location" not in r.headers and "This report cannot be opened" in r.body
        assert "?t=" not in r.body and "next=" not in r.body


def test_a_revoked_link_is_refused_and_its_session_ends(server: Server, org: dict[str, str]) -> None:
    env = {**os.environ, "SPM_PROJECT_DIR": str(server.project), "SPM_LINK_SECRET": SECRET}
    spm = str(Path(sys.executable).parent / "spm")
    t, other = token(org["rep"]), token(org["rep"])
    first = server.request("GET", f"/?t={t}")
    assert first.status == 200
    out = subprocess.run([spm, "link", "--revoke", f"http://x/?t={t}"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "revoked link" in out.stdout
    time.sleep(5.5)  # the server re-reads the list every 5 s
    r = server.request("GET", f"/?t={t}")
    assert r.status == 403 and "revoked" in r.body
    assert server.request("GET", "/", cookies=first.cookies).status == 403  # the session it opened is over
    assert server.request("GET", report_path("rep", "monthly", t)).status == 403
    assert server.request("GET", f"/?t={other}").status == 200  # another link of the same owner still works
    out = subprocess.run([spm, "link", "--revoke-owner", org["rep"]], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    time.sleep(5.5)
    assert server.request("GET", f"/?t={other}").status == 403
    assert server.request("GET", f"/?t={token(org['rep'])}").status == 200  # links issued after it work


# ---------------------------------------------------------------- 4. tokens never in a log line
def test_weak_secrets_are_refused_with_how_to_make_one(source: Path) -> None:
    spm = str(Path(sys.executable).parent / "spm")
    for weak in ("aaaaaaaaaaaaaaaa", "live-test-secret-0123456789"):
        env = {**os.environ, "SPM_PROJECT_DIR": str(source), "SPM_LINK_SECRET": weak}
        for args in (["serve", "--port", str(free_port())], ["link", "--owner", "x"]):
            proc = subprocess.run([spm, *args], env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2, (args, proc.stderr)
            assert "SPM_LINK_SECRET is too weak" in proc.stderr and "token_urlsafe(32)" in proc.stderr
            assert weak not in proc.stderr


# ---------------------------------------------------------------- 3. bounded resources
def test_thirty_opens_at_once_stay_under_the_kernel_cap_and_memory_bound(source: Path, org: dict[str, str],
                                                                        tmp_path: Path) -> None:
    cap, kernel_mb = 4, 700
    proj = live_project(source, tmp_path / "cap", {"rep_monthly": 1}, max_kernels=cap, kernel_mb=kernel_mb,
                        opens_per_minute=100, busy_retry_s=7)
    srv = Server(proj, "127.0.0.1", free_port(), tmp_path / "serve.log").start(pools=1)
    try:
        reps = sorted(pd.read_parquet(Path(org["run"]) / "owners.parquet").query("level == 'rep'")["owner_id"])
        peak = {"kernels": 0, "mb": 0.0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                pids = srv.kernel_pids()
                mb = 0.0
                for pid in pids:
                    try:
                        mb += psutil.Process(pid).memory_info().rss / 2**20
                    except psutil.NoSuchProcess:
                        pass
                peak["kernels"] = max(peak["kernels"], len(pids))
                peak["mb"] = max(peak["mb"], mb)
                time.sleep(0.1)

        watcher = threading.Thread(target=sample)
        watcher.start()
        replies: list = [None] * 30

        def open_one(i: int) -> None:
            replies[i] = srv.request("GET", report_path("rep", "monthly", token(reps[i % len(reps)])))

        threads = [threading.Thread(target=open_one, args=(i,)) for i in range(30)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        time.sleep(3)  # refills that were started settle
        stop.set()
        watcher.join()
        statuses = [r.status for r in replies]
        assert set(statuses) <= {200, 503}, statuses
        served, busy = statuses.count(200), statuses.count(503)
        assert 1 <= served <= cap and served + busy == 30
        for r in replies:
            if r.status == 503:
                assert r.headers.get("retry-after") == "7" and "busy" in r.body
            else:
                assert "plotly-graph-div" in r.body
        assert peak["kernels"] <= cap, peak
        assert peak["mb"] <= cap * kernel_mb, peak
        assert len(srv.kernel_pids()) <= cap
    finally:
        srv.stop()


def test_opens_per_link_are_rate_limited(source: Path, org: dict[str, str], tmp_path: Path) -> None:
    proj = live_project(source, tmp_path / "rate", {"rep_monthly": 1}, opens_per_minute=2, max_kernels=6)
    srv = Server(proj, "127.0.0.1", free_port(), tmp_path / "serve.log").start(pools=1)
    try:
        t = token(org["rep"])
        assert srv.request("GET", report_path("rep", "monthly", t)).status == 200
        assert srv.request("GET", report_path("rep", "monthly", t)).status == 200
        third = srv.request("GET", report_path("rep", "monthly", t))
        assert third.status == 429 and 1 <= int(third.headers["retry-after"]) <= 60
        assert srv.request("GET", report_path("rep", "monthly", token(org["rep"]))).status == 200  # another link
    finally:
        srv.stop()


def test_reloaded_and_left_tabs_release_their_kernel_and_idle_open_tabs_are_culled(source: Path, org: dict[str, str],
                                                                        browser, tmp_path: Path) -> None:
    proj = live_project(source, tmp_path / "tabs", {"rep_monthly": 1}, cull_idle_s=4, max_kernels=6)
    srv = Server(proj, "127.0.0.1", free_port(), tmp_path / "serve.log").start(pools=1)
    try:
        # a reloaded tab, then a tab navigated away: the page's own shutdown call (with its _xsrf) releases its
        # kernel at once, long before the idle cull
        page = browser.new_page()
        page.goto(srv.base + report_path("rep", "monthly", token(org["rep"])))
        for leave in (page.reload, lambda: page.goto("about:blank")):
            page.wait_for_function(CHARTS_DRAWN, timeout=90_000)
            page.locator(".widget-dropdown").first.wait_for(timeout=60_000)  # Voila's frontend holds the kernel
            before = srv.log.read_text().count("204 POST /voila/api/shutdown/")
            leave()
            deadline = time.monotonic() + 3
            while srv.log.read_text().count("204 POST /voila/api/shutdown/") == before and time.monotonic() < deadline:
                time.sleep(0.1)
            assert srv.log.read_text().count("204 POST /voila/api/shutdown/") == before + 1
        assert "403 POST /voila/api/shutdown/" not in srv.log.read_text()
        page.close()
        # an open, connected tab that does nothing: its kernel is culled after cull_idle_s
        page = browser.new_page()
        page.goto(srv.base + report_path("rep", "monthly", token(org["rep"])))
        page.wait_for_function(CHARTS_DRAWN, timeout=90_000)
        deadline = time.monotonic() + 60
        while "Culling 'idle' kernel" not in srv.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "Culling 'idle' kernel" in srv.log.read_text()
        page.close(run_before_unload=False)
    finally:
        srv.stop()


def test_sigterm_leaves_no_connection_files(source: Path, tmp_path: Path) -> None:
    proj = live_project(source, tmp_path / "term", {"rep_monthly": 1})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    srv = Server(proj, "127.0.0.1", free_port(), tmp_path / "serve.log").start(pools=1, env_extra={"TMPDIR": str(tmp)})
    assert any(tmp.glob("voila_*"))
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(timeout=60)
    assert list(tmp.glob("voila_*")) == [] and list(tmp.rglob("kernel-*.json")) == []
    assert srv.kernel_pids() == []
