"""Test helpers for live sessions: a real `spm serve` on a free loopback port and a real headless Chromium."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from spm_lib.domain import links

SECRET = "Xq7-vR2kLp9sWm4TzB8nHc6JdF3gYa5E_u1NtKo0"  # a random secret (>= 128 bits)
LIVE_POOLS = {"manager_monthly": 1, "rep_monthly": 1}  # the shared live server's preheated kernels
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-quic", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
OUT = Path(__file__).resolve().parents[1] / "test-output" / "live"
CHARTS_DRAWN = ("document.querySelectorAll('.plotly-graph-div').length > 0 && "
                "[...document.querySelectorAll('.plotly-graph-div')].every(d => d._fullLayout)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def live_project(src: Path, dest: Path, pools: dict[str, int], cull_idle_s: int = 300, **live: object) -> Path:
    """A copy of `src` whose live server preheats only `pools` (template -> kernels); `live` adds live.yml keys."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("runs", "state", "*.log"))
    local = dest / "config" / "local"
    local.mkdir(parents=True, exist_ok=True)
    lines = ["pool_size: 0", f"cull_idle_s: {cull_idle_s}", "pools:"] + [f"  {k}: {v}" for k, v in pools.items()]
    lines += [f"{k}: {json.dumps(v)}" for k, v in live.items()]
    (local / "live.yml").write_text("\n".join(lines) + "\n")
    return dest


@dataclass
class Reply:
    """One HTTP answer: status, headers (lower-case names; Set-Cookie kept as a list) and body."""

    status: int
    headers: dict[str, str]
    cookies: dict[str, str]
    set_cookie: list[str]
    body: str


def kernel_id_of(page_html: str) -> str:
    """The kernel id a live report page connects to (Voila's page config)."""
    m = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page_html)
    assert m, "no kernel id in the page"
    return m.group(1)


@dataclass
class Server:
    """A running `spm serve` subprocess and its log."""

    project: Path
    host: str
    port: int
    log: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, pools: int, timeout: float = 600.0, env_extra: dict[str, str] | None = None) -> Server:
        """Start the server and wait until it answers and `pools` preheated kernels are ready."""
        env = {**os.environ, "SPM_PROJECT_DIR": str(self.project), "SPM_LINK_SECRET": SECRET, **(env_extra or {})}
        env.pop("SPM_LIVE", None)
        spm = Path(sys.executable).parent / "spm"
        seen = self.log.read_text().count("101 GET /voila/query/") if self.log.exists() else 0
        self.proc = subprocess.Popen([str(spm), "serve", "--host", self.host, "--port", str(self.port), *self.args],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env,
                                     cwd=self.project)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spm serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            # every preheated kernel warm and waiting for its request (connected to /voila/query/<kernel>)
            if self.log.read_text().count("101 GET /voila/query/") - seen >= pools and self.status("/") == 403:
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"spm serve did not get ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def status(self, path: str) -> int:
        """HTTP status of GET `path` (0 when nothing answers)."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of GET `path`."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=60) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()

    def request(self, method: str, path: str, *, cookies: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes | None = None,
                source: str | None = None) -> Reply:
        """One raw HTTP request (no redirects followed), from `source` (a loopback address) if given."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120,
                                          source_address=(source, 0) if source else None)
        hdrs = dict(headers or {})
        if cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read().decode(errors="replace")
            set_cookie = r.headers.get_all("Set-Cookie") or []
            jar = {c.split("=", 1)[0]: c.split("=", 1)[1].split(";", 1)[0] for c in set_cookie}
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, jar, set_cookie, data)
        finally:
            conn.close()

    def kernel_pids(self) -> list[int]:
        """The process ids of the server's kernels (children running ipykernel)."""
        import psutil

        if self.proc is None:
            return []
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for c in children:
            try:
                if "ipykernel" in " ".join(c.cmdline()):
                    out.append(c.pid)
            except psutil.NoSuchProcess:
                continue
        return out

    def kernel_ids(self) -> list[str]:
        """The kernel ids of the server's kernels, read from their connection file names."""
        import psutil

        ids = []
        for pid in self.kernel_pids():
            try:
                cmd = " ".join(psutil.Process(pid).cmdline())
            except psutil.NoSuchProcess:
                continue
            m = re.search(r"kernel-([0-9a-f-]{36})\.json", cmd)
            if m:
                ids.append(m.group(1))
        return ids

    def stop(self) -> None:
        """Stop the server (SIGINT, as Ctrl-C would) and wait for it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def token(owner: str, cadence: str = "monthly", *, as_of: date | None = None, days: float = 1.0) -> str:
    """A link token for `owner` signed with the test secret (negative days: already expired)."""
    return links.sign(SECRET, owner, cadence, as_of, datetime.now(UTC) + timedelta(days=days))


def report_path(level: str, cadence: str, tok: str, owner: str | None = None) -> str:
    """The live report page of `owner` (default: the link's owner) for a template."""
    return f"/voila/render/{level}_{cadence}.ipynb?t={tok}" + (f"&owner={owner}" if owner else "")


def launch(p: object) -> object:
    """Headless Debian Chromium through Playwright."""
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # type: ignore[attr-defined]


def screenshot(page: object, name: str) -> Path:
    """The whole live page (its scrolling cell area grown to full height) under test-output/live/."""
    OUT.mkdir(parents=True, exist_ok=True)
    h = page.evaluate("(document.getElementById('rendered_cells') || document.body).scrollHeight")  # type: ignore
    page.set_viewport_size({"width": 1280, "height": max(900, min(int(h) + 40, 14000))})  # type: ignore
    page.wait_for_timeout(300)  # type: ignore
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore
    return path


def sample_org(run: Path) -> dict[str, str]:
    """From a run's owners: a manager with 2+ reps, one of their reps, a rep of another such manager, and the latter."""
    import pandas as pd

    o = pd.read_parquet(run / "owners.parquet")
    reps = o[o["level"] == "rep"]
    counts = reps.groupby("manager_id").size()
    mine, other = sorted(counts[counts >= 2].index)[:2]
    return {"manager": mine, "rep": sorted(reps.loc[reps["manager_id"] == mine, "owner_id"])[0],
            "foreign_rep": sorted(reps.loc[reps["manager_id"] == other, "owner_id"])[0], "other_manager": other,
            "run": str(run)}


def chromium():
    """A headless Chromium for a test module (yields the browser; a pytest fixture body)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
