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


# ---------------------------------------------------------------- one live server for test_live and test_live_security
@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo company with two directors and several managers (the small project has one manager)."""
    return make_project(tmp_path_factory.mktemp("live-src"), scale=0.4)


@pytest.fixture(scope="session")
def project(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live project: two preheated kernels; 127.0.0.2 is a trusted proxy (its X-Forwarded-Proto is believed)."""
    from tests.live_server import LIVE_POOLS, live_project

    return live_project(source, tmp_path_factory.mktemp("live") / "project", LIVE_POOLS, trusted_proxies=["127.0.0.2"])


@pytest.fixture(scope="session")
def server(project: Path):
    """A real `spm serve` on the live project."""
    from tests.live_server import LIVE_POOLS, Server, free_port

    srv = Server(project, "127.0.0.1", free_port(), project / "serve.log").start(pools=len(LIVE_POOLS))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def org(server) -> dict[str, str]:  # noqa: ANN001 - tests.live_server.Server
    """A manager with reps, one of their reps, a rep of another manager (from the live monthly run)."""
    from spm_lib.report.core import latest_run
    from tests.live_server import sample_org

    return sample_org(latest_run("monthly", server.project))


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session."""
    from tests.live_server import chromium

    yield from chromium()


@pytest.fixture(scope="module")
def smtp():  # noqa: ANN201 - yields (tests.test_deliver.Mailbox, port)
    """A real SMTP server on loopback (aiosmtpd) collecting what it receives: (mailbox, port)."""
    from aiosmtpd.controller import Controller

    from tests.live_server import free_port
    from tests.test_deliver import Mailbox

    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()
