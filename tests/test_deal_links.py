"""Links out (issue 15, item 8): config/crm.yml `deal_url` makes every deal id a link to the CRM in the report, the
email and the live page (and ids stay plain text without it); the report's link to its trust CSV is relative."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from spm_lib.batch.runner import plan
from spm_lib.config import load_config
from spm_lib.deliver.compose import html_body, plain_text, read_facts
from spm_lib.domain.crm import check_deal_url, fill_deal_url
from spm_lib.engine.cube import compute_cube
from spm_lib.errors import ConfigError
from spm_lib.live.widgets import deals_html
from spm_lib.report import markup
from spm_lib.report.core import Report
from tests.test_cube import AS_OF, _cfg, company

ROOT = Path(__file__).resolve().parents[1]
URL = "https://crm.example.com/opp/{opportunity_id}?src=spm"
HOSTILE = 'o8/<&>"'  # an open deal (Prospecting, 60, closes 2027-01-15) whose id needs quoting and escaping


def _project(folder: Path, crm_yml: str | None) -> Path:
    shutil.copytree(ROOT / "config", folder / "config", ignore=shutil.ignore_patterns("local", "examples"))
    (folder / "config" / "crm.yml").unlink(missing_ok=True)
    if crm_yml is not None:
        (folder / "config" / "crm.yml").write_text(crm_yml, encoding="utf-8")
    return folder


def _link(href: str, text: str) -> str:
    return f'<a href="{href}" target="_blank" rel="noopener noreferrer">{text}</a>'


@pytest.fixture(scope="module")
def cube():
    """test_cube's company (E <- M <- R1, R2) with o6 (R1, Proposal 400, closing Nov 20) stale since Aug 1, so
    R1's stale check fails, and o8 renamed to a hostile id."""
    data = company()
    opps = data.tables["opportunities"]
    opps.loc[opps["opportunity_id"] == "o6", "last_modified_date"] = pd.Timestamp("2026-08-01")
    opps.loc[opps["opportunity_id"] == "o8", "opportunity_id"] = HOSTILE
    c = compute_cube(_cfg(), data, "monthly", AS_OF)
    c.meta["currency"] = "EUR"
    return c


@pytest.fixture
def with_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPM_PROJECT_DIR", str(_project(tmp_path, f'deal_url: "{URL}"\n')))
    return tmp_path


@pytest.fixture
def without_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPM_PROJECT_DIR", str(_project(tmp_path, None)))
    return tmp_path


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(("template", "says"), [
    ("ftp://crm.example.com/opp/{opportunity_id}", "must start with http:// or https://, not ftp:"),
    ("javascript:alert(1)//{opportunity_id}", "must start with http:// or https://, not javascript:"),
    ("crm.example.com/opp/{opportunity_id}", "must start with http:// or https://, it has no scheme"),
    ("https://crm.example.com/opp/", "lacks the placeholder {opportunity_id}"),
    ("https://crm.example.com/{account_id}/{opportunity_id}", "the only placeholder allowed is {opportunity_id}"),
    ("https://{opportunity_id}.crm.example.com/", "the host must be written out"),
    ("https://crm.example.com/opp/{opportunity_id} x", "white space"),
])
def test_a_bad_deal_url_fails_naming_the_file_the_key_and_the_fix(tmp_path: Path, template: str, says: str) -> None:
    root = _project(tmp_path, f'deal_url: "{template}"\n')
    with pytest.raises(ConfigError) as e:
        load_config(root)
    text = str(e.value)
    assert str(root / "config" / "crm.yml") in text and "key `deal_url`" in text and says in text, text
    assert "e.g. https://crm.example.com/opp/{opportunity_id}" in text


def test_deal_url_is_optional_and_an_unknown_key_is_refused(tmp_path: Path) -> None:
    assert load_config(_project(tmp_path / "none", None)).crm.deal_url is None
    assert load_config(_project(tmp_path / "comments", "# deal_url: https://x/{opportunity_id}\n")).crm.deal_url is None
    assert load_config(_project(tmp_path / "set", f"deal_url: {URL}\n")).crm.deal_url == URL
    with pytest.raises(ConfigError, match=r"key `deal_ur`: unknown key \(did you mean 'deal_url'"):
        load_config(_project(tmp_path / "typo", f"deal_ur: {URL}\n"))


def test_the_repositorys_crm_yml_is_valid_and_leaves_ids_as_text() -> None:
    assert load_config(ROOT).crm.deal_url is None  # config/crm.yml documents the key, commented out


# ---------------------------------------------------------------- the one helper
def test_deal_link_quotes_the_id_into_the_url_and_escapes_the_text() -> None:
    assert check_deal_url(URL) == URL
    assert fill_deal_url(URL, "a/b c?d#e&f") == "https://crm.example.com/opp/a%2Fb%20c%3Fd%23e%26f?src=spm"
    assert markup.deal_link(HOSTILE, URL) == _link("https://crm.example.com/opp/o8%2F%3C%26%3E%22?src=spm",
                                                   "o8/&lt;&amp;&gt;&#34;")
    assert markup.deal_link("o1", URL, text="Big <deal>") == _link("https://crm.example.com/opp/o1?src=spm",
                                                                   "Big &lt;deal&gt;")
    # without a template: the escaped id, exactly as the tables showed it before
    assert markup.deal_link(HOSTILE, None) == "o8/&lt;&amp;&gt;&#34;"
    assert markup.deal_link("o1", "") == "o1"
    # a query string in the template keeps its & escaped in the attribute
    assert 'href="https://c.example.com/?id=o1&amp;t=1"' in markup.deal_link("o1", "https://c.example.com/?id="
                                                                                  "{opportunity_id}&t=1")


# ---------------------------------------------------------------- the report
def test_every_deal_table_of_the_report_links_its_ids(cube, with_url: Path) -> None:
    m = Report(cube, "M", Path("."))
    assert m.deal_url == URL
    trust = str(m.trust())
    # M's scope: o6 (R1) is the one deal to fix
    assert _link("https://crm.example.com/opp/o6?src=spm", "o6") in trust
    assert f'<td class="short">{_link("https://crm.example.com/opp/o6?src=spm", "o6")}</td>' in trust  # no wrap
    below = str(m.below_the_line())
    # the open pipeline (o6, o7, o9 and the hostile o8) and the deals won (o1, o3, o4, o5), each id a link
    for oid in ("o1", "o3", "o4", "o5", "o6", "o7", "o9"):
        assert _link(f"https://crm.example.com/opp/{oid}?src=spm", oid) in below, oid
    assert _link("https://crm.example.com/opp/o8%2F%3C%26%3E%22?src=spm", "o8/&lt;&amp;&gt;&#34;") in below
    push = str(m.deals_to_push())
    # the push list names deals; these have no name, so each shows its id, linked: o7 (R2, Dec 10), o9 (R1, Nov 15)
    assert _link("https://crm.example.com/opp/o7?src=spm", "o7") in push
    assert _link("https://crm.example.com/opp/o9?src=spm", "o9") in push


def test_without_deal_url_ids_stay_plain_text(cube, without_url: Path) -> None:
    m = Report(cube, "M", Path("."))
    assert m.deal_url is None
    html = str(m.trust()) + str(m.below_the_line()) + str(m.deals_to_push())
    assert "crm.example.com" not in html and 'target="_blank"' not in html
    assert '<td class="short">o6</td>' in html and "o8/&lt;&amp;&gt;&#34;" in html


def test_the_trust_csv_link_is_relative_and_names_the_file_the_runner_writes(cube, without_url: Path,
                                                                              tmp_path: Path) -> None:
    trust = str(Report(cube, "M", Path(".")).trust())
    hrefs = re.findall(r'href="([^"]+\.trust\.csv)"', trust)
    assert hrefs == ["M.trust.csv"]  # relative: beside the report in the run folder
    # the runner writes <report>.trust.csv beside <level>/<owner>.html: the link resolves from the HTML's folder
    run = tmp_path / "runs" / "monthly" / str(AS_OF)
    run.mkdir(parents=True)
    cube.owners.to_parquet(run / "owners.parquet")
    job = next(j for j in plan(load_config(without_url), run, "monthly", owner="M"))
    assert Path(job.html).with_suffix(".trust.csv") == Path(job.html).parent / hrefs[0]
    # a rep has no CSV, and the live page (no file beside it) no link
    assert ".trust.csv" not in str(Report(cube, "R1", Path(".")).trust())
    assert ".trust.csv" not in str(Report(cube, "M", Path("."), viewer_id="M").trust())


def test_the_trust_csv_link_of_an_owner_id_with_dots_names_the_written_file(tmp_path: Path,
                                                                          without_url: Path) -> None:
    """Owner ids may hold a '.': the runner's files keep the whole id (Path.with_suffix cut 'mgr.01' to 'mgr')."""
    data = company()
    for table in data.tables.values():
        for column in ("owner_id", "manager_id"):
            if column in table:
                table[column] = table[column].replace({"M": "mgr.01"})
    opps = data.tables["opportunities"]
    opps.loc[opps["opportunity_id"] == "o6", "last_modified_date"] = pd.Timestamp("2026-08-01")
    cube = compute_cube(_cfg(), data, "monthly", AS_OF)
    href = re.findall(r'href="([^"]+\.trust\.csv)"', str(Report(cube, "mgr.01", Path(".")).trust()))
    assert href == ["mgr.01.trust.csv"]
    run = tmp_path / "runs" / "monthly" / str(AS_OF)
    run.mkdir(parents=True)
    owners = pd.concat([cube.owners, cube.owners[cube.owners["owner_id"] == "mgr.01"].assign(owner_id="mgr.02")])
    owners.to_parquet(run / "owners.parquet")
    jobs = {j.owner_id: j for j in plan(load_config(without_url), run, "monthly", level="manager")}
    assert Path(jobs["mgr.01"].html).name == "mgr.01.html" and Path(jobs["mgr.02"].html).name == "mgr.02.html"
    assert Path(jobs["mgr.01"].ipynb).name == "mgr.01.ipynb"
    assert Path(jobs["mgr.01"].html).with_suffix(".trust.csv").name == href[0]


# ---------------------------------------------------------------- the email and the live page
def test_the_email_links_the_deals_to_fix(cube, with_url: Path) -> None:
    r1 = Report(cube, "R1", Path("."))
    facts = read_facts(r1)
    assert facts.trust == "fail" and facts.deal_url == URL
    body = html_body(r1, facts, title="t", link_url=None, images={})
    assert _link("https://crm.example.com/opp/o6?src=spm", "o6") in body
    assert ".trust.csv" not in body  # the email links no local file
    text = plain_text(r1, facts, link_url=None)
    assert "\n  https://crm.example.com/opp/o6?src=spm\n" in text


def test_the_email_without_deal_url_names_the_deal_as_text(cube, without_url: Path) -> None:
    r1 = Report(cube, "R1", Path("."))
    facts = read_facts(r1)
    body = html_body(r1, facts, title="t", link_url=None, images={})
    assert "o6" in body and "crm.example.com" not in body and "<a " not in body
    assert "https://" not in plain_text(r1, facts, link_url=None)


def test_the_live_deals_table_links_its_ids(cube, with_url: Path) -> None:
    m = Report(cube, "M", Path("."), viewer_id="M")
    html = str(deals_html(m, m.scope_facts()))
    assert _link("https://crm.example.com/opp/o7?src=spm", "o7") in html
    assert _link("https://crm.example.com/opp/o8%2F%3C%26%3E%22?src=spm", "o8/&lt;&amp;&gt;&#34;") in html


def test_the_live_deals_table_without_deal_url(cube, without_url: Path) -> None:
    m = Report(cube, "M", Path("."), viewer_id="M")
    html = str(deals_html(m, m.scope_facts()))
    assert "<a " not in html and ">o7</td>" in html
