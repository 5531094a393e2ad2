"""Shared fixtures: a small real project (config + templates + seeded demo DuckDB) in a temp folder."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["tests.pg"]


def make_project(folder: Path, *, scale: float = 0.12, end: date = date(2026, 10, 31)) -> Path:
    """Copy config/ and templates/ into `folder` and generate a small demo company there."""
    from spm_lib.data.demo import generate

    shutil.copytree(ROOT / "config", folder / "config", ignore=shutil.ignore_patterns("local", "examples"))
    shutil.copytree(ROOT / "templates", folder / "templates")
    generate(folder / "data" / "demo.duckdb", seed=7, scale=scale, end=end)
    return folder


@pytest.fixture(scope="session")
def small_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo project (read-only for tests: copy it before changing anything)."""
    return make_project(tmp_path_factory.mktemp("project"))
