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


def test_a_run_long_after_the_data_ends_says_so(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import pandas as pd

    from spm_lib.engine.context import data_end_note, latest_change

    opps = pd.DataFrame({"created_date": pd.to_datetime(["2017-01-05", "2017-06-01"]),
                         "close_date": pd.to_datetime(["2017-12-31", "2018-03-01"]),  # the open deal's is a plan
                         "is_closed": [True, False]})
    history = pd.DataFrame({"changed_at": pd.to_datetime(["2017-12-20"])})
    assert latest_change(opps, history) == date(2017, 12, 31)
    assert latest_change(opps.drop(columns="is_closed"), None) == date(2017, 6, 1)  # closing unknown: created only
    assert data_end_note(opps, history, date(2017, 12, 1), date(2017, 12, 31)) is None  # inside the closed period
    note = data_end_note(opps, history, date(2026, 10, 1), date(2026, 10, 31))
    assert note is not None and "The data ends on 2017-12-31" in note and "--as-of 2017-12-31" in note
    # a real export (ending in 2017) run with a 2026 as-of: `spm cube` says so, and the report header carries it
    example_project(tmp_path, "maven_crm")
    env = {**os.environ, "SPM_PROJECT_DIR": str(tmp_path)}
    out = subprocess.run([str(Path(sys.executable).parent / "spm"), "cube", "--cadence", "monthly", "--as-of",
                          "2026-10-31"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "WARNING: The data ends on 2017-12-" in out.stderr and "--as-of 2017-12-" in out.stderr
