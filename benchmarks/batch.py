"""Batch benchmark: the naive way (papermill CLI + nbconvert CLI per owner) against `spm run`, per report.

Both render the same template with the same parameters from the same run folder, so the content is the same.
`spm_s_per_report` is the wall time of `spm run --recompute` with its defaults over every demo owner, cube and
kernel start-up included, divided by the number of reports (DESIGN.md, Benchmarks). The naive way is measured
twice in the same run, on the same sample of owners: one owner after another (`naive_s_per_report`) and with one
process per core (`naive_parallel_s_per_report`: each core renders owners one after another, the wall time of the
whole sample divided by its size). Both leave the cube out, which favours the naive way. The order is naive
sequential, spm, naive parallel, so that a change of load on a shared machine does not favour one side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def _spm_run(proj: Path, env: dict[str, str]) -> float:
    """Seconds of `spm run --recompute` over every owner (cube and kernel start-up included)."""
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "spm"), "run", "--cadence", "monthly", "--as-of",
                    AS_OF.isoformat(), "--recompute"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _naive_one(proj: Path, env: dict[str, str], run_dir: Path, out_dir: Path, owner_id: str, level: str) -> None:
    """One owner the naive way: the papermill CLI, then the nbconvert CLI (each a fresh process and kernel)."""
    binp = Path(sys.executable).parent
    out = out_dir / f"{owner_id}.ipynb"
    subprocess.run([str(binp / "papermill"), str(proj / "templates" / f"{level}_monthly.ipynb"), str(out),
                    "-p", "owner_id", owner_id, "-p", "cadence", "monthly", "-p", "as_of", AS_OF.isoformat(),
                    "-p", "run_dir", str(run_dir), "--cwd", str(proj / "templates")],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([str(binp / "jupyter"), "nbconvert", "--to", "html", "--no-input", str(out)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _naive(proj: Path, env: dict[str, str], run_dir: Path, sample: list[tuple[str, str]], processes: int) -> float:
    """Wall seconds per report of the naive way over `sample` (owner id, level), `processes` owners at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=processes) as pool:  # threads only wait on the CLI processes
            list(pool.map(lambda o: _naive_one(proj, env, run_dir, Path(tmp), *o), sample))
        return (time.perf_counter() - t0) / len(sample)


def run(root: Path, naive_n: int | None = None) -> dict[str, Any]:
    """Time the naive way (sequential, then one process per core) and `spm run`; return the figures."""
    naive_n = naive_n or int(os.environ.get("SPM_BENCH_NAIVE_N", "4"))
    cores = os.cpu_count() or 1
    work = root / "runs" / "bench" / "batch"
    work.mkdir(parents=True, exist_ok=True)
    proj = _project(root, work)
    env = {**os.environ, "SPM_PROJECT_DIR": str(proj)}
    run_dir = proj / "runs" / "monthly" / AS_OF.isoformat()
    if not (run_dir / "manifest.json").is_file():  # the naive way needs the run's cube: a first run makes it
        _spm_run(proj, env)
    owners = json.loads((run_dir / "manifest.json").read_text())["owners"]
    sample = [(oid, owners[oid]["level"]) for oid in sorted(owners)[:: max(1, len(owners) // naive_n)][:naive_n]]
    naive = _naive(proj, env, run_dir, sample, 1)
    spm_total = _spm_run(proj, env)
    naive_parallel = _naive(proj, env, run_dir, sample, cores)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    n_reports = sum(1 for o in manifest["owners"].values() if o["status"] == "ok")
    spm = spm_total / max(n_reports, 1)
    exec_html = next(Path(o["html"]) for _, o in sorted(manifest["owners"].items()) if o["level"] == "executive")
    figures = {"naive_s_per_report": round(naive, 3), "naive_parallel_s_per_report": round(naive_parallel, 3),
               "naive_processes": cores, "spm_s_per_report": round(spm, 3), "ratio": round(naive / spm, 1),
               "ratio_parallel": round(naive_parallel / spm, 1), "reports": n_reports,
               "naive_reports": len(sample), "spm_total_s": round(spm_total, 1),
               "cube_in_run_s": manifest.get("cube_s"), "render_in_run_s": manifest.get("render_s"),
               "report_html_mb": round(exec_html.stat().st_size / 1e6, 3)}
    print(f"batch: naive sequential {naive:.2f} s/report, naive {cores} processes {naive_parallel:.2f} s/report, "
          f"spm run {spm:.3f} s/report ({n_reports} reports, {spm_total:.1f} s with the cube): "
          f"{figures['ratio']}x the naive way sequential (goal 50x), {figures['ratio_parallel']}x with one process "
          f"per core (goal 25x)")
    return figures


if __name__ == "__main__":
    print(run(Path(__file__).resolve().parents[1]))
