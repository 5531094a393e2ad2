"""Benchmarks behind `make bench`: `python -m benchmarks.main [part ...]` (default: every part).

Each part is a function `(project root) -> figures` in the `PARTS` registry; the figures of the parts run are
merged into runs/bench/latest.json (keys of parts not run are kept). The `cube` part times, for the seeded demo
company at scale 1 and at a large scale (27 by default, env SPM_BENCH_SCALE), load + cube + write of a monthly
run in a fresh Python process each, so the peak memory (max RSS) is that of the cube alone (DESIGN.md,
Benchmarks: `cube_s` is from opening the source to the cube written), inside `memory.retained_memory()` like
`spm run`. Its floor is DuckDB scanning the same source tables of the same file into Arrow (`select *` of every
contract table the cube loads), timed in a fresh process before and after the cube in the same run (the faster
of the two): `cube_ratio` is the cube's seconds over that floor (issue 16 item 3: the goal is at most 2).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from spm_lib.errors import SpmError, did_you_mean

AS_OF = date(2026, 10, 31)
SEED = 42
DEMO_SCALE = 1.0
LARGE_SCALE = 27.0
SCALE_ENV = "SPM_BENCH_SCALE"
CHILD_FLAG = "--cube-child"
SCAN_FLAG = "--scan-child"

Part = Callable[[Path], dict[str, Any]]
# part name -> "module:function"; a part whose module is not there yet is skipped with a note
PARTS: dict[str, str] = {
    "cube": "benchmarks.main:cube_part",
    "batch": "benchmarks.batch:run",
    "email": "benchmarks.email:run",
    "live": "benchmarks.live:run",
    "backtest": "benchmarks.backtest:run",
    "dask": "benchmarks.dask_cluster:run",
}


class BenchError(SpmError):
    """A benchmark cannot run (unknown part, failed child process)."""


def bench_dir(root: Path) -> Path:
    """runs/bench under the project root (created)."""
    folder = root / "runs" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------- the cube part
def demo_company(root: Path, scale: float, seed: int = SEED, end: date = AS_OF) -> Path:
    """The seeded demo company at `scale` under runs/bench/data/, generated once per scale, seed and end."""
    from spm_lib.data.demo import generate

    path = bench_dir(root) / "data" / f"demo-scale{scale:g}-seed{seed}-{end.isoformat()}.duckdb"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating the demo company at scale {scale:g} into {path} …", flush=True)
        generate(path, seed=seed, scale=scale, end=end)
    return path


def measure_cube(root: Path, db: Path) -> dict[str, Any]:
    """Load, compute and write the monthly cube of the company in `db` in a fresh process, with the scan floor
    measured in fresh processes just before and just after it; return its figures."""
    before = _child(root, SCAN_FLAG, db)
    figures = _child(root, CHILD_FLAG, db)
    after = _child(root, SCAN_FLAG, db)
    floor = min(before["seconds"], after["seconds"])
    return {**figures, "floor_s": floor, "floor_runs_s": [before["seconds"], after["seconds"]],
            "floor_rows": before["rows"], "ratio": figures["seconds"] / floor if floor > 0 else float("nan")}


def _child(root: Path, flag: str, db: Path) -> dict[str, Any]:
    """Run this module with `flag` on `db` in a fresh process; the JSON figures it prints last."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.main", flag, str(db)], capture_output=True,
                          text=True, env={**os.environ, "SPM_PROJECT_DIR": str(root)}, check=False)
    if proc.returncode != 0:
        raise BenchError(f"the cube benchmark ({flag}) on {db} failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _scan_child(db: Path) -> dict[str, Any]:
    """In the fresh process: the floor, DuckDB scanning every contract table of `db` into Arrow (the loader's
    connection settings: read-only, text as large strings); seconds and rows."""
    import duckdb

    from spm_lib.domain.contract import CONTRACT

    t0 = time.perf_counter()
    rows = 0
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET arrow_large_buffer_size = true")
        present = {name for (name,) in con.execute("select table_name from information_schema.tables").fetchall()}
        for name in (t for t in CONTRACT if t in present):
            rows += con.sql(f'select * from "{name}"').to_arrow_table().num_rows
    return {"seconds": time.perf_counter() - t0, "rows": rows}


def _cube_child(db: Path) -> dict[str, Any]:
    """In the fresh process: time load_dataset + compute_cube + write_cube on `db`; figures and counts."""
    from spm_lib.config import SourceConfig, load_config
    from spm_lib.data.load import load_dataset
    from spm_lib.domain.contract import CONTRACT
    from spm_lib.engine.cube import compute_cube, write_cube
    from spm_lib.project import project_dir
    from spm_lib.util.memory import retained_memory

    root = project_dir()
    cfg = load_config(root)
    source = SourceConfig.model_validate({"kind": "duckdb", "path": str(db), "tables": {t: {} for t in CONTRACT}})
    cfg = cfg.model_copy(update={"source": source})
    with tempfile.TemporaryDirectory(prefix="cube-", dir=bench_dir(root)) as tmp, retained_memory():
        t0 = time.perf_counter()
        data = load_dataset(cfg)
        t1 = time.perf_counter()
        cube = compute_cube(cfg, data, "monthly", AS_OF)
        t2 = time.perf_counter()
        counts = {"owners": int(data.table("owners")["owner_id"].nunique()),
                  "opportunities": len(data.table("opportunities")),
                  "history_rows": len(data.table("opportunity_history")),
                  "activities": len(data.table("activities"))}
        del data  # as `spm run` does (store.runfolder.compute_cube_into)
        write_cube(cube, Path(tmp) / "run")
        t3 = time.perf_counter()
    return {"seconds": t3 - t0, "load_s": t1 - t0, "compute_s": t2 - t1, "write_s": t3 - t2,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **counts}


def cube_part(root: Path) -> dict[str, Any]:
    """Time the cube on the demo company (scale 1) and a large one; figures for latest.json."""
    large = float(os.environ.get(SCALE_ENV, LARGE_SCALE))
    scales = [DEMO_SCALE] if large == DEMO_SCALE else [DEMO_SCALE, large]
    runs = {scale: measure_cube(root, demo_company(root, scale)) for scale in scales}
    print(_cube_table(runs))
    big, demo = runs[large], runs[DEMO_SCALE]
    return {"cube_s": round(big["seconds"], 2), "cube_peak_mb": round(big["peak_mb"]),
            "cube_floor_s": round(big["floor_s"], 2), "cube_ratio": round(big["ratio"], 2),
            "cube_floor_runs_s": [round(f, 2) for f in big["floor_runs_s"]],
            "cube_demo_s": round(demo["seconds"], 2), "cube_demo_ratio": round(demo["ratio"], 2),
            "cube_scale": {"scale": large, "owners": big["owners"], "opportunities": big["opportunities"],
                           "history_rows": big["history_rows"], "activities": big["activities"]},
            "cube_breakdown_s": {k: round(big[k], 2) for k in ("load_s", "compute_s", "write_s")}}


def _cube_table(runs: dict[float, dict[str, Any]]) -> str:
    """A readable table of the cube runs, one line per scale."""
    head = (f"{'scale':>6}{'owners':>8}{'opportunities':>15}{'history':>11}{'activities':>12}"
            f"{'load s':>9}{'cube s':>9}{'write s':>9}{'total s':>9}{'peak MB':>9}{'floor s':>9}{'ratio':>7}")
    lines = [f"cube: monthly, as of {AS_OF}, load + cube + write in a fresh process; floor: DuckDB scanning the "
             f"same tables into Arrow (fresh process, faster of before/after); ratio = total / floor", head]
    for scale, r in runs.items():
        lines.append(f"{scale:>6g}{r['owners']:>8,}{r['opportunities']:>15,}{r['history_rows']:>11,}"
                     f"{r['activities']:>12,}{r['load_s']:>9.2f}{r['compute_s']:>9.2f}{r['write_s']:>9.2f}"
                     f"{r['seconds']:>9.2f}{r['peak_mb']:>9,.0f}{r['floor_s']:>9.2f}{r['ratio']:>7.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- running parts, latest.json
def resolve(name: str) -> Part | None:
    """The function of part `name` (None when its module is not there); BenchError for an unknown part."""
    if name not in PARTS:
        raise BenchError(f"unknown benchmark part {name!r}{did_you_mean(name, PARTS)}; parts: {', '.join(PARTS)}")
    module, _, func = PARTS[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return None
    return getattr(mod, func)  # type: ignore[no-any-return]


def merge_latest(root: Path, figures: dict[str, Any]) -> Path:
    """Merge `figures` into runs/bench/latest.json (other keys kept), written atomically; return its path."""
    path = bench_dir(root) / "latest.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(figures)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(current, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str]) -> int:
    """Run the named parts (default all), merge their figures into latest.json; exit status."""
    if argv[:1] == [CHILD_FLAG]:
        print(json.dumps(_cube_child(Path(argv[1]))))
        return 0
    if argv[:1] == [SCAN_FLAG]:
        print(json.dumps(_scan_child(Path(argv[1]))))
        return 0
    from spm_lib.project import project_dir

    root = project_dir()
    names = argv or list(PARTS)
    try:
        parts = {name: resolve(name) for name in names}
    except BenchError as e:
        print(e, file=sys.stderr)
        return 2
    for name, part in parts.items():
        if part is None:
            print(f"{name}: skipped ({PARTS[name].partition(':')[0]} is not installed yet)")
            continue
        figures = part(root)
        figures[f"{name}_measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        print(f"{name}: figures merged into {merge_latest(root, figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
