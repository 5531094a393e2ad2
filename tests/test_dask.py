"""`spm run --executor dask` on a real LocalCluster (2 worker processes): the same reports as the local pool, byte
for byte; a worker killed mid-run loses no report; --resume; an unreachable scheduler is a clear error (exit 2)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from datetime import date
from pathlib import Path

import nbformat
import pytest
from distributed import Client, LocalCluster

from spm_lib.batch import dask_executor
from spm_lib.batch.runner import run
from spm_lib.cli import main
from spm_lib.config import load_config
from spm_lib.errors import ConfigError

AS_OF = date(2026, 10, 31)
OWNERS = {"exec-01", "dir-01", "mgr-01"} | {f"rep-00{i}" for i in range(1, 9)}  # the small project's org


@pytest.fixture(scope="module")
def project(small_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dask") / "p"
    shutil.copytree(small_project, root)
    return root


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as c, \
            Client(c) as client:
        yield c, client


def _folder(project: Path) -> Path:
    return project / "runs" / "monthly" / AS_OF.isoformat()


def _outputs(project: Path) -> dict[str, bytes]:
    """Every report file of the run: HTML, trust CSV and email figures as written; the notebook without what
    differs by run even on one executor (papermill's timings and the id of the cell it inserts, the kernel's
    execution counts)."""
    out = {}
    for f in sorted(_folder(project).glob("*/*.*")):
        data = f.read_bytes()
        if f.suffix == ".ipynb":
            nb = nbformat.reads(data.decode(), as_version=4)
            nb.metadata.pop("papermill", None)
            for cell in nb.cells:
                if "injected-parameters" in cell.metadata.get("tags", []):
                    cell.id = "injected"  # papermill gives the cell it inserts a random id
                cell.metadata.pop("papermill", None)
                cell.metadata.pop("execution", None)
                if cell.cell_type == "code":
                    cell.execution_count = None
                    for o in cell.outputs:
                        o.pop("execution_count", None)
            data = nbformat.writes(nb).encode()
        out[str(f.relative_to(_folder(project)))] = data
    return out


def _dask(project: Path, cluster, **kw) -> dict:  # noqa: ANN001 - the (LocalCluster, Client) fixture
    return run(load_config(project), "monthly", AS_OF, progress=False, executor="dask",
               scheduler=cluster[0].scheduler_address, **kw)


@pytest.fixture(scope="module")
def local_outputs(project: Path) -> tuple[dict, dict[str, bytes]]:
    manifest = run(load_config(project), "monthly", AS_OF, workers=2, progress=False)
    return manifest, _outputs(project)


def test_dask_reports_are_the_local_ones_byte_for_byte(project: Path, cluster, local_outputs) -> None:  # noqa: ANN001
    local_manifest, local = local_outputs
    manifest = _dask(project, cluster)
    assert set(manifest["owners"]) == OWNERS and manifest["failed"] == [] and manifest["rendered"] == 11
    assert _outputs(project) == local
    assert sum(name.endswith(".html") for name in local) == 11
    assert any(name.endswith(".trust.csv") for name in local)  # managers and up: the offending deals
    # the manifest says who rendered what: the local pool's processes, then the cluster's workers
    local_workers = {o["worker"] for o in local_manifest["owners"].values()}
    assert 1 <= len(local_workers) <= 2 and all(re.fullmatch(r"local-\d+", w) for w in local_workers)
    workers = set(cluster[1].scheduler_info()["workers"])
    assert {o["worker"] for o in manifest["owners"].values()} <= workers
    assert json.loads((_folder(project) / "manifest.json").read_text())["owners"]["rep-001"]["worker"] in workers


def test_a_worker_killed_mid_run_loses_no_report(project: Path, cluster) -> None:  # noqa: ANN001
    client = cluster[1]
    for html in _folder(project).glob("*/*.html"):
        html.unlink()
    pids = client.run(os.getpid)  # worker address -> its process id
    victim_addr, victim = sorted(pids.items())[0]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(_dask(project, cluster)))
    thread.start()
    deadline = time.monotonic() + 300
    while not list(_folder(project).glob("*/*.html")) and time.monotonic() < deadline:
        time.sleep(0.05)
    done_at_kill = len(list(_folder(project).glob("*/*.html")))
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=600)
    assert 1 <= done_at_kill < 11  # killed after the first report, with reports still to render
    assert result["failed"] == [] and {o["status"] for o in result["owners"].values()} == {"ok"}
    assert len(list(_folder(project).glob("*/*.html"))) == 11
    assert victim_addr not in client.scheduler_info()["workers"]  # that worker is gone (the nanny started another)
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)


def test_resume_rerenders_only_missing_and_failed_owners(project: Path, cluster) -> None:  # noqa: ANN001
    folder = _folder(project)
    (folder / "rep" / "rep-003.html").unlink()  # a report gone missing
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["owners"]["rep-005"]["status"] = "failed"  # a report that failed
    (folder / "manifest.json").write_text(json.dumps(manifest))
    before = {f: f.stat().st_mtime_ns for f in folder.glob("*/*.html")}
    again = _dask(project, cluster, resume=True)
    assert again["rendered"] == 2 and again["failed"] == []
    after = {f: f.stat().st_mtime_ns for f in folder.glob("*/*.html")}
    changed = sorted(f.name for f in after if before.get(f) != after[f])
    assert changed == ["rep-003.html", "rep-005.html"]


def test_an_unreachable_scheduler_is_a_clear_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (project / "config" / "runner.yml").write_text("connect_timeout_s: 2\n")
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["--project", str(project), "run", "--cadence", "monthly", "--as-of", AS_OF.isoformat(),
                  "--executor", "dask", "--scheduler", f"tcp://127.0.0.1:{port}"])
    finally:
        (project / "config" / "runner.yml").unlink()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port} within 2 s" in err
    assert "--executor local" in err


def test_runner_config_is_validated(project: Path) -> None:
    (project / "config" / "runner.yml").write_text("executor: dask\nscheduler: 10.0.0.5:8786\n")
    try:
        with pytest.raises(ConfigError, match=r"runner.yml.*\n.*key `scheduler`.*tcp://HOST:PORT"):
            load_config(project)
        (project / "config" / "runner.yml").write_text("executor: spark\n")
        with pytest.raises(ConfigError, match="key `executor`"):
            load_config(project)
    finally:
        (project / "config" / "runner.yml").unlink()


def test_without_distributed_the_error_says_what_to_install(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dask_executor, "Client", None)
    with pytest.raises(ConfigError, match=r"`pip install distributed`"):
        dask_executor.DaskPool(load_config(project), "tcp://127.0.0.1:8786")
