"""The run folder runs/<cadence>/<as_of>/: where a run's cube lives, and the exclusive lock of whoever computes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from spm_lib.config import CADENCES, Config
from spm_lib.engine.cube import compute_cube, write_cube
from spm_lib.errors import PeriodError, RunError, did_you_mean
from spm_lib.metrics import kpis
from spm_lib.util.atomic import write_atomic
from spm_lib.util.memory import retained_memory


def safe_name(owner_id: str) -> str:
    """A file name for an owner id: letters, digits, '.', '_' and '-' only; a hash suffix when changed."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", owner_id).strip("._") or "owner"
    if clean != owner_id:
        clean = f"{clean[:60]}-{hashlib.sha1(owner_id.encode()).hexdigest()[:8]}"
    return clean




def run_dir(cfg: Config, cadence: str, as_of: date) -> Path:
    """The folder of the run for `cadence` and `as_of`."""
    if cadence not in CADENCES:
        raise PeriodError(f"unknown cadence {cadence!r}{did_you_mean(cadence, CADENCES)}; "
                          f"allowed: {', '.join(CADENCES)}")
    return cfg.root / "runs" / cadence / as_of.isoformat()


def read_manifest(folder: Path) -> dict[str, Any]:
    """A run folder's manifest.json: what `spm run` rendered, per owner ({"owners": {}} before any render)."""
    p = folder / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else {"owners": {}}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write a run folder's manifest.json (atomically)."""
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))


def has_manifest(folder: Path) -> bool:
    """True when `spm run` has rendered reports into `folder` (its manifest.json exists)."""
    return (folder / "manifest.json").is_file()


def has_cube(folder: Path) -> bool:
    """True when `folder` holds a complete cube (cube.json is written last)."""
    return (folder / "cube.json").is_file() and (folder / "kpis.parquet").is_file()


@contextmanager
def locked(folder: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of a run folder (RunError when another process holds it and not `wait`)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RunError(f"{folder} is locked by another spm process (a run or a send); "
                           "wait for it to finish, then try again") from None
        yield
    finally:
        os.close(fd)


def ensure_cube(cfg: Config, cadence: str, as_of: date, *, force: bool = False) -> Path:
    """Compute and write the cube of (cadence, as_of) unless it exists; return the run folder."""
    folder = run_dir(cfg, cadence, as_of)
    if has_cube(folder) and not force:
        return folder
    with locked(folder):
        if has_cube(folder) and not force:
            return folder
        compute_cube_into(cfg, cadence, as_of, folder)
    return folder


def compute_cube_into(cfg: Config, cadence: str, as_of: date, folder: Path) -> None:
    """Load the source, compute the cube and write it into `folder` (the caller holds the lock)."""
    from spm_lib.data.load import load_dataset  # here: the readers and validation (~0.5 s, measured) only for a cube
    with retained_memory():  # freed arrays reused, not faulted in afresh
        data = load_dataset(cfg)
        cube = compute_cube(cfg, data, cadence, as_of)
        del data  # the source tables are let go before the cube is encoded (peak memory at scale)
        cube.meta["currency"] = cfg.company.currency
        cube.meta["kpi_count"] = len(kpis.REGISTRY)
        write_cube(cube, folder)
