"""runs.keep: old run folders of a cadence are deleted, the newest kept; the state and anything else never touched."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from spm_lib.batch.runner import run
from spm_lib.config import Config, RunsConfig, load_config
from spm_lib.store.prune import prune_runs, run_folders
from spm_lib.store.runfolder import locked

MONTH_ENDS = ["2026-06-30", "2026-07-31", "2026-08-31", "2026-09-30"]


@pytest.fixture()
def project(small_project: Path, tmp_path: Path) -> Path:
    """The small demo project with four old monthly run folders, a weekly one, a state folder and a stray folder."""
    root = tmp_path / "p"
    shutil.copytree(small_project, root)
    for day in MONTH_ENDS:
        (root / "runs/monthly" / day / "rep").mkdir(parents=True)
        (root / "runs/monthly" / day / "manifest.json").write_text("{}")
    (root / "runs/weekly/2026-06-28").mkdir(parents=True)
    (root / "runs/monthly/notes").mkdir()  # not an as-of: never a run folder
    (root / "state").mkdir(exist_ok=True)
    (root / "state/notes.txt").write_bytes(b"the send ledger")
    return root


def keeping(root: Path, n: int) -> Config:
    return load_config(root).model_copy(update={"runs": RunsConfig(keep=n)})


def names(cfg: Config, cadence: str) -> list[str]:
    return [p.name for p in run_folders(cfg, cadence)]


def test_the_oldest_folders_beyond_keep_are_deleted(project: Path) -> None:
    cfg = keeping(project, 2)
    removed = prune_runs(cfg, "monthly")
    assert [p.name for p in removed] == ["2026-06-30", "2026-07-31"]
    assert names(cfg, "monthly") == ["2026-08-31", "2026-09-30"]
    assert names(cfg, "weekly") == ["2026-06-28"]  # another cadence keeps its own
    assert (project / "runs/monthly/notes").is_dir()
    assert (project / "state/notes.txt").read_bytes() == b"the send ledger"


def test_a_folder_in_use_or_spared_is_kept(project: Path) -> None:
    cfg = keeping(project, 1)
    with locked(project / "runs/monthly/2026-07-31"):  # a send of that run is going on
        removed = prune_runs(cfg, "monthly", spare=project / "runs/monthly/2026-06-30")
    assert [p.name for p in removed] == ["2026-08-31"]
    assert names(cfg, "monthly") == ["2026-06-30", "2026-07-31", "2026-09-30"]


def test_nothing_is_deleted_while_there_are_no_more_than_keep(project: Path) -> None:
    cfg = keeping(project, 4)
    assert prune_runs(cfg, "monthly") == [] and names(cfg, "monthly") == MONTH_ENDS


def test_spm_run_prunes_after_rendering(project: Path) -> None:
    cfg = keeping(project, 2)
    run(cfg, "monthly", date(2026, 10, 31), owner="rep-001", workers=1, progress=False)
    assert names(cfg, "monthly") == ["2026-09-30", "2026-10-31"]
    assert (project / "runs/monthly/2026-10-31/rep/rep-001.html").is_file()
    assert (project / "runs/monthly/2026-10-31/rep/rep-001.email.json").is_file()  # the email's charts
    assert (project / "state/notes.txt").read_bytes() == b"the send ledger"
