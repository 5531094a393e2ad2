"""Locate the project root: SPM_PROJECT_DIR, else the nearest parent folder holding config/."""

from __future__ import annotations

import os
from pathlib import Path

from spm_lib.errors import ConfigError

ENV_VAR = "SPM_PROJECT_DIR"


def project_dir(start: Path | None = None) -> Path:
    """Return the project root folder (the one holding config/)."""
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / "config").is_dir():
            raise ConfigError(f"{ENV_VAR}={env} has no config/ folder; point it at the project root.")
        return root
    here = (start or Path(__file__).resolve().parent).resolve()
    for folder in (here, *here.parents):
        if (folder / "config").is_dir() and (folder / "config" / "company.yml").is_file():
            return folder
    raise ConfigError(
        f"No project found above {here}: set {ENV_VAR} to the folder that holds config/company.yml."
    )
