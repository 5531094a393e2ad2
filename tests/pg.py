"""A real, throw-away PostgreSQL server for tests: initdb + pg_ctl in a temporary folder.

Import the fixture in a test module (`from pg import postgres_url`). As root the server runs as
the system user `postgres` (initdb refuses root). If it cannot start, the test fails with the
server log: it never skips.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def pg_bin() -> Path:
    """The folder of initdb/pg_ctl (PostgreSQL 15 preferred, else the newest installed)."""
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "initdb").is_file():
        return preferred
    found = sorted(glob.glob(PG_BIN_GLOB))
    if not found and shutil.which("initdb"):
        return Path(shutil.which("initdb") or "").parent
    if not found:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
                    "run `make system-deps` (installs postgresql-15)")
    return Path(found[-1])


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_user() -> pwd.struct_passwd:
    """The system user `postgres`, created when missing (the postgresql package normally creates it)."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
        return pwd.getpwnam("postgres")


def _as_server_user(cmd: list[str]) -> list[str]:
    """Run `cmd` as `postgres` when we are root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return cmd
    server_user()
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(_as_server_user(cmd), check=False, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        server_log = log.read_text(errors="replace") if log and log.is_file() else ""
        pytest.fail(f"PostgreSQL test server: {what} failed (exit {done.returncode}).\n"
                    f"command: {' '.join(cmd)}\nstdout: {done.stdout}\nstderr: {done.stderr}\n{server_log}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh PostgreSQL server (database `postgres`, trust auth), stopped afterwards."""
    bin_dir = pg_bin()
    base = Path(tempfile.mkdtemp(prefix="spm-pg-"))
    data, sockets, log = base / "data", base / "sock", base / "server.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        user = server_user()
        for p in (base, sockets):
            os.chown(p, user.pw_uid, user.pw_gid)
    port = free_port()
    _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
          "--no-locale", "--no-sync"], "initdb")
    _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
          "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
         "pg_ctl start", log)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       check=False, capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)
