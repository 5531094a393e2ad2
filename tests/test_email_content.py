"""What an owner's email says (issue 15, item 7): the report's at-a-glance block, its first 5 deals to fix, the open
actions of the register, no script, every image a cid: part with alt text; and that it fits a 390 px phone in
headless Chromium with JavaScript off. Built by a real `spm run` and `spm send` (dry run, then once through a real
SMTP server on loopback)."""

from __future__ import annotations

import base64
import email
import html
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
from playwright.sync_api import Browser

from spm_lib.batch.runner import run
from spm_lib.config import Config, StateConfig, load_config
from spm_lib.deliver import compose
from spm_lib.deliver.body import CHART_WIDTH, PHONE_WIDTH
from spm_lib.deliver.images import png_size, with_min_font
from spm_lib.report.core import Report, load
from spm_lib.report.markup import SESSION_WORDS
from spm_lib.state import actions

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "email"
AS_OF = date(2026, 10, 31)
OWNERS = ("exec-01", "mgr-01", "rep-002")  # the demo's executive, its manager and one of their reps
SECRET = "a-test-secret-of-enough-length"
MIN_TEXT_PX = 11  # the smallest text a phone reader is asked to read
# the manager's register: two open actions (one due before the as-of day: overdue) and one closed
OPEN_LATE = ("Call the 3 stalled Proposal deals with Gabriel", date(2026, 10, 20))
OPEN_LATER = ("Coach Sofia on discovery calls", date(2026, 11, 30))
DONE = ("Clean the close dates of Q3", date(2026, 10, 15))


@dataclass
class Sent:
    """An owner's email as written by a dry run, its report, and the project it came from."""

    msg: EmailMessage
    html: str
    text: str
    rpt: Report


def _cfg(root: Path) -> Config:
    cfg = load_config(root)
    return cfg.model_copy(update={"state": StateConfig(url=f"sqlite:///{root / 'state.sqlite'}")})


@pytest.fixture(scope="module")
def project(small_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A monthly run of the small demo, the manager's actions recorded in its register."""
    root = tmp_path_factory.mktemp("email-content") / "p"
    shutil.copytree(small_project, root)
    run(load_config(root), "monthly", AS_OF, workers=1, progress=False)
    cfg = _cfg(root)
    for i, (text, due) in enumerate((OPEN_LATE, OPEN_LATER, DONE)):
        a = actions.record(cfg, form_key=f"k{i}", owner_id="mgr-01", text=text, due_date=due, cadence="monthly",
                           period="2026-10", recorded_by="mgr-01", kpi="bookings" if i == 0 else None)
        if (text, due) == DONE:
            actions.set_status(cfg, a.action_id, "done", "mgr-01")
    return root


def run_dir(root: Path) -> Path:
    return root / "runs/monthly/2026-10-31"


@pytest.fixture(scope="module")
def sent(project: Path) -> dict[str, Sent]:
    """The manager's and the rep's emails of a dry run (.eml files), parsed back with the email package."""
    cfg = _cfg(project)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPM_LINK_SECRET", SECRET)
        for owner in OWNERS:
            summary = compose.send_all(cfg, run_dir(project), owner=owner, dry_run=True, progress=False)
            assert summary.sent == [owner], summary.text()
        with compose.project_env(project):
            for owner in OWNERS:
                raw = (run_dir(project) / "email" / f"{owner}.eml").read_bytes()
                msg = email.message_from_bytes(raw, policy=policy.default)
                assert isinstance(msg, EmailMessage)
                body, plain = msg.get_body(("html",)), msg.get_body(("plain",))
                assert body is not None and plain is not None
                out[owner] = Sent(msg, body.get_content(), plain.get_content(),
                                  load(owner, "monthly", run_dir=run_dir(project)))
    return out


def expected_bookings(folder: Path, owner_id: str) -> str:
    """The owner's bookings of the closed period as the cube files have them, formatted as the email formats them."""
    meta = json.loads((folder / "cube.json").read_text())
    k = pd.read_parquet(folder / "kpis.parquet")
    row = k[(k["owner_id"] == owner_id) & (k["kpi"] == "bookings") & (k["period"] == meta["closed_period"])
            & k["dim"].isna()]
    assert len(row) == 1
    return compose.format_value(row["value"].iloc[0], "currency", meta["currency"])


def shown_text(page_html: str) -> str:
    """The text a reader sees in an HTML body (tags dropped, entities decoded, spaces collapsed)."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page_html)))


# ---------------------------------------------------------------- what it says
@pytest.mark.parametrize("owner", OWNERS)
def test_the_email_opens_with_the_reports_at_a_glance_block(sent: dict[str, Sent], owner: str) -> None:
    s = sent[owner]
    findings = s.rpt.top_findings()
    assert len(findings) == 3  # the demo's owners have three findings to show
    word = SESSION_WORDS[s.rpt.session_status()]
    seen = shown_text(s.html)
    for shown in (seen, s.text):
        assert word.lower() in shown.lower()
        assert all(f in shown for f in findings), (findings, shown[:2000])
        assert f"This session decides: {s.rpt.session_decides()}." in shown
    # at a glance comes first: the status word before the findings, the findings before the trust section and KPIs
    at = [seen.find(x) for x in (word, findings[0], findings[2], "Above the line")]
    assert at == sorted(at) and at[0] >= 0, at
    assert word in s.msg["Subject"]


@pytest.mark.parametrize("owner", OWNERS)
def test_the_deals_to_fix_are_the_first_five_of_the_reports_list(sent: dict[str, Sent], owner: str) -> None:
    s = sent[owner]
    report_list = s.rpt.deals_to_fix()["opportunity_id"].astype(str).tolist()
    expected = report_list[:5]
    assert expected  # every one of these owners has deals to fix (rep-002: 2 on the test company)
    assert max(len(x.rpt.deals_to_fix()) for x in sent.values()) > 5  # some report lists more than the email shows
    listed = re.findall(r"^- .* \((opp-\d+), [^)]*\), ", s.text, flags=re.M)
    assert listed == expected
    # the same deals in the same order in the HTML, after the heading that says how many the report lists
    seen = shown_text(s.html)
    n = len(expected)
    head = seen.index(f"The 5 largest deals to fix (of {len(report_list)};" if len(report_list) > 5
                      else f"The {n} largest deal{'s' if n > 1 else ''} to fix")
    at = [seen.find(d, head) for d in expected]
    assert all(a > head for a in at) and at == sorted(at), at
    # the trust section of the report itself lists the same five first
    trust = str(s.rpt.trust())
    at = [trust.find(d) for d in expected]
    assert min(at) >= 0 and at == sorted(at), at


def test_the_open_actions_of_the_register_are_listed_overdue_marked(sent: dict[str, Sent]) -> None:
    s = sent["mgr-01"]
    seen = shown_text(s.html)
    assert "Open actions (2, 1 overdue)" in seen and "Open actions (2, 1 overdue)" in s.text
    late = seen.index(OPEN_LATE[0])
    assert seen[late:].startswith(f"{OPEN_LATE[0]} (moves Bookings) due 2026-10-20 overdue")
    assert f"{OPEN_LATER[0]} due 2026-11-30" in seen and "overdue" not in seen[seen.index(OPEN_LATER[0]):][:60]
    assert DONE[0] not in seen and DONE[0] not in s.text  # closed: not an open action
    assert f"- {OPEN_LATE[0]} (moves Bookings) — due 2026-10-20 — OVERDUE" in s.text
    assert "No open actions from earlier sessions." in shown_text(sent["rep-002"].html)


@pytest.mark.parametrize("owner", OWNERS)
def test_it_reads_with_scripts_and_remote_images_blocked(sent: dict[str, Sent], owner: str) -> None:
    s = sent[owner]
    lower = s.html.lower()
    assert "<script" not in lower and "javascript:" not in lower and "<link" not in lower and "url(" not in lower
    assert not re.search(r"\son[a-z]+\s*=", lower)  # no event handler attributes
    parts = {p["Content-ID"].strip("<>"): bytes(p.get_payload(decode=True))
             for p in s.msg.walk() if p.get_content_type() == "image/png"}
    imgs = re.findall(r"<img\b[^>]*>", s.html)
    assert 2 <= len(imgs) == len(parts)
    for tag in imgs:
        src = re.search(r'\ssrc="([^"]*)"', tag)
        alt = re.search(r'\salt="([^"]*)"', tag)
        assert src and src.group(1).startswith("cid:") and src.group(1)[4:] in parts, tag
        assert alt and alt.group(1).strip() and alt.group(1) != "Chart", tag  # its title, read with images off
    assert not re.search(r'(src|background)\s*=\s*"https?:', lower)
    assert "?t=" in s.html and "Open your live report" in s.html  # the signed link to the live report
    for png in parts.values():  # drawn at the width a phone shows them, sharp on a 3x screen
        assert png_size(png)[0] == CHART_WIDTH * compose.CHART_SCALE


def test_chart_text_is_raised_to_the_floor_and_nothing_else_changes() -> None:
    fig = {"data": [{"type": "scatter", "x": ["a", "b"], "y": [1, 2], "textfont": {"size": [9, 14]},
                     "marker": {"size": 4, "line": {"width": 1}}}],
           "layout": {"font": {"size": 10, "family": "Arial"}, "title": {"text": "T", "font": {"size": 13}},
                      "xaxis": {"tickfont": {"size": 9}},
                      "annotations": [{"text": "target", "font": {"size": 11, "color": "#777"}}]}}
    out = with_min_font(fig, 12)
    assert out["layout"]["font"] == {"size": 12, "family": "Arial"}
    assert out["layout"]["title"]["font"]["size"] == 13  # larger already: kept
    assert out["layout"]["xaxis"]["tickfont"]["size"] == 12
    assert out["layout"]["annotations"][0]["font"] == {"size": 12, "color": "#777"}
    assert out["data"][0]["textfont"]["size"] == [12, 14]
    assert out["data"][0]["marker"] == {"size": 4, "line": {"width": 1}}  # marker sizes are not text
    assert out["layout"]["uniformtext"] == {"minsize": 12, "mode": "hide"}
    assert fig["layout"]["font"]["size"] == 10  # the figure itself is left alone
    # at a phone's width the chart is shown 1:1, so its smallest text is the floor: readable
    assert compose.CHART_MIN_FONT * (PHONE_WIDTH - 2 * 16) / CHART_WIDTH >= MIN_TEXT_PX


# ---------------------------------------------------------------- as a phone and a desktop show it
def inline_images(msg: EmailMessage, page_html: str) -> str:
    """The HTML body with each cid: image as a data: URI of its PNG part (as a mail client shows it)."""
    pngs = {p["Content-ID"].strip("<>"): bytes(p.get_payload(decode=True))
            for p in msg.walk() if p.get_content_type() == "image/png"}
    return re.sub(r'src="cid:([^"]+)"',
                  lambda m: f'src="data:image/png;base64,{base64.b64encode(pngs[m.group(1)]).decode()}"', page_html)


@pytest.mark.parametrize("owner", OWNERS)
def test_it_fits_a_390_px_phone_with_javascript_off(sent: dict[str, Sent], owner: str, browser: Browser,
                                                    project: Path, tmp_path: Path) -> None:
    page_file = tmp_path / f"{owner}.html"
    page_file.write_text(inline_images(sent[owner].msg, sent[owner].html), encoding="utf-8")
    bookings = expected_bookings(run_dir(project), owner)
    assert re.search(r"\d", bookings)  # a number, not the missing-value dash
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in (PHONE_WIDTH, 1440):
        context = browser.new_context(java_script_enabled=False, viewport={"width": width, "height": 900})
        try:
            page = context.new_page()
            page.goto(page_file.as_uri())
            scroll = page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width, f"{owner} at {width} px scrolls sideways: {scroll} px wide"
            wide = page.locator("body *").evaluate_all(
                f"els => els.filter(e => e.getBoundingClientRect().right > {width} + 0.5)"
                ".map(e => e.tagName + ' ' + e.textContent.slice(0, 40))")
            assert wide == [], wide
            # the KPIs one per row: label (and target) on the left, value (and status) on the right
            table = page.locator("h2:text-is('Above the line') + table")
            label = re.compile(r"^\s*Bookings(\s*target\s.*)?\s*$")  # <br> adds no space
            row = table.locator("tr").filter(has=page.locator("td", has_text=label))
            assert row.count() == 1 and row.is_visible()
            assert row.locator("td").nth(1).inner_text().strip().splitlines()[0] == bookings
            imgs = page.locator("img").evaluate_all(
                "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
            assert imgs and all(done and natural > 0 for done, natural, _ in imgs), imgs
            # the charts' smallest text (CHART_MIN_FONT layout px) on screen, at the width each chart is shown
            assert min(shown for _, _, shown in imgs) * compose.CHART_MIN_FONT / CHART_WIDTH >= MIN_TEXT_PX
            page.screenshot(path=str(SHOTS / f"email_{owner}_{width}.png"), full_page=True)
        finally:
            context.close()


# ---------------------------------------------------------------- through a real SMTP server
def test_the_email_sent_over_smtp_is_the_one_the_dry_run_wrote(project: Path, sent: dict[str, Sent], smtp: tuple,
                                                              tmp_path: Path) -> None:
    box, port = smtp
    box.reset()
    root = tmp_path / "p"
    shutil.copytree(project, root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPM_SMTP_HOST", "127.0.0.1")
        mp.setenv("SPM_SMTP_PORT", str(port))
        mp.setenv("SPM_LINK_SECRET", SECRET)
        summary = compose.send_all(_cfg(root), run_dir(root), owner="mgr-01", progress=False)
    assert summary.sent == ["mgr-01"], summary.text()
    ((rcpts, msg),) = [(r, m) for r, m in box.parsed() if m["X-SPM-Run"]]  # the operator's summary aside
    body = msg.get_body(("html",))
    assert body is not None
    dry = sent["mgr-01"]
    assert msg["X-SPM-Content-Hash"] == dry.msg["X-SPM-Content-Hash"]
    # the same body but for the live link, signed afresh with a new expiry
    link = re.compile(r"\?t=[^\"<\s]+")
    assert link.sub("?t=", body.get_content()) == link.sub("?t=", dry.html)
    assert rcpts == [msg["To"].addresses[0].addr_spec]
