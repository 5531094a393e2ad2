"""spm run end to end on a small demo company: reports written, figures drawn, CRM text escaped, failures isolated."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import duckdb
import nbformat
import pytest

from spm_lib.batch.runner import run
from spm_lib.config import load_config
from spm_lib.store.runfolder import safe_name

AS_OF = date(2026, 10, 31)
EVIL = "<script>alert('x')</script> Mega deal"


@pytest.fixture(scope="module")
def project(small_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runner") / "p"
    shutil.copytree(small_project, root)
    con = duckdb.connect(str(root / "data" / "demo.duckdb"))
    # the largest open deal of the first rep gets a hostile name: it is listed in that rep's drill-down
    rep, opp = con.execute("""SELECT owner_id, opportunity_id FROM opportunities
        WHERE NOT is_closed AND amount IS NOT NULL AND owner_id LIKE 'rep-%'
        ORDER BY owner_id, amount DESC LIMIT 1""").fetchone()
    con.execute("UPDATE opportunities SET name = ? WHERE opportunity_id = ?", [EVIL, opp])
    con.close()
    (root / "evil_owner.txt").write_text(rep)
    # one rep's report fails: a cell raises for that owner only
    tpl = root / "templates" / "rep_monthly.ipynb"
    nb = nbformat.read(tpl, as_version=4)
    boom = "if owner_id == 'rep-002':\n    raise RuntimeError('boom for rep-002')"
    nb.cells.insert(3, nbformat.v4.new_code_cell(boom))
    nbformat.write(nb, tpl)
    return root


@pytest.fixture(scope="module")
def first_run(project: Path) -> dict:
    cfg = load_config(project)
    return run(cfg, "monthly", AS_OF, workers=2, progress=False)


def test_every_owner_but_the_failing_one_has_a_report(project: Path, first_run: dict) -> None:
    owners = first_run["owners"]
    assert first_run["failed"] == ["rep-002"]
    assert "boom for rep-002" in owners["rep-002"]["error"]
    ok = [o for o in owners.values() if o["status"] == "ok"]
    assert len(ok) == len(owners) - 1
    for o in ok:
        assert Path(o["html"]).is_file() and Path(o["ipynb"]).is_file()
    # the failed owner keeps its notebook (with the failing cell) and has no HTML that could be emailed
    failed = owners["rep-002"]
    assert failed["html"] == ""
    assert not (project / "runs/monthly/2026-10-31/rep/rep-002.html").exists()
    nb = nbformat.read(failed["ipynb"], as_version=4)
    assert any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    manifest = json.loads((project / "runs/monthly/2026-10-31/manifest.json").read_text())
    assert manifest["failed"] == ["rep-002"] and manifest["run_id"]
    assert (project / "runs/monthly/2026-10-31/run.log").read_text().count("rep-002 failed") == 1


def test_html_carries_the_drawn_figures_and_no_remote_scripts(project: Path, first_run: dict) -> None:
    exec_html = Path(first_run["owners"]["exec-01"]["html"]).read_text()
    # every figure is a plotly div with its newPlot call, and plotly.js is inlined once
    assert exec_html.count("Plotly.newPlot(") >= 6
    assert exec_html.count('id="spm-plotly-gz"') == 1  # the packed bundle, once
    assert 'src="http' not in exec_html and "require.js" not in exec_html
    assert "fix the data first" in exec_html.lower() or "can be trusted" in exec_html.lower()
    assert "Traceback" not in exec_html
    for level in ("executive", "manager", "rep"):  # batch sections stay static: no widget ever reaches the HTML
        owner = next(o for o, r in first_run["owners"].items() if r["level"] == level and r["status"] == "ok")
        page = Path(first_run["owners"][owner]["html"]).read_text()
        assert "widget-view+json" not in page and "Loading widget" not in page and "jupyter-widgets" not in page
        assert 'class="spm-error' not in page


def test_crm_text_is_escaped(project: Path, first_run: dict) -> None:
    rep = (project / "evil_owner.txt").read_text()
    html = Path(first_run["owners"][rep]["html"]).read_text()
    assert "&lt;script&gt;alert(" in html
    assert "<script>alert(" not in html


def test_resume_rerenders_only_the_failed_owner(project: Path, first_run: dict) -> None:
    tpl = project / "templates" / "rep_monthly.ipynb"
    nb = nbformat.read(tpl, as_version=4)
    nb.cells = [c for c in nb.cells if "boom" not in c.source]
    nbformat.write(nb, tpl)
    before = {k: Path(v["html"]).stat().st_mtime_ns for k, v in first_run["owners"].items() if v["html"]}
    again = run(load_config(project), "monthly", AS_OF, workers=1, resume=True, progress=False)
    assert again["rendered"] == 1
    assert again["failed"] == []
    assert Path(again["owners"]["rep-002"]["html"]).is_file()
    after = {k: Path(again["owners"][k]["html"]).stat().st_mtime_ns for k in before}
    assert after == before


def test_owner_ids_become_safe_file_names() -> None:
    assert safe_name("rep-001") == "rep-001"
    unsafe = safe_name("../../etc/passwd")
    assert "/" not in unsafe and not unsafe.startswith(".")
    assert safe_name("a/b") != safe_name("a_b")  # no collision after cleaning
