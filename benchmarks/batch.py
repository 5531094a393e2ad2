"""Batch benchmark: the naive way (papermill CLI + nbconvert CLI per owner) against `spm run`, per report.

Both render the same template with the same parameters from the same run folder, so the content is the same.
`spm_s_per_report` is the wall time of `spm run --recompute` with its defaults over every demo owner, cube and
kernel start-up included, divided by the number of reports (DESIGN.md, Benchmarks). `naive_s_per_report`
leaves the cube out, which favours the naive way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

AS_OF = date(2026, 10, 31)


def _project(root: Path, work: Path) -> Path:
    """A bench project: the repository's config and templates with the seeded demo company (scale 1)."""
    from spm_lib.data.demo import generate

    proj = work / "project"
    if not (proj / "data" / "demo.duckdb").is_file():
        shutil.rmtree(proj, ignore_errors=True)
        shutil.copytree(root / "config", proj / "config", ignore=shutil.ignore_patterns("local", "examples"))
        generate(proj / "data" / "demo.duckdb", seed=42, scale=1.0, end=AS_OF)
    shutil.rmtree(proj / "templates", ignore_errors=True)
    shutil.copytree(root / "templates", proj / "templates")
    return proj


def run(root: Path, naive_n: int | None = None) -> dict[str, Any]:
    """Time both ways; return the figures for runs/bench/latest.json."""
    naive_n = naive_n or int(os.environ.get("SPM_BENCH_NAIVE_N", "4"))
    work = root / "runs" / "bench" / "batch"
    work.mkdir(parents=True, exist_ok=True)
    proj = _project(root, work)
    env = {**os.environ, "SPM_PROJECT_DIR": str(proj)}
    binp = Path(sys.executable).parent
    t0 = time.perf_counter()
    subprocess.run([str(binp / "spm"), "run", "--cadence", "monthly", "--as-of", AS_OF.isoformat(), "--recompute"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spm_total = time.perf_counter() - t0
    import json

    run_dir = proj / "runs" / "monthly" / AS_OF.isoformat()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    owners = manifest["owners"]
    n_reports = sum(1 for o in owners.values() if o["status"] == "ok")
    sample = sorted(owners)[:: max(1, len(owners) // naive_n)][:naive_n]
    naive_times = []
    with tempfile.TemporaryDirectory() as tmp:
        for oid in sample:
            level = owners[oid]["level"]
            out = Path(tmp) / f"{oid}.ipynb"
            t = time.perf_counter()
            subprocess.run([str(binp / "papermill"), str(proj / "templates" / f"{level}_monthly.ipynb"), str(out),
                            "-p", "owner_id", oid, "-p", "cadence", "monthly", "-p", "as_of", AS_OF.isoformat(),
                            "-p", "run_dir", str(run_dir), "--cwd", str(proj / "templates")],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run([str(binp / "jupyter"), "nbconvert", "--to", "html", "--no-input", str(out)],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            naive_times.append(time.perf_counter() - t)
    naive = sum(naive_times) / len(naive_times)
    spm = spm_total / max(n_reports, 1)
    exec_html = next(Path(o["html"]) for k, o in sorted(owners.items()) if o["level"] == "executive")
    return {"naive_s_per_report": round(naive, 3), "spm_s_per_report": round(spm, 3),
            "ratio": round(naive / spm, 1), "reports": n_reports, "naive_reports": len(naive_times),
            "spm_total_s": round(spm_total, 1), "cube_in_run_s": manifest.get("cube_s"),
            "report_html_mb": round(exec_html.stat().st_size / 1e6, 3)}


if __name__ == "__main__":
    print(run(Path(__file__).resolve().parents[1]))
