"""Live benchmark (`python -m benchmarks.main live`): open → every chart drawn, in headless Chromium, preheated.

A copy of the project's config and templates (data and the monthly run shared) is served by a real `spm serve` with a
pool of POOL preheated kernels for rep_monthly. Figures (DESIGN.md, Benchmarks): the first, cold open apart; then 20
opens of different sales executives' links, one every 5 s, warm browser cache (p50, p95); then 10 opens at once (p95).

The static read path (`/report/rep_monthly?t=…`, the batch report sent without a kernel) is measured against its
floor in the same browser: the same report file opened from disk (file://), one after the other for each owner
(interleaved, so that load on the machine weighs on both alike), then 10 at once each; the ratios are static / floor.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from spm_lib.domain import links

POOL = 10  # preheated rep_monthly kernels (10 so that 10 opens at once all get one)
OPENS = 20
INTERVAL_S = 5.0
AT_ONCE = 10
SECRET = "bL9-xK2mQ7vR4sT8wZ1nP5cJ3dF6gH0aY_eUoIi"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-quic", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DRAWN = ("document.querySelectorAll('.plotly-graph-div').length > 0 && "
         "[...document.querySelectorAll('.plotly-graph-div')].every(d => d._fullLayout)")


def _project(root: Path, folder: Path) -> Path:
    """config/ + templates/ of `root` in `folder`, with root's data/ and runs/ linked, and the bench pool."""
    shutil.copytree(root / "config", folder / "config", ignore=shutil.ignore_patterns("local"))
    shutil.copytree(root / "templates", folder / "templates")
    for name in ("data", "runs"):
        (folder / name).symlink_to(root / name)
    local = folder / "config" / "local"
    local.mkdir()
    # a cap that never refuses the bench's opens (pool, refills, and every page's kernel if tabs do not release it)
    (local / "live.yml").write_text(f"pool_size: 0\ncull_idle_s: 0\nmax_kernels: {2 * POOL + 1 + OPENS + AT_ONCE}\n"
                                    f"opens_per_minute: 100\npools:\n  rep_monthly: {POOL}\n")
    return folder


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server: Ctrl-C, then kill it and its kernels if it has not stopped in 60 s (a loaded machine), so
    the figures measured are never lost to a slow shutdown."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its pooled kernels (their own session, see _start)
        proc.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(project: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SPM_PROJECT_DIR": str(project), "SPM_LINK_SECRET": SECRET}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "spm"), "serve", "--port", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"spm serve exited:\n{log.read_text()[-2000:]}")
        text = log.read_text()
        if text.count("101 GET /voila/query/") >= POOL:  # every pooled kernel warm and waiting for its request
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            except urllib.error.HTTPError:
                return proc  # 403 without a link: the server answers
            except OSError:
                pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("spm serve did not get ready in 600 s")


async def _open(context: Any, url: str) -> float:
    page = await context.new_page()
    t0 = time.perf_counter()
    await page.goto(url, wait_until="commit", timeout=120_000)
    await page.wait_for_function(DRAWN, timeout=120_000)
    took = time.perf_counter() - t0
    await page.close(run_before_unload=True)  # as a tab closed by its viewer: the page releases its kernel
    return took


def _token(owner: str) -> str:
    """A signed monthly link token for `owner`, valid for two hours."""
    return links.sign(SECRET, owner, "monthly", None, datetime.now(UTC) + timedelta(hours=2))


async def _static_vs_floor(context: Any, base: str, reps: list[str],
                           report: Callable[[str], Path]) -> dict[str, Any]:
    """Static page vs the same file from disk: p50 and p95 of interleaved single opens, p95 of 10 at once each."""
    def static(owner: str) -> str:
        return f"{base}/report/rep_monthly?t={_token(owner)}"

    def floor(owner: str) -> str:
        return report(owner).as_uri()

    served, disk = [], []
    for owner in reps[:OPENS]:
        disk.append(await _open(context, floor(owner)))
        served.append(await _open(context, static(owner)))
    group = reps[OPENS:OPENS + AT_ONCE]
    disk_10 = await asyncio.gather(*[_open(context, floor(o)) for o in group])
    served_10 = await asyncio.gather(*[_open(context, static(o)) for o in group])
    out = {"static_open_p50_s": statistics.median(served), "static_open_p95_s": _p95(served),
           "static_open_10x_p95_s": _p95(list(served_10)), "static_floor_p50_s": statistics.median(disk),
           "static_floor_p95_s": _p95(disk), "static_floor_10x_p95_s": _p95(list(disk_10))}
    out = {k: round(v, 3) for k, v in out.items()}
    for kind in ("p50", "p95", "10x_p95"):
        out[f"static_ratio_{kind}"] = round(out[f"static_open_{kind}_s"] / out[f"static_floor_{kind}_s"], 2)
    return out


async def _measure(base: str, reps: list[str], report: Callable[[str], Path]) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    def url(owner: str) -> str:
        return f"{base}/voila/render/rep_monthly.ipynb?t={_token(owner)}"

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        cold = await _open(context, url(reps[0]))
        await asyncio.sleep(INTERVAL_S)
        singles = []
        for owner in reps[1:OPENS + 1]:
            t0 = time.perf_counter()
            singles.append(await _open(context, url(owner)))
            await asyncio.sleep(max(0.0, INTERVAL_S - (time.perf_counter() - t0)))
        await asyncio.sleep(3 * INTERVAL_S)  # let the pool refill
        together = await asyncio.gather(*[_open(context, url(o)) for o in reps[OPENS + 1:OPENS + 1 + AT_ONCE]])
        static = await _static_vs_floor(context, base, reps, report)
        await browser.close()
    return {"live_open_cold_s": round(cold, 3), "live_open_p50_s": round(statistics.median(singles), 3),
            "live_open_p95_s": round(_p95(singles), 3), "live_open_10x_p95_s": round(_p95(list(together)), 3),
            "live_opens": len(singles), "live_pool_size": POOL, "live_interval_s": INTERVAL_S, **static}


def _p95(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def run(root: Path) -> dict[str, Any]:
    """The live figures for the project at `root` (its monthly run made first if missing)."""
    from spm_lib.batch.runner import run as render_run
    from spm_lib.config import load_config
    from spm_lib.live.serve import ensure_runs

    cfg = load_config(root)
    run_dir = ensure_runs(cfg, None)["monthly"]
    # the static read path sends the batch reports: the sales executives' of the served run (made when missing)
    render_run(cfg, "monthly", date.fromisoformat(run_dir.name), level="rep", resume=True)
    owners = pd.read_parquet(run_dir / "owners.parquet")
    reps = sorted(owners.loc[owners["level"] == "rep", "owner_id"].astype(str))
    if len(reps) < 1 + OPENS + AT_ONCE:
        raise RuntimeError(f"the live bench needs {1 + OPENS + AT_ONCE} sales executives, the run has {len(reps)}")
    with tempfile.TemporaryDirectory() as tmp:
        project = _project(root, Path(tmp) / "project")
        port = _free_port()
        log = Path(tmp) / "serve.log"
        t0 = time.perf_counter()
        proc = _start(project, port, log)
        ready = time.perf_counter() - t0
        try:
            figures = asyncio.run(_measure(f"http://127.0.0.1:{port}", reps, lambda o: run_dir / "rep" / f"{o}.html"))
        finally:
            _stop(proc)
    figures["live_server_ready_s"] = round(ready, 1)
    print(f"live: cold {figures['live_open_cold_s']} s, p50 {figures['live_open_p50_s']} s, "
          f"p95 {figures['live_open_p95_s']} s, 10 at once p95 {figures['live_open_10x_p95_s']} s "
          f"(pool {POOL}, server ready in {ready:.0f} s)", flush=True)
    print(f"live static (no kernel): p50 {figures['static_open_p50_s']} s, p95 {figures['static_open_p95_s']} s, "
          f"10 at once p95 {figures['static_open_10x_p95_s']} s; the same file from disk: p50 "
          f"{figures['static_floor_p50_s']} s, p95 {figures['static_floor_p95_s']} s, 10 at once p95 "
          f"{figures['static_floor_10x_p95_s']} s; ratios {figures['static_ratio_p50']} / "
          f"{figures['static_ratio_p95']} / {figures['static_ratio_10x_p95']}", flush=True)
    return figures
