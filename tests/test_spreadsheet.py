"""CSV exports a spreadsheet opens safely (OWASP CSV injection): formula-like text is prefixed, numbers are kept."""

from __future__ import annotations

import io

import pandas as pd

from spm_lib.util.spreadsheet import safe_cell, to_safe_csv


def test_formula_like_text_is_prefixed_and_everything_else_kept() -> None:
    for text in ("=HYPERLINK(\"http://x\",\"y\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert safe_cell(text) == "'" + text
    for value in ("Acme", "", "1e5", " =spaced", -5, 3.5, None):
        assert safe_cell(value) == value


def test_a_frame_keeps_its_numbers_and_its_missing_values() -> None:
    df = pd.DataFrame({"opportunity_id": ["o1", "o2", "o3"], "name": ["=cmd|' /C calc'!A0", "Renewal", None],
                       "amount": [-1200.5, 300.0, None], "stage": pd.array(["-", "Won", pd.NA], dtype="string")})
    text = to_safe_csv(df)
    assert text.splitlines() == ["opportunity_id,name,amount,stage",
                                 "o1,'=cmd|' /C calc'!A0,-1200.5,'-",
                                 "o2,Renewal,300.0,Won",
                                 "o3,,,"]
    back = pd.read_csv(io.StringIO(text))
    assert back["amount"].iloc[0] == -1200.5  # a negative amount is still a number


def test_spm_trust_csv_does_not_let_a_deal_name_run_as_a_formula(small_project, tmp_path) -> None:  # noqa: ANN001
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import duckdb

    project = tmp_path / "p"
    shutil.copytree(small_project, project, ignore=shutil.ignore_patterns("runs", "state"))
    with duckdb.connect(str(project / "data" / "demo.duckdb")) as con:
        # a deal past its close date (the check every owner's list shows) named like a formula
        oid = con.execute("SELECT opportunity_id FROM opportunities WHERE NOT is_closed AND close_date < DATE "
                          "'2026-10-01' ORDER BY amount DESC LIMIT 1").fetchone()[0]
        con.execute("UPDATE opportunities SET name = '=HYPERLINK(\"http://evil\",\"x\")' WHERE opportunity_id = ?",
                    [oid])
    env = {**os.environ, "SPM_PROJECT_DIR": str(project)}
    out = subprocess.run([str(Path(sys.executable).parent / "spm"), "trust", "--cadence", "monthly", "--as-of",
                          "2026-10-31", "--format", "csv"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = pd.read_csv(io.StringIO(out.stdout))
    names = rows.loc[rows["opportunity_id"] == oid, "name"]
    assert not names.empty and set(names) == {"'=HYPERLINK(\"http://evil\",\"x\")"}
    assert not rows.columns.str.endswith(("_x", "_y")).any()  # no merge artefacts as column names
