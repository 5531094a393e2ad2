"""The live server's bookkeeping, by hand: sessions and kernel binding, the per-link rate, the kernel budget and the
revocation list (in a real SQLite state database)."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spm_lib.config import load_config
from spm_lib.domain import links
from spm_lib.live.kernels import BudgetedManager, KernelBudget, default_max_kernels
from spm_lib.live.sessions import Sessions, link_key
from spm_lib.state import revocations

SECRET = "kS8-wQ3rT6yU1iO4pA7sD0fG2hJ5lZ9xCvBnMm_E"


def _run(coro: object) -> object:
    """Run a coroutine to its end on a thread of its own (the session's Playwright holds this thread's loop)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


def _claims(owner: str = "rep-001", days: float = 1) -> tuple[links.Claims, str]:
    token = links.sign(SECRET, owner, "monthly", None, datetime.now(UTC) + timedelta(days=days))
    return links.verify_signature(SECRET, token), token


# ---------------------------------------------------------------- sessions
def test_a_session_owns_the_kernels_handed_to_it_only() -> None:
    s = Sessions(opens_per_minute=20)
    (a, ta), (b, tb) = _claims("rep-001"), _claims("mgr-01")
    sa, sb = s.start(a, ta), s.start(b, tb)
    assert sa.sid != sb.sid and len(sa.sid) >= 40 and ta not in sa.sid
    s.bind(sa.sid, "k-a")
    s.bind(sb.sid, "k-b")
    assert s.owns(sa.sid, "k-a") and not s.owns(sa.sid, "k-b") and not s.owns(None, "k-a")
    assert not s.owns("forged-id", "k-a")
    s.release("k-a")
    assert not s.owns(sa.sid, "k-a") and sa.kernels == set()
    s.end(sb.sid)
    assert s.get(sb.sid) is None and not s.owns(sb.sid, "k-b")


def test_a_session_ends_with_its_link() -> None:
    s = Sessions(opens_per_minute=20)
    c, t = _claims(days=1)
    expired = links.Claims(c.owner_id, c.cadence, None, datetime.now(UTC) - timedelta(seconds=1), c.link_id)
    live, dead = s.start(c, t), s.start(expired, t)
    assert s.get(live.sid) is live and s.get(dead.sid) is None and len(s) == 1


def test_the_oldest_sessions_give_way_beyond_the_maximum() -> None:
    s = Sessions(opens_per_minute=20, max_sessions=3)
    made = [s.start(*_claims()) for _ in range(5)]
    assert len(s) == 3 and s.get(made[0].sid) is None and s.get(made[1].sid) is None and s.get(made[4].sid)


def test_opens_per_link_in_a_sliding_minute() -> None:
    s = Sessions(opens_per_minute=3)
    assert [s.retry_after("L", now=t) for t in (0.0, 10.0, 20.0)] == [0.0, 0.0, 0.0]
    assert s.retry_after("L", now=30.0) == pytest.approx(30.0)  # the first open leaves the window at 60 s
    assert s.retry_after("other", now=30.0) == 0.0  # another link is counted on its own
    assert s.retry_after("L", now=60.0) == 0.0  # 0 s has left the window: 10, 20, 60 now
    assert s.retry_after("L", now=61.0) == pytest.approx(9.0)


def test_link_key_is_the_link_id_or_a_token_digest() -> None:
    c, t = _claims()
    assert link_key(c, t) == c.link_id
    old = links.Claims(c.owner_id, c.cadence, None, c.expires_at)  # a link signed before link ids
    assert len(link_key(old, t)) == 24 and link_key(old, t) != link_key(old, t + "x")


# ---------------------------------------------------------------- the kernel budget
class Manager:
    """The parts of Voila's kernel manager the budget uses: pools of pending kernels, start and shut down."""

    def __init__(self, pools: dict[str, int]) -> None:
        self.kernel_pools_config = {"default": {"pool_size": 0}, **{n: {"pool_size": k} for n, k in pools.items()}}
        self.pools = {n: [f"{n}-{i}" for i in range(k)] for n, k in pools.items()}
        self.alive = {k for p in self.pools.values() for k in p}
        self.fills: list[str] = []
        self.count = 0

    def get_pool_size(self, name: str) -> int:
        return len(self.pools.get(name, []))

    def list_kernel_ids(self) -> list[str]:
        return sorted(self.alive)

    def fill_if_needed(self, delay: float | None = None, notebook_name: str = "", **_: object) -> None:
        self.fills.append(notebook_name)
        while len(self.pools[notebook_name]) < self.kernel_pools_config[notebook_name]["pool_size"]:
            self.count += 1
            kid = f"{notebook_name}-new{self.count}"
            self.pools[notebook_name].append(kid)
            self.alive.add(kid)

    async def get_rendered_notebook(self, notebook_name: str, **_: object) -> tuple[None, list[str], str]:
        kid = self.pools[notebook_name].pop(0)
        self.fill_if_needed(notebook_name=notebook_name)
        return None, [], kid

    async def start_kernel(self, **_: object) -> str:
        self.count += 1
        self.alive.add(f"fresh{self.count}")
        return f"fresh{self.count}"

    async def shutdown_kernel(self, kernel_id: str) -> None:
        self.alive.discard(kernel_id)

    async def shutdown_all(self) -> None:
        self.alive.clear()


def test_the_budget_admits_pooled_kernels_then_new_ones_up_to_the_cap() -> None:
    km = Manager({"rep_monthly.ipynb": 1})
    released: list[str] = []
    budget = KernelBudget(km, cap=3, notebooks=["rep_monthly.ipynb", "manager_monthly.ipynb"],
                          on_shutdown=released.append)
    nb = "rep_monthly.ipynb"
    assert budget.total() == 1  # the pooled kernel
    assert budget.admit(nb) == "pool"  # the pooled one, claimed
    assert budget.admit(nb) == "new" and budget.total() == 2  # 1 pooled + 1 admitted for a new kernel
    assert budget.admit(nb) == "new" and budget.total() == 3
    assert budget.admit(nb) is None  # 3 is the cap
    bound: list[str] = []
    first = BudgetedManager(budget, nb, "pool", bound.append)
    _run(first.get_rendered_notebook(notebook_name=nb))
    # the pop asked for a refill: 1 handed + 2 admitted new + the refill would make 4 > 3, so the pool stays short
    assert bound == [f"{nb[:-6]}.ipynb-0"] and km.get_pool_size(nb) == 0 and budget.short == [nb]
    second = BudgetedManager(budget, nb, "new", bound.append)
    _run(second.start_kernel())
    third = BudgetedManager(budget, nb, "new", bound.append)
    third.release()  # that open ended before asking (the viewer went away): its admission is withdrawn
    assert budget.total() == 2 and bound[-1] == "fresh1"
    # a kernel is released: the short pool is refilled (2 - 1 + 1 = 2 <= 3)
    _run(km.shutdown_kernel(bound[0]))
    assert released == [bound[0]] and km.get_pool_size(nb) == 1 and budget.short == [] and budget.total() == 2


def test_a_refill_never_carries_the_previous_request_into_the_next_kernel() -> None:
    km = Manager({"rep_monthly.ipynb": 1})
    seen: dict[str, object] = {}
    km.fill_if_needed = lambda **kw: seen.update(kw)  # type: ignore[method-assign]
    budget = KernelBudget(km, cap=5, notebooks=["rep_monthly.ipynb"], on_shutdown=lambda k: None)
    km.pools["rep_monthly.ipynb"].clear()
    budget.fill_if_needed(notebook_name="rep_monthly.ipynb",
                          extra_kernel_env_variables={"VOILA_REQUEST_URL": "http://x/?t=secret"})
    assert seen["notebook_name"] == "rep_monthly.ipynb" and "extra_kernel_env_variables" not in seen


def test_no_refill_once_the_server_stops() -> None:
    km = Manager({"rep_monthly.ipynb": 1})
    budget = KernelBudget(km, cap=5, notebooks=["rep_monthly.ipynb"], on_shutdown=lambda k: None)
    _run(km.shutdown_all())
    km.pools["rep_monthly.ipynb"].clear()
    budget.fill_if_needed(notebook_name="rep_monthly.ipynb")
    assert km.get_pool_size("rep_monthly.ipynb") == 0


def test_default_cap_from_memory() -> None:
    import os

    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    assert default_max_kernels(2, 400, 0.5) == max(3, int(total_mb * 0.5 // 400))
    assert default_max_kernels(50, 10**6, 0.5) == 51  # never below the pools plus one


def test_max_kernels_below_the_pools_is_a_config_error(small_project: Path, tmp_path: Path) -> None:
    from spm_lib.errors import ConfigError
    from spm_lib.live.serve import max_kernels

    project = tmp_path / "p"
    shutil.copytree(small_project / "config", project / "config")
    shutil.copytree(small_project / "templates", project / "templates")
    (project / "config" / "local").mkdir(exist_ok=True)
    (project / "config" / "local" / "live.yml").write_text("pool_size: 0\npools: {rep_monthly: 2}\nmax_kernels: 2\n")
    with pytest.raises(ConfigError, match=r"config/live.yml: max_kernels 2 leaves no kernel.*hold 2 preheated"):
        max_kernels(load_config(project).live, project / "templates")
    (project / "config" / "local" / "live.yml").write_text("trusted_proxies: [10.0.0.0/8, not-an-ip]\n")
    with pytest.raises(ConfigError, match="not-an-ip"):
        load_config(project)


# ---------------------------------------------------------------- revocations
def test_revoking_one_link_or_every_link_of_an_owner(small_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    shutil.copytree(small_project / "config", project / "config")
    cfg = load_config(project)
    (a, ta), (b, _), (other, _) = _claims("rep-001"), _claims("rep-001"), _claims("rep-002")
    assert not revocations.read(cfg).revoked(a)
    assert revocations.claims_of(f"https://spm.example.com/?t={ta}", SECRET).link_id == a.link_id
    assert revocations.claims_of(a.link_id, SECRET).link_id == a.link_id
    revocations.revoke_link(cfg, a.link_id)
    now = revocations.read(cfg)
    assert now.revoked(a) and not now.revoked(b) and not now.revoked(other)
    at = revocations.revoke_owner(cfg, "rep-001")
    now = revocations.read(cfg)
    assert now.revoked(b) and not now.revoked(other)
    later = links.Claims("rep-001", "monthly", None, a.expires_at, "new-id", at + timedelta(seconds=1))
    assert not now.revoked(later)  # links issued after the revocation work
    with pytest.raises(links.LinkError, match="carries no link id"):
        revocations.revoke_link(cfg, "")
    with pytest.raises(links.LinkError, match="not valid"):
        revocations.claims_of(ta[:-3] + "xyz", SECRET)


def test_the_cached_list_is_reread_after_its_ttl() -> None:
    calls = []

    def reader() -> revocations.Revocations:
        calls.append(1)
        return revocations.Revocations(frozenset({"x"}) if len(calls) > 1 else frozenset(), {})

    cached = revocations.CachedRevocations(reader, ttl_s=0.2)
    c = links.Claims("o", "monthly", None, datetime.now(UTC) + timedelta(days=1), "x")
    assert not cached.revoked(c) and not cached.revoked(c) and len(calls) == 1
    import time

    time.sleep(0.25)
    assert cached.revoked(c) and len(calls) == 2
