"""`spm run`: compute the cube once, then render every owner's report from its level × cadence template.

Each worker process owns one warm kernel (spm_lib.batch.warm) and renders owners one after another: papermill with
output_path=None (no save at every cell), nbconvert in-process, each file written once through a temp file and a
rename. One owner's failure never stops the others; the manifest records every owner's outcome.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import date
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from spm_lib.config import Config
from spm_lib.engine.cube import read_cube_meta
from spm_lib.engine.trust import owner_status
from spm_lib.errors import OrgError, RunError, did_you_mean
from spm_lib.project import templates_dir
from spm_lib.store import runfolder
from spm_lib.store.prune import prune_runs
from spm_lib.store.runfolder import safe_name
from spm_lib.util.atomic import write_atomic
from spm_lib.util.spreadsheet import to_safe_csv

log = logging.getLogger("spm.run")


@dataclass
class Job:
    """One owner's report to render."""

    owner_id: str
    name: str
    level: str
    template: str
    ipynb: str
    html: str


@dataclass
class Outcome:
    """What happened to one owner's report."""

    owner_id: str
    level: str
    status: str  # ok | failed
    duration_s: float
    ipynb: str
    html: str
    trust_status: str
    error: str | None = None
    worker: str = ""  # who rendered it: "local-<pid>" (the local pool) or the Dask worker's address


def template_path(cfg: Config, level: str, cadence: str) -> Path:
    """The template of a level × cadence: templates/<level>_<cadence>.ipynb (the packaged one without templates/)."""
    return templates_dir(cfg.root) / f"{level}_{cadence}.ipynb"


def plan(cfg: Config, run_dir: Path, cadence: str, *, level: str | None = None,
         owner: str | None = None) -> list[Job]:
    """The owners to render (all, one level or one owner) with their template and output paths."""
    owners = pd.read_parquet(run_dir / "owners.parquet")
    if owner is not None:
        known = owners["owner_id"].astype(str).tolist()
        if owner not in known:
            raise OrgError(f"unknown owner id {owner!r}{did_you_mean(owner, known)}")
        owners = owners[owners["owner_id"] == owner]
    if level is not None:
        levels = sorted(owners["level"].dropna().astype(str).unique())
        if level not in levels:
            raise OrgError(f"unknown level {level!r}{did_you_mean(level, levels)}; allowed: {', '.join(levels)}")
        owners = owners[owners["level"] == level]
    if owner is None and level is None:
        stems = {p.stem for p in templates_dir(cfg.root).glob("*.ipynb")}  # read once, not once per owner
        owner_levels = owners["level"].astype(str)
        has_session = {lvl: _has_session(stems, lvl, cadence) for lvl in owner_levels.unique()}
        owners = owners[owner_levels.map(has_session)]
    jobs = []
    for r in owners.sort_values(["level", "owner_id"]).itertuples():
        lvl = str(r.level)
        stem = str(run_dir / lvl / safe_name(str(r.owner_id)))  # not Path.with_suffix: ids may hold a '.'
        jobs.append(Job(owner_id=str(r.owner_id), name=str(r.name), level=lvl,
                        template=str(template_path(cfg, lvl, cadence)), ipynb=f"{stem}.ipynb", html=f"{stem}.html"))
    return jobs


def _has_session(stems: set[str], level: str, cadence: str) -> bool:
    """False when the level has templates (`stems`: the template names), but none for this cadence (weekly is a
    rep's session: a manager is not rendered, not failed); a level without any template stays in, to fail with
    the missing template named."""
    return f"{level}_{cadence}" in stems or not any(s.startswith(f"{level}_") for s in stems)


# ---------------------------------------------------------------- the worker side
_WARM: Any = None
_WORKER = ""  # this worker's name in the manifest


def _worker_init(project: str, worker: str | None = None) -> None:
    """Start this worker's warm kernel (in templates/, with the project set); `worker` names it (default local-PID)."""
    global _WARM, _WORKER
    _WORKER = worker or f"local-{os.getpid()}"
    from spm_lib.batch.warm import WarmKernel  # here: papermill takes ~3.5 s to import (measured); workers only

    os.environ["SPM_PROJECT_DIR"] = project
    _WARM = WarmKernel(templates_dir(Path(project)), {"SPM_PROJECT_DIR": project})
    atexit.register(_WARM.shutdown)


def render_one(job: Job, cadence: str, as_of: str, run_dir: str) -> Outcome:
    """Execute one owner's template on the warm kernel and write its .ipynb and .html (atomically)."""
    # here, like every report-side import of this module: nbformat, papermill, nbconvert and the report take
    # ~3 s each to import (measured) and only the worker processes that render need them
    import nbformat
    import papermill as pm

    from spm_lib.batch.export import export_html

    t0 = time.perf_counter()
    holder: dict[str, Any] = {}
    trust = _trust_status(run_dir, job.owner_id)
    Path(job.ipynb).parent.mkdir(parents=True, exist_ok=True)
    try:
        if not Path(job.template).is_file():
            raise RunError(f"no template for level {job.level!r} and cadence {cadence!r}: "
                           f"expected {job.template}")
        nb = pm.execute_notebook(job.template, None, parameters={
            "owner_id": job.owner_id, "cadence": cadence, "as_of": as_of, "run_dir": run_dir},
            engine_name="spm-warm", warm_kernel=_WARM, result_holder=holder, progress_bar=False,
            kernel_name="python3")
        write_atomic(Path(job.ipynb), nbformat.writes(nb))
        write_atomic(Path(job.html), export_html(nb, f"{job.name} · {cadence} report · {as_of}"))
        _write_offenders_csv(job, cadence, as_of, run_dir)
        _write_email_figures(job, cadence, as_of, run_dir)
        return Outcome(job.owner_id, job.level, "ok", time.perf_counter() - t0, job.ipynb, job.html, trust,
                       worker=_WORKER)
    except Exception as e:  # one owner's failure must not stop the others
        failed = holder.get("nb")
        if failed is not None:  # the failed notebook is kept, with papermill's error marker, never the HTML
            write_atomic(Path(job.ipynb), nbformat.writes(failed))
        if Path(job.html).exists():
            Path(job.html).unlink()
        msg = f"{type(e).__name__}: {_short(str(e))}"
        return Outcome(job.owner_id, job.level, "failed", time.perf_counter() - t0, job.ipynb, "", trust, msg,
                       worker=_WORKER)


def _short(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[:600]


def _trust_status(run_dir: str, owner_id: str) -> str:
    from spm_lib.report.core import load_cube  # here: workers only (see render_one)

    return owner_status(load_cube(Path(run_dir)).trust, owner_id)


def _write_offenders_csv(job: Job, cadence: str, as_of: str, run_dir: str) -> None:
    """For managers and up: every offending deal of the scope in a CSV beside the report."""
    from spm_lib.report.core import load  # here: workers only (see render_one)

    rpt = load(job.owner_id, cadence, as_of, run_dir)
    if rpt.reports.empty:
        return
    off = rpt.offenders()
    if not off.empty:
        write_atomic(Path(job.html).with_suffix(".trust.csv"), to_safe_csv(off))


def _write_email_figures(job: Job, cadence: str, as_of: str, run_dir: str) -> None:
    """The owner's email charts as plotly JSON beside the report (`spm send` draws them).

    Taken from the notebook's own `rpt`, still in the warm kernel, whose figures are drawn already; a template
    without `rpt` gets them from a report loaded here.
    """
    from spm_lib.report.core import Report, load  # here: workers only (see render_one)
    from spm_lib.report.figures import figures_path, write_figures

    path = figures_path(job.html)
    path.unlink(missing_ok=True)
    if _WARM is not None:  # in the kernel that rendered the report: a call of report.figures.save_from_namespace
        _WARM.run("from spm_lib.report.figures import save_from_namespace as _spm_save\n"
                  f"_spm_save(globals(), {job.html!r})")
        if path.is_file():
            return
    rpt = load(job.owner_id, cadence, as_of, run_dir)
    assert isinstance(rpt, Report)
    write_figures(rpt, job.html)


# ---------------------------------------------------------------- the run
def run(cfg: Config, cadence: str, as_of: date, *, level: str | None = None, owner: str | None = None,
        workers: int | None = None, resume: bool = False, force_cube: bool = False,
        progress: bool = True, executor: str | None = None, scheduler: str | None = None) -> dict[str, Any]:
    """Compute the cube (if needed) and render the reports; return the manifest (also written to disk).

    `executor` "local" (the default, or config runner.executor) renders on a pool of this machine's processes;
    "dask" on the Dask cluster whose scheduler is at `scheduler` (or config runner.scheduler)."""
    folder = runfolder.run_dir(cfg, cadence, as_of)
    with runfolder.locked(folder):
        handler = logging.FileHandler(folder / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            t0 = time.perf_counter()
            pool = _executor(cfg, executor, scheduler, workers, plan_owners(folder, cfg, cadence, level, owner))
            try:
                if force_cube or not runfolder.has_cube(folder):  # the workers start their kernels meanwhile
                    log.info("computing the cube for %s as of %s", cadence, as_of)
                    runfolder.compute_cube_into(cfg, cadence, as_of, folder)
                cube_s = time.perf_counter() - t0
                manifest = _render_run(cfg, folder, cadence, as_of, level, owner, resume, pool, progress, t0, cube_s)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            runfolder.write_manifest(folder, manifest)
            log.info("done: %d rendered, %d failed", manifest["rendered"], len(manifest["failed"]))
            prune_runs(cfg, cadence, spare=folder)
            return manifest
        finally:
            log.removeHandler(handler)
            handler.close()


def plan_owners(folder: Path, cfg: Config, cadence: str, level: str | None, owner: str | None) -> int:
    """How many owners a run will render at most (to size the worker pool before the cube exists)."""
    if (folder / "owners.parquet").is_file():
        return len(plan(cfg, folder, cadence, level=level, owner=owner))
    return 1 if owner else 1000


def _executor(cfg: Config, executor: str | None, scheduler: str | None, workers: int | None, jobs: int) -> Any:
    """The local pool (default) or a Dask cluster's (executor "dask", or a scheduler given): ProcessPoolExecutor
    or dask_executor.DaskPool, both with shutdown(); _render_all renders on either."""
    kind = executor or ("dask" if scheduler else cfg.runner.executor)
    if kind == "dask":
        from spm_lib.batch.dask_executor import DaskPool  # here: distributed is an optional dependency

        return DaskPool(cfg, scheduler or cfg.runner.scheduler)
    return _pool(cfg, workers, jobs)


def _pool(cfg: Config, workers: int | None, jobs: int) -> ProcessPoolExecutor:
    """The worker processes, each with its warm kernel (started now, in parallel with the cube)."""
    n = max(1, min(workers or (os.cpu_count() or 1), jobs))
    pool = ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"), initializer=_worker_init,
                               initargs=(str(cfg.root),))
    for _ in range(n):  # make every worker start now rather than at its first job
        pool.submit(_noop)
    return pool


def _noop() -> None:
    """Nothing: submitted once per worker so that it starts its kernel at once."""


def _render_run(cfg: Config, folder: Path, cadence: str, as_of: date, level: str | None, owner: str | None,
                resume: bool, pool: Any, progress: bool, t0: float, cube_s: float) -> dict[str, Any]:
    """Render the planned owners on the pool and return the updated manifest."""
    manifest = runfolder.read_manifest(folder)
    meta = read_cube_meta(folder)
    if manifest.get("run_id") != meta["run_id"]:
        manifest = {"run_id": meta["run_id"], "generation": int(manifest.get("generation", 0)) + 1,
                    "owners": {}}
    jobs = plan(cfg, folder, cadence, level=level, owner=owner)
    if resume:
        done = manifest.get("owners", {})
        jobs = [j for j in jobs if done.get(j.owner_id, {}).get("status") != "ok"
                or not Path(j.html).is_file()]
    log.info("rendering %d reports", len(jobs))
    outcomes = _render_all(pool, jobs, cadence, as_of.isoformat(), str(folder),
                           tqdm(total=len(jobs), desc=f"{cadence} reports", unit="report",
                                disable=not progress))
    for o in outcomes:
        manifest["owners"][o.owner_id] = asdict(o)
        if o.status != "ok":
            log.error("%s failed: %s", o.owner_id, o.error)
    manifest.update({"cadence": cadence, "as_of": as_of.isoformat(), "cube_s": round(cube_s, 3),
                     "render_s": round(time.perf_counter() - t0 - cube_s, 3),
                     "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "rendered": len(outcomes),
                     "failed": sorted(k for k, v in manifest["owners"].items() if v["status"] != "ok")})
    return manifest


def _render_all(pool: Any, jobs: list[Job], cadence: str, as_of: str, folder: str, bar: Any) -> list[Outcome]:
    if not isinstance(pool, ProcessPoolExecutor):  # the Dask executor (dask_executor.DaskPool)
        return pool.render(jobs, cadence, as_of, folder, bar)
    outcomes: list[Outcome] = []
    futures = {pool.submit(render_one, j, cadence, as_of, folder): j for j in jobs}
    for fut in as_completed(futures):
        j = futures[fut]
        try:
            outcomes.append(fut.result())
        except Exception as e:  # a worker died: that owner failed, the rest go on  # noqa: BLE001
            outcomes.append(crashed(j, e))
        bar.update(1)
    bar.close()
    return outcomes


def crashed(job: Job, error: BaseException) -> Outcome:
    """The outcome of a job whose worker died (or that failed outside render_one): failed, with the reason."""
    return Outcome(job.owner_id, job.level, "failed", 0.0, job.ipynb, "", "unknown",
                   f"worker crashed: {type(error).__name__}: {error}")
