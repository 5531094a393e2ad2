"""The optional-data matrix (SPEC §3): datasets without optional tables or columns, with empty tables, one owner and
one deal, or deals without amounts and dates must give a data check, a cube, every template's report, the emails
and a live page without a traceback, and every KPI whose data is absent says "not available — needs …", never 0.

The datasets are generated: a small demo company cut to one owner per level (so each run renders each level's
template once), then reduced per case by a seeded choice of optional tables and columns to drop."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pytest

from spm_lib.batch.runner import run
from spm_lib.config import load_config
from spm_lib.deliver.compose import send_all
from spm_lib.domain.contract import CONTRACT
from spm_lib.engine.cube import read_cube
from spm_lib.metrics import kpis as registry
from spm_lib.store.runfolder import run_dir as run_folder

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 10, 31)
CADENCES = ("monthly", "quarterly", "annual", "weekly")
OPTIONAL_TABLES = sorted(n for n, t in CONTRACT.items() if not t.required)
OWNER_TABLES = ("opportunities", "activities", "leads")  # rows moved to the one rep kept
PER_OWNER_TABLES = ("targets", "forecasts", "costs")  # rows of dropped owners deleted


@dataclass
class Case:
    """One dataset of the matrix: tables and columns dropped, tables emptied, and SQL run on what is left."""

    name: str
    drop_tables: list[str] = field(default_factory=list)
    drop_columns: dict[str, list[str]] = field(default_factory=dict)
    empty_tables: list[str] = field(default_factory=list)
    sql: list[str] = field(default_factory=list)


def _optional_columns(table: str) -> list[str]:
    """The contract's optional columns of `table`, but `stage`: a deal needs its stage or both is_closed and is_won
    (the case flags-without-stage drops it)."""
    return [c.name for c in CONTRACT[table].columns if not c.required and (table, c.name) != ("opportunities", "stage")]


def _random_case(seed: int) -> Case:
    """A seeded random subset: each optional table kept with p = 0.5, each optional column dropped with p = 0.4."""
    rng = random.Random(seed)
    drop_tables = [t for t in OPTIONAL_TABLES if rng.random() < 0.5]
    kept = [t for t in CONTRACT if t not in drop_tables]
    drop_columns = {t: [c for c in _optional_columns(t) if rng.random() < 0.4] for t in kept}
    return Case(f"random-{seed}", drop_tables, {t: cs for t, cs in drop_columns.items() if cs})


CASES = [
    Case("required-only", OPTIONAL_TABLES, {t: _optional_columns(t) for t in ("owners", "opportunities")}),
    _random_case(1),
    _random_case(2),
    Case("empty-optional-tables", empty_tables=OPTIONAL_TABLES),
    Case("flags-without-stage", drop_columns={"opportunities": ["stage"]}),
    Case("one-owner-one-deal", sql=[
        "DELETE FROM owners WHERE manager_id IS NOT NULL",
        "UPDATE opportunities SET owner_id = (SELECT owner_id FROM owners)",
        "DELETE FROM opportunities WHERE opportunity_id <> (SELECT min(opportunity_id) FROM opportunities "
        "WHERE is_won)",
        "DELETE FROM opportunity_history WHERE opportunity_id NOT IN (SELECT opportunity_id FROM opportunities)",
        *(f"DELETE FROM {t} WHERE owner_id NOT IN (SELECT owner_id FROM owners)" for t in
          ("activities", "leads", *PER_OWNER_TABLES))]),
    Case("deals-without-amounts-or-dates", sql=[
        "UPDATE opportunities SET amount = NULL WHERE hash(opportunity_id) % 3 = 0",
        "UPDATE opportunities SET created_date = NULL, last_modified_date = NULL WHERE hash(opportunity_id) % 4 = 1",
        "UPDATE opportunities SET stage = NULL WHERE hash(opportunity_id) % 7 = 2 AND NOT is_closed"]),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo company cut to one owner per level (executive, director, manager, one rep)."""
    from spm_lib.data.demo import generate

    db = tmp_path_factory.mktemp("matrix") / "base.duckdb"
    generate(db, seed=3, scale=0.03, end=AS_OF)
    with duckdb.connect(str(db)) as con:
        rep = con.execute("SELECT min(owner_id) FROM owners WHERE level = 'rep'").fetchone()[0]
        others = "(SELECT owner_id FROM owners WHERE level = 'rep' AND owner_id <> $rep)"
        for t in OWNER_TABLES:
            con.execute(f"UPDATE {t} SET owner_id = $rep WHERE owner_id IN {others}", {"rep": rep})
        for t in PER_OWNER_TABLES:
            con.execute(f"DELETE FROM {t} WHERE owner_id IN {others}", {"rep": rep})
        con.execute(f"DELETE FROM owners WHERE owner_id IN {others}", {"rep": rep})
        assert sorted(r[0] for r in con.execute("SELECT level FROM owners").fetchall()) == \
            ["director", "executive", "manager", "rep"]
    return db


def _project(folder: Path, base_db: Path, case: Case) -> Path:
    """A project folder whose DuckDB source is `base_db` reduced by `case` and whose source.yml lists what is left."""
    shutil.copytree(ROOT / "config", folder / "config", ignore=shutil.ignore_patterns("local", "examples"))
    shutil.copytree(ROOT / "templates", folder / "templates")
    db = folder / "data" / "crm.duckdb"
    db.parent.mkdir(parents=True)
    shutil.copy(base_db, db)
    with duckdb.connect(str(db)) as con:
        for stmt in case.sql:
            con.execute(stmt)
        for t in case.drop_tables:
            con.execute(f"DROP TABLE {t}")
        for t, cols in case.drop_columns.items():
            for c in cols:
                con.execute(f"ALTER TABLE {t} DROP COLUMN {c}")
        for t in case.empty_tables:
            con.execute(f"DELETE FROM {t}")
    tables = [t for t in CONTRACT if t not in case.drop_tables]
    (folder / "config" / "source.yml").write_text(
        "kind: duckdb\npath: data/crm.duckdb\ntables:\n" + "".join(f"  {t}: {{}}\n" for t in tables))
    (folder / "config" / "delivery.yml").write_text("redirect_to: revops@example.com\n")
    return folder


def _spm(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SPM_LINK_SECRET"} | {"SPM_PROJECT_DIR": str(project)}
    return subprocess.run([str(Path(sys.executable).parent / "spm"), *args], env=env, capture_output=True, text=True,
                          timeout=600)


def _assert_absent_is_never_zero(run_dir: Path, project: Path) -> None:
    """Every KPI whose declared data is absent is 'not available — needs …' in every row of the cube."""
    from spm_lib.data.load import load_dataset

    data = load_dataset(load_config(project))
    k = read_cube(run_dir).kpis
    k = k[k["dim"].isna()]
    history_stage = data.has("opportunity_history", "stage")  # a deal's stage is then read from its history
    for kpi_id, decl in registry.REGISTRY.items():
        missing = [m for m in data.missing(list(decl.needs)) if not (m == "opportunities.stage" and history_stage)]
        rows = k[k["kpi"] == kpi_id]
        if not missing or rows.empty:
            continue
        assert not rows["available"].any(), kpi_id
        assert rows["value"].isna().all(), kpi_id
        assert rows["na_reason"].str.startswith(registry.NOT_AVAILABLE).all(), kpi_id
        assert all(m in reason for reason in rows["na_reason"] for m in missing), kpi_id


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_report_renders_without_the_optional_data(case: Case, base: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path / "p", base, case)
    check = _spm(project, "data", "check")
    assert "Traceback" not in check.stderr + check.stdout
    assert check.returncode == 0, check.stdout + check.stderr
    monkeypatch.setenv("SPM_PROJECT_DIR", str(project))
    monkeypatch.delenv("SPM_LINK_SECRET", raising=False)
    cfg = load_config(project)
    with duckdb.connect(str(project / "data" / "crm.duckdb"), read_only=True) as con:
        owners = con.execute("SELECT * FROM owners").df()
    rendered = 0
    for cadence in CADENCES:
        manifest = run(cfg, cadence, AS_OF, workers=1, progress=False)
        reports = manifest["owners"]
        failed = {o: r.get("error") for o, r in reports.items() if r["status"] != "ok"}
        assert failed == {}, (cadence, failed)
        for r in reports.values():
            html = Path(r["html"]).read_text()
            assert "Traceback" not in html and "plotly-graph-div" in html, (cadence, r["html"])
        rendered += len(reports)
        if cadence == "monthly":
            run_dir = run_folder(cfg, cadence, AS_OF)
            _assert_absent_is_never_zero(run_dir, project)
            summary = send_all(cfg, run_dir, dry_run=True, progress=False)
            assert summary.failed == {}
            assert len(list((run_dir / "email").glob("*.eml"))) == len(summary.written) >= 1
    # each owner has a report per cadence of its level (weekly: reps only)
    levels = owners["level"].tolist() if "level" in owners else None
    if levels is not None:
        assert rendered == 3 * len(levels) + levels.count("rep")


def test_a_live_page_opens_on_the_required_columns_only(base: Path, tmp_path: Path, browser) -> None:  # noqa: ANN001
    from tests.live_server import CHARTS_DRAWN, Server, free_port, live_project, report_path, token

    src = _project(tmp_path / "src", base, CASES[0])
    project = live_project(src, tmp_path / "live", {"rep_monthly": 1})
    built = _spm(project, "run", "--cadence", "monthly", "--as-of", AS_OF.isoformat())
    assert built.returncode == 0, built.stderr
    with duckdb.connect(str(project / "data" / "crm.duckdb"), read_only=True) as con:
        rep = con.execute("SELECT owner_id FROM owners o WHERE NOT EXISTS "
                          "(SELECT 1 FROM owners m WHERE m.manager_id = o.owner_id)").fetchone()[0]
    server = Server(project, "127.0.0.1", free_port(), project / "serve.log").start(pools=1)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server.base + report_path("rep", "monthly", token(rep, as_of=AS_OF)))
        page.wait_for_function(CHARTS_DRAWN, timeout=90_000)
        text = page.inner_text("body")
        assert "Traceback" not in text and "This report cannot be opened" not in text
        assert "not available — needs activities" in text
        page.close()
    finally:
        server.stop()
