"""Dask benchmark: the same `spm run` on a LocalCluster of 2 worker processes against the local pool of 2 workers.

On the demo company (scale 1), with its cube computed once beforehand, each round times `spm run` (every owner
re-rendered, kernel start-up included) once with `--workers 2` and once with `--executor dask --scheduler` a
LocalCluster started before the rounds (a cluster outlives runs). The rounds alternate, so drift of the machine
hits both alike; the ratio is taken on each side's fastest round. Owners per worker-hour are from the cluster's
run: reports / (wall time × workers), and in steady state from the mean render time of one report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.batch import AS_OF, _project

WORKERS = 2
ROUNDS_ENV = "SPM_BENCH_DASK_ROUNDS"


def _spm_run(proj: Path, *extra: str) -> tuple[float, dict[str, Any]]:
    """Wall time of one `spm run` (monthly, every owner) and its manifest."""
    env = {**os.environ, "SPM_PROJECT_DIR": str(proj)}
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "spm"), "run", "--cadence", "monthly", "--as-of",
                    AS_OF.isoformat(), *extra], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    return seconds, json.loads((proj / "runs" / "monthly" / AS_OF.isoformat() / "manifest.json").read_text())


def run(root: Path) -> dict[str, Any]:
    """Time both executors in alternating rounds; return the figures for runs/bench/latest.json."""
    from distributed import LocalCluster  # here: an optional dependency, only this part needs it

    rounds = int(os.environ.get(ROUNDS_ENV, "2"))
    proj = _project(root, root / "runs" / "bench" / "batch")
    env = {**os.environ, "SPM_PROJECT_DIR": str(proj)}
    subprocess.run([str(Path(sys.executable).parent / "spm"), "cube", "--cadence", "monthly", "--as-of",
                    AS_OF.isoformat(), "--force"], env=env, check=True, stdout=subprocess.DEVNULL)
    local: list[float] = []
    cluster_s: list[float] = []
    with LocalCluster(n_workers=WORKERS, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        for _ in range(rounds):
            seconds, _manifest = _spm_run(proj, "--workers", str(WORKERS))
            local.append(seconds)
            seconds, manifest = _spm_run(proj, "--executor", "dask", "--scheduler", cluster.scheduler_address)
            cluster_s.append(seconds)
    owners = manifest["owners"]
    reports = sum(1 for o in owners.values() if o["status"] == "ok")
    per_report = sum(o["duration_s"] for o in owners.values()) / max(len(owners), 1)
    ratio = min(cluster_s) / min(local)
    figures = {"dask_local_s": [round(s, 1) for s in local], "dask_cluster_s": [round(s, 1) for s in cluster_s],
               "dask_overhead_ratio": round(ratio, 3), "dask_reports": reports, "dask_workers": WORKERS,
               "dask_workers_used": len({o["worker"] for o in owners.values()}),
               "dask_owners_per_worker_hour": round(reports / (min(cluster_s) * WORKERS) * 3600),
               "dask_render_s_per_report": round(per_report, 3),
               "dask_owners_per_worker_hour_steady": round(3600 / per_report)}
    print(f"dask: {reports} reports, local pool of {WORKERS}: {figures['dask_local_s']} s; LocalCluster of "
          f"{WORKERS}: {figures['dask_cluster_s']} s; overhead ratio (fastest rounds) {ratio:.3f}; "
          f"{figures['dask_owners_per_worker_hour']} owners per worker-hour end to end, "
          f"{figures['dask_owners_per_worker_hour_steady']} in steady state ({per_report:.3f} s per report)")
    return figures


if __name__ == "__main__":
    print(run(Path(__file__).resolve().parents[1]))
