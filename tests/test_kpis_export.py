"""`spm kpis --dims`: the breakdowns exported for every period of the cube, equal to plain SQL over the source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd

SPM = str(Path(sys.executable).parent / "spm")


def _copy(small_project: Path, tmp_path: Path) -> Path:
    """A copy of the small project (read-only for tests: `spm kpis` writes its cube into the run folder)."""
    project = tmp_path / "p"
    shutil.copytree(small_project, project, ignore=shutil.ignore_patterns("runs", "state"))
    return project


def _spm(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPM_PROJECT_DIR": str(project)}
    return subprocess.run([SPM, *args], env=env, capture_output=True, text=True, timeout=300)


def test_leads_by_channel_for_every_month_as_parquet_equal_sql_over_the_source(small_project, tmp_path) -> None:  # noqa: ANN001
    small_project = _copy(small_project, tmp_path)
    out = tmp_path / "kpis.parquet"
    done = _spm(small_project, "kpis", "--cadence", "monthly", "--as-of", "2026-10-31", "--period", "all", "--dims",
                "--format", "parquet", "--output", str(out))
    assert done.returncode == 0, done.stderr
    k = pd.read_parquet(out)
    assert {"dim", "dim_value"} <= set(k.columns)
    with duckdb.connect(str(small_project / "data" / "demo.duckdb"), read_only=True) as con:
        top = con.execute("SELECT owner_id FROM owners WHERE manager_id IS NULL").fetchone()[0]
        expected = con.execute("""
            SELECT strftime(created_date, '%Y-%m') AS period, channel AS dim_value, count(*) AS value FROM leads
            WHERE created_date BETWEEN DATE '2025-10-01' AND DATE '2026-10-31' GROUP BY ALL""").df()
    got = k[(k["owner_id"] == top) & (k["kpi"] == "leads") & (k["dim"] == "channel")
            & k["period"].str.match(r"^\d{4}-\d{2}$")][["period", "dim_value", "value"]]
    assert got["period"].nunique() == 13  # every month of the trend and the same month last year, not only 2026-10
    key = ["period", "dim_value"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  expected.sort_values(key).reset_index(drop=True), check_dtype=False)


def test_without_dims_the_listing_has_no_breakdown_rows_and_parquet_needs_a_file(small_project, tmp_path) -> None:  # noqa: ANN001
    small_project = _copy(small_project, tmp_path)
    done = _spm(small_project, "kpis", "--cadence", "monthly", "--as-of", "2026-10-31", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert "dim_value" not in done.stdout.splitlines()[0]
    refused = _spm(small_project, "kpis", "--cadence", "monthly", "--as-of", "2026-10-31", "--format", "parquet")
    assert refused.returncode == 2 and "--output" in refused.stderr
