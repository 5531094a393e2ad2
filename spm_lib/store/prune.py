"""`runs.keep`: the newest run folders of each cadence stay, older ones are deleted; the state is never touched.

Only folders named after an as-of date under runs/<cadence>/ are candidates (the send ledger, actions and schedule
state live in the state database and state/, which pruning never reads or deletes). A folder held by a run or a
send (its lock) is left for the next prune.
"""

from __future__ import annotations

import logging
import re
import shutil
from datetime import date
from pathlib import Path

from spm_lib.config import Config
from spm_lib.errors import RunError
from spm_lib.store.runfolder import locked, run_dir

log = logging.getLogger("spm.run")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def run_folders(cfg: Config, cadence: str) -> list[Path]:
    """The run folders of a cadence, oldest as-of first (folders not named YYYY-MM-DD are not runs)."""
    base = run_dir(cfg, cadence, date(2000, 1, 1)).parent
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if _DATE.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: p.name)


def prune_runs(cfg: Config, cadence: str, *, spare: Path | None = None) -> list[Path]:
    """Delete the run folders of `cadence` older than the newest `runs.keep` (never `spare` or one in use)."""
    folders = run_folders(cfg, cadence)
    spare_at = spare.resolve() if spare is not None else None
    removed = []
    for folder in folders[:max(len(folders) - cfg.runs.keep, 0)]:
        if folder.resolve() == spare_at:
            continue
        try:
            with locked(folder):
                shutil.rmtree(folder)
        except RunError:
            log.warning("run folder %s is in use; it is pruned next time (runs.keep=%d)", folder, cfg.runs.keep)
            continue
        log.info("pruned run folder %s (runs.keep=%d)", folder, cfg.runs.keep)
        removed.append(folder)
    return removed
