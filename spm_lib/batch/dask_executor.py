"""`spm run --executor dask`: render the owners on a Dask cluster, each worker with its own warm kernel.

The cube is computed where `spm run` runs (as locally); the jobs are `runner.render_one`, submitted with the
client. A worker plugin starts one warm kernel per Dask worker at setup and stops it at teardown; every render on
that worker runs on one dedicated thread, the kernel's, one at a time (a worker with more threads still renders
one owner at a time). The project folder (config, templates, data, runs/) must be at the same path on every
worker, readable and writable (a shared file system): workers read the cube and write the reports there.

A worker that dies mid-run loses nothing: the scheduler gives its jobs to another worker (and `retries` covers
an error outside the render, which `render_one` does not catch); a job that still fails is marked failed with
its reason, like a crashed local worker. `distributed` is an optional dependency, imported only here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from spm_lib.batch import runner
from spm_lib.batch.runner import Job, Outcome, crashed, render_one
from spm_lib.config import Config, scheduler_address
from spm_lib.errors import ConfigError, RunError

try:
    from distributed import Client, WorkerPlugin, get_worker
    from distributed import as_completed as dask_completed
except ImportError:  # optional dependency: DaskPool says what to install
    Client = WorkerPlugin = None  # type: ignore[assignment,misc]  # absent optional dependency: None marks it

log = logging.getLogger("spm.run")
PLUGIN = "spm-warm-kernel"
RETRIES = 2  # a job's retries after an error outside render_one (a lost worker is rescheduled by the scheduler)


class WarmKernelPlugin(WorkerPlugin if WorkerPlugin is not None else object):  # type: ignore[misc]  # base: dask or object
    """Gives a Dask worker one warm kernel for `project` (started at setup, stopped at teardown) and its thread."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.thread: ThreadPoolExecutor | None = None

    async def setup(self, worker: Any) -> None:
        """Start the kernel on the plugin's own thread (every render of this worker runs there)."""
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spm-warm")
        await asyncio.wrap_future(self.thread.submit(runner._worker_init, self.project, str(worker.address)))

    async def teardown(self, worker: Any) -> None:
        """Stop the kernel and the thread."""
        if self.thread is not None:
            await asyncio.wrap_future(self.thread.submit(_shutdown_kernel))
            self.thread.shutdown(wait=False)

    def render(self, job: Job, cadence: str, as_of: str, run_dir: str) -> Outcome:
        """render_one on the kernel's thread."""
        assert self.thread is not None, "the plugin's setup has not run on this worker"
        return self.thread.submit(render_one, job, cadence, as_of, run_dir).result()


def _shutdown_kernel() -> None:
    if runner._WARM is not None:
        runner._WARM.shutdown()
        runner._WARM = None


def render_on_worker(job: Job, cadence: str, as_of: str, run_dir: str) -> Outcome:
    """The Dask task: one owner's report, rendered by this worker's warm kernel."""
    plugin = get_worker().plugins.get(PLUGIN)
    if plugin is None:  # raised, so that Dask retries it (on a worker whose plugin is set up)
        raise RunError(f"Dask worker {get_worker().address} has no {PLUGIN} plugin (was it started mid-run?)")
    assert isinstance(plugin, WarmKernelPlugin)
    return plugin.render(job, cadence, as_of, run_dir)


class DaskPool:
    """The executor of `spm run --executor dask`: a client of the scheduler at `address`, kernels on its workers."""

    def __init__(self, cfg: Config, address: str | None) -> None:
        if Client is None:
            raise ConfigError("the Dask executor needs the `distributed` package: `pip install distributed` "
                              "(or `pip install spm-framework[dask]`), or run with `--executor local`")
        if not address:
            raise ConfigError("the Dask executor needs the scheduler's address: `spm run --executor dask "
                              "--scheduler tcp://HOST:8786`, or `scheduler:` in config/runner.yml")
        try:
            scheduler_address(address)
        except ValueError as e:
            raise ConfigError(f"--scheduler: {e}") from None
        timeout = cfg.runner.connect_timeout_s
        try:
            self.client = Client(address, timeout=f"{timeout}s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise RunError(f"cannot reach the Dask scheduler at {address} within {timeout} s ({type(e).__name__}: "
                           f"{e}); start it (`dask scheduler`) and its workers (`dask worker {address} --nthreads 1`"
                           f"), check the address (`--scheduler` or config/runner.yml `scheduler:`), "
                           f"or run with `--executor local`") from None
        # the kernels start on every worker while the cube is computed (as the local pool's do)
        self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spm-dask-plugin")
        self._ready: Future[Any] = self._starter.submit(self.client.register_plugin, WarmKernelPlugin(str(cfg.root)),
                                                        name=PLUGIN)

    def render(self, jobs: list[Job], cadence: str, as_of: str, folder: str, bar: Any) -> list[Outcome]:
        """Render `jobs` on the cluster; one Outcome per job, in the order they finish."""
        try:
            self._ready.result()
        except Exception as e:  # noqa: BLE001 - whatever a worker raised while starting its kernel
            raise RunError(f"the Dask workers could not start their warm kernels: {type(e).__name__}: {e}") from e
        if not self.client.scheduler_info().get("workers"):
            raise RunError(f"the Dask scheduler at {self.client.scheduler.address} has no workers: start some "
                           f"(`dask worker {self.client.scheduler.address} --nthreads 1`)")
        token = uuid.uuid4().hex[:8]  # this run's task keys (the owner's id shows on the dashboard)
        futures = {self.client.submit(render_on_worker, j, cadence, as_of, folder, pure=False, retries=RETRIES,
                                      key=f"spm-render-{j.owner_id}-{token}"): j for j in jobs}
        outcomes: list[Outcome] = []
        for fut in dask_completed(list(futures), loop=self.client.loop):
            j = futures[fut]
            try:
                outcomes.append(fut.result())
            except Exception as e:  # noqa: BLE001 - lost more often than the scheduler allows, or unpicklable
                outcomes.append(crashed(j, e))
            bar.update(1)
        bar.close()
        return outcomes

    def shutdown(self, wait: bool = True, cancel_futures: bool = True) -> None:
        """Stop the workers' kernels (the plugin's teardown) and close the client; the cluster keeps running."""
        try:
            self._ready.result()
            self.client.unregister_worker_plugin(PLUGIN)
        except Exception as e:  # noqa: BLE001 - the scheduler is gone: its workers' kernels went with it
            log.warning("could not stop the Dask workers' kernels: %s: %s", type(e).__name__, e)
        finally:
            self._starter.shutdown(wait=False)
            self.client.close()
