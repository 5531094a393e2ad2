"""A cap on the live server's kernels: each holds the run in memory, so their number is what bounds memory.

Voila starts a kernel for every open its pool cannot serve and refills every pool it takes from, without limit.
The budget counts every kernel that is or will be alive: the pooled ones (warming or ready), those handed to a
viewer, and opens admitted but not yet handed one. An open is admitted when its template's pool still has an
unclaimed kernel, or when one more kernel fits under the cap; otherwise the server answers 503 with Retry-After.
Pool refills start only when they fit, and a pool left short is refilled when a kernel is shut down or culled.
A refill never carries the previous viewer's request address into the next kernel.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("spm.serve.kernels")


def default_max_kernels(pooled: int, kernel_mb: int, memory_share: float) -> int:
    """Kernels that fit in `memory_share` of this machine's memory (at least the pooled ones plus one)."""
    try:
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):  # not a POSIX machine: a small, safe default
        total_mb = 4096.0
    return max(pooled + 1, int(total_mb * memory_share // kernel_mb))


class KernelBudget:
    """Admission and refill control for a Voila kernel manager under a cap of `cap` kernels.

    Kernels are counted as: pool entries (warming or ready) + kernels handed to viewers + kernels in hand (popped from
    a pool or being started, not yet handed) + opens admitted that will need a new kernel and have not asked yet.
    """

    def __init__(self, km: Any, cap: int, notebooks: Iterable[str], on_shutdown: Callable[[str], None]) -> None:
        self.km = km
        self.cap = cap
        self.notebooks = sorted(notebooks)
        self.handed: set[str] = set()
        self.in_hand = 0
        self.claims: Counter[str] = Counter()  # admitted opens that will take a pooled kernel
        self.fresh = 0  # admitted opens that will need a new kernel
        self.short: list[str] = []  # pools whose refill did not fit, in the order they asked
        self.closing = False  # the server is stopping: no refills
        self._fill = km.fill_if_needed
        self._shutdown = km.shutdown_kernel
        self._shutdown_all = km.shutdown_all
        self._on_shutdown = on_shutdown
        km.fill_if_needed = self.fill_if_needed  # the manager calls its own methods through the instance
        km.shutdown_kernel = self.shutdown_kernel
        km.shutdown_all = self.shutdown_all

    # ---------------------------------------------------------------- counting
    def pooled(self, notebook: str) -> int:
        """Kernels in `notebook`'s pool (warming or ready)."""
        return int(self.km.get_pool_size(notebook))

    def total(self) -> int:
        """Every kernel alive or about to be (see the class docstring)."""
        self.handed &= set(self.km.list_kernel_ids())
        return len(self.handed) + self.in_hand + self.fresh + sum(self.pooled(n) for n in self.notebooks)

    def pool_target(self, notebook: str) -> int:
        """The configured size of `notebook`'s pool."""
        pools = self.km.kernel_pools_config
        return int(pools.get(notebook, pools.get("default", {})).get("pool_size", 0))

    # ---------------------------------------------------------------- opens
    def admit(self, notebook: str) -> str | None:
        """Admit one open of `notebook`: 'pool' (an unclaimed pooled kernel) or 'new' (one more fits), else None."""
        if self.pooled(notebook) - self.claims[notebook] > 0:
            self.claims[notebook] += 1
            return "pool"
        if self.total() >= self.cap:
            return None
        self.fresh += 1
        return "new"

    def asking(self, notebook: str, kind: str | None) -> None:
        """The admitted open (`kind` from admit) asks the manager for its kernel now."""
        self.withdraw(notebook, kind)
        self.in_hand += 1

    def received(self, kernel_id: str | None) -> None:
        """The open that asked received `kernel_id` (None: it failed)."""
        self.in_hand = max(0, self.in_hand - 1)
        if kernel_id:
            self.handed.add(kernel_id)

    def withdraw(self, notebook: str, kind: str | None) -> None:
        """An admitted open no longer waits to ask (it asked, or ended without asking)."""
        if kind == "pool" and self.claims[notebook] > 0:
            self.claims[notebook] -= 1
        elif kind == "new" and self.fresh > 0:
            self.fresh -= 1

    # ---------------------------------------------------------------- the kernel manager's own calls
    def fill_if_needed(self, delay: float | None = None, notebook_name: str | None = None,
                       extra_kernel_env_variables: dict[str, str] | None = None, **kwargs: Any) -> None:
        """Refill `notebook_name`'s pool when the kernels it lacks fit under the cap; else remember it is short."""
        del extra_kernel_env_variables  # the previous request's address (with its link) never reaches a new kernel
        name = notebook_name or ""
        lacking = self.pool_target(name) - self.pooled(name)
        if lacking <= 0 or self.closing:
            return
        if self.total() + lacking > self.cap:
            if name not in self.short:
                self.short.append(name)
            log.warning("kernel cap %d reached: the pool of %s is refilled when a kernel is released", self.cap, name)
            return
        self._fill(delay=delay, notebook_name=name, **kwargs)

    async def shutdown_kernel(self, kernel_id: str, *args: Any, **kwargs: Any) -> Any:
        """Shut the kernel down, forget its viewer, and refill a pool left short if it now fits."""
        try:
            return await self._shutdown(kernel_id, *args, **kwargs)
        finally:
            self.handed.discard(kernel_id)
            self._on_shutdown(kernel_id)
            for notebook in [] if self.closing else list(self.short):
                lacking = self.pool_target(notebook) - self.pooled(notebook)
                if lacking <= 0 or self.total() + lacking <= self.cap:
                    self.short.remove(notebook)
                    if lacking > 0:
                        self._fill(delay=0, notebook_name=notebook)


    async def shutdown_all(self, *args: Any, **kwargs: Any) -> Any:
        """Stop every kernel (the server is stopping): nothing is refilled from now on."""
        self.closing = True
        return await self._shutdown_all(*args, **kwargs)


class BudgetedManager:
    """The kernel manager as one open's handler sees it: every kernel it receives is counted and handed over."""

    def __init__(self, budget: KernelBudget, notebook: str, kind: str | None,
                 hand_over: Callable[[str], None]) -> None:
        self._budget = budget
        self._notebook = notebook
        self._kind = kind
        self._hand_over = hand_over

    def __getattr__(self, name: str) -> Any:
        return getattr(self._budget.km, name)

    async def _receive(self, call: Any, pick: Callable[[Any], str]) -> Any:
        self._budget.asking(self._notebook, self._kind)
        self._kind = None
        kernel_id = None
        try:
            out = await call
            kernel_id = pick(out)
            return out
        finally:
            self._budget.received(kernel_id)
            if kernel_id:
                self._hand_over(kernel_id)

    async def get_rendered_notebook(self, *args: Any, **kwargs: Any) -> Any:
        """A pooled kernel's rendering, the kernel handed to this open's viewer."""
        return await self._receive(self._budget.km.get_rendered_notebook(*args, **kwargs), lambda out: out[2])

    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:
        """A new kernel (no pooled one was left), handed to this open's viewer."""
        from jupyter_core.utils import ensure_async

        return str(await self._receive(ensure_async(self._budget.km.start_kernel(*args, **kwargs)), str))

    def release(self) -> None:
        """The open ended: if it never asked for a kernel, its admission is withdrawn."""
        self._budget.withdraw(self._notebook, self._kind)
        self._kind = None
