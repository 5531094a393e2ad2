"""Both shipped CRM examples, from their raw export files to every owner's HTML report and email (.eml), mapped by
their config alone: optional data absent (no history, no activities, no leads, no targets) must not break a report."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from spm_lib.batch.runner import run
from spm_lib.config import load_config
from spm_lib.deliver.compose import send_all
from tests.test_sources import example_project

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("example,as_of", [("maven_crm", date(2017, 12, 31)), ("salesforce", date(2025, 3, 31))])
def test_every_owner_of_an_example_gets_a_report_and_an_email(tmp_path: Path, example: str, as_of: date,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    example_project(tmp_path, example)
    # a first run sends every email to RevOps (the Maven export has no email addresses at all)
    (tmp_path / "config" / "delivery.yml").write_text("redirect_to: revops@example.com\n")
    cfg = load_config(tmp_path)
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    monkeypatch.setenv("SPM_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("SPM_LINK_SECRET", raising=False)
    manifest = run(cfg, "monthly", as_of, workers=1, progress=False)
    owners = manifest["owners"]
    failed = {o: r.get("error") for o, r in owners.items() if r["status"] != "ok"}
    assert failed == {}
    assert owners and all(Path(r["html"]).is_file() for r in owners.values())
    for r in owners.values():
        html = Path(r["html"]).read_text()
        assert "plotly-graph-div" in html and "Traceback" not in html
    run_dir = Path(next(iter(owners.values()))["html"]).parents[1]
    summary = send_all(cfg, run_dir, dry_run=True, progress=False)
    assert summary.failed == {} and len(summary.written) == len(owners) - len(summary.skipped)
    emails = list((run_dir / "email").glob("*.eml"))
    assert len(emails) == len(summary.written) >= 1
    assert all("revops@example.com" in e.read_text(errors="replace") for e in emails)
