"""The project folder: find it (SPM_PROJECT_DIR, else the working folder or a parent holding config/), create it
(`spm init`), and find its report templates (its own templates/, else the ones shipped with spm_lib)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from spm_lib.errors import ConfigError

ENV_VAR = "SPM_PROJECT_DIR"
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_TEMPLATES = PACKAGE_DIR / "notebooks"  # the report notebooks shipped with spm_lib (the repo's templates/)
PACKAGED_EXAMPLES = PACKAGE_DIR / "examples"  # the config of `spm init` (the repo's config/examples/)
EXAMPLES = ("maven_crm", "salesforce")  # `spm init --example`; without one: the commented `starter`
CONFIG_MARKERS = ("company.yml", "source.yml")  # a folder whose config/ holds one of these is a project


def project_dir(start: Path | None = None) -> Path:
    """Return the project root folder (the one holding config/): SPM_PROJECT_DIR, else `start` (the working folder)
    or its nearest parent that holds config/company.yml or config/source.yml."""
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / "config").is_dir():
            raise ConfigError(f"{ENV_VAR}={env} has no config/ folder: point it at the project root, "
                              f"or create a project there with `spm init {env}`")
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / "config" / marker).is_file() for marker in CONFIG_MARKERS):
            return folder
    raise ConfigError(f"No project found in {here} or above it (a project is a folder holding config/source.yml): "
                      f"run `spm` inside one, pass --project DIR or set {ENV_VAR}; "
                      f"`spm init DIR` creates one")


def templates_dir(root: Path) -> Path:
    """The report templates of the project at `root`: its templates/ folder, else the templates shipped with spm_lib."""
    own = root / "templates"
    return own if own.is_dir() else PACKAGED_TEMPLATES


DATA_HINT = """# Put the export files of your CRM in this folder

`config/source.yml` reads them (`path: {path}`). Two tables are required:

- `owners` (owners.csv): owner_id, manager_id (empty at the top), and optionally name, email, level.
- `opportunities` (opportunities.csv): opportunity_id, owner_id, stage (or is_closed and is_won), amount for
  won deals, close_date for closed deals.

Other names and columns are mapped in `config/source.yml` (README, "Map your CRM"). Then run
`spm --project {root} data check`: it lists every problem with the file, column, ids and the fix.
"""


def init_project(root: Path, example: str | None = None, copy_templates: bool = False) -> list[Path]:
    """Create a project folder at `root` (config/, data/, state/, runs/; templates/ when `copy_templates`) ready for
    `spm data check`; on an existing project only copy the templates. Returns what was written."""
    config = root / "config"
    if example is not None and example not in EXAMPLES:
        raise ConfigError(f"unknown example {example!r}; the examples are: {', '.join(EXAMPLES)}")
    if config.is_dir() and any(config.iterdir()):
        if not copy_templates:
            raise ConfigError(f"{config} exists already: {root} is a project; nothing was changed. Use another "
                              f"folder, or `spm init {root} --copy-templates` to copy the report templates into it")
        return [_copy_templates(root)]
    written = []
    config.mkdir(parents=True, exist_ok=True)
    for src in sorted((PACKAGED_EXAMPLES / (example or "starter")).glob("*.yml")):
        shutil.copyfile(src, config / src.name)
        written.append(config / src.name)
    data = root / _data_path(config / "source.yml")
    data.mkdir(parents=True, exist_ok=True)
    readme = PACKAGED_EXAMPLES / (example or "starter") / "README.md"
    hint = readme.read_text(encoding="utf-8") if example else DATA_HINT.format(path=data.relative_to(root),
                                                                                root=root)
    (data / "README.md").write_text(hint, encoding="utf-8")
    written.append(data / "README.md")
    for folder in ("state", "runs"):
        (root / folder).mkdir(exist_ok=True)
        written.append(root / folder)
    if copy_templates:
        written.append(_copy_templates(root))
    return written


def _data_path(source_yml: Path) -> str:
    """The `path:` of a shipped folder source.yml (read as YAML: this module sits below the config loader)."""
    return str(yaml.safe_load(source_yml.read_text(encoding="utf-8")).get("path") or "data")


def _copy_templates(root: Path) -> Path:
    """Copy the packaged report templates into root/templates (refused when it exists: it may hold edits)."""
    target = root / "templates"
    if target.exists():
        raise ConfigError(f"{target} exists already; nothing was copied (move it away to get fresh templates)")
    shutil.copytree(PACKAGED_TEMPLATES, target, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    return target
