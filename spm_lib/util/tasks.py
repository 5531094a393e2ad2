"""One-off background work: a task on a thread of its own (its Future), or a named daemon thread that logs what kills
it. The one home of the package's background threads (work that frees the GIL: DuckDB, Parquet encoding, imports
while a source is read, the image exporter's event loop)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("spm.tasks")

__all__ = ["daemon_thread", "in_background"]


def in_background(func: Callable[..., T], *args: object, name: str = "spm-background") -> Future[T]:
    """Start `func(*args)` on a thread of its own named `name`; its result (or exception) comes from the Future."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        return pool.submit(func, *args)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one task


def daemon_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """Start `target()` on a daemon thread named `name` (it ends with the process); an exception is logged."""

    def run() -> None:
        try:
            target()
        except Exception:
            log.exception("background thread %s stopped", name)
            raise

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
