"""The .eml of `spm send --dry-run` as a mail client shows it: headless Chromium, JavaScript off, CID images."""

from __future__ import annotations

import base64
import email
import json
import re
import shutil
from dataclasses import dataclass
from datetime import date
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pandas as pd
import pytest
from playwright.sync_api import sync_playwright

from spm_lib.batch.runner import run
from spm_lib.config import StateConfig, load_config
from spm_lib.deliver.compose import format_value as email_format
from spm_lib.deliver.compose import send_all

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 10, 31)
OWNER = "exec-01"  # the demo's executive
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-quic", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@dataclass
class Eml:
    msg: EmailMessage
    run_dir: Path


@pytest.fixture(scope="module")
def eml(small_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Eml:
    """The executive's email of a real monthly run, written by a dry run (nothing sent)."""
    root = tmp_path_factory.mktemp("eml") / "p"
    shutil.copytree(small_project, root)
    run(load_config(root), "monthly", AS_OF, workers=1, progress=False)
    cfg = load_config(root)
    cfg = cfg.model_copy(update={"state": StateConfig(url=f"sqlite:///{root / 'state.sqlite'}")})
    run_dir = root / "runs/monthly/2026-10-31"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPM_LINK_SECRET", "a-test-secret-of-enough-length")
        summary = send_all(cfg, run_dir, owner=OWNER, dry_run=True, progress=False)
    assert summary.sent == [OWNER], summary.text()
    msg = email.message_from_bytes((run_dir / "email" / f"{OWNER}.eml").read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return Eml(msg, run_dir)


def inline_cid_images(msg: EmailMessage) -> tuple[str, int]:
    """The HTML body with each `cid:` src replaced by a data: URI of its PNG part; and the number of PNG parts."""
    body = msg.get_body(("html",))
    assert body is not None
    html = body.get_content()
    pngs = {p["Content-ID"].strip("<>"): bytes(p.get_payload(decode=True))
            for p in msg.walk() if p.get_content_type() == "image/png"}

    def data_uri(m: re.Match[str]) -> str:
        cid = m.group(1)
        assert cid in pngs, f"src=cid:{cid} has no image part"
        return f'src="data:image/png;base64,{base64.b64encode(pngs[cid]).decode()}"'

    return re.sub(r'src="cid:([^"]+)"', data_uri, html), len(pngs)


def expected_bookings(run_dir: Path, owner_id: str) -> str:
    """The owner's bookings of the closed period as the cube has them, formatted as the email formats them."""
    meta = json.loads((run_dir / "cube.json").read_text())
    k = pd.read_parquet(run_dir / "kpis.parquet")
    row = k[(k["owner_id"] == owner_id) & (k["kpi"] == "bookings") & (k["period"] == meta["closed_period"])
            & k["dim"].isna()]
    assert len(row) == 1
    return email_format(row["value"].iloc[0], "currency", meta["currency"])


def test_the_eml_shows_the_kpi_table_and_every_chart_without_javascript(eml: Eml, tmp_path: Path) -> None:
    html, n_pngs = inline_cid_images(eml.msg)
    assert "cid:" not in html and n_pngs >= 2
    page_file = tmp_path / f"email_{OWNER}.html"
    page_file.write_text(html, encoding="utf-8")
    bookings = expected_bookings(eml.run_dir, OWNER)
    assert re.search(r"\d", bookings)  # a number, not the missing-value dash
    shot = ROOT / "test-output" / f"email_{OWNER}.png"
    shot.parent.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(java_script_enabled=False, viewport={"width": 700, "height": 900})
            page = context.new_page()
            page.goto(page_file.as_uri())
            table = page.locator("h2:text-is('Above the line') + table")  # the KPI table under its heading
            assert table.is_visible()
            row = table.locator("tr").filter(has=page.locator("td", has_text=re.compile(r"^\s*Bookings\s*$")))
            assert row.count() == 1 and row.is_visible()
            assert row.locator("td").nth(1).inner_text().strip() == bookings
            sizes = page.locator("img").evaluate_all(
                "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().height])")
            assert len(sizes) == n_pngs
            assert all(done and width > 0 and height > 0 for done, width, height in sizes), sizes
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 0
