"""A papermill engine that executes many notebooks on one warm kernel and client, reset between notebooks.

Kernel start-up and the imports of pandas, plotly and spm_lib cost seconds; the report's own work costs a
fraction of a second. `WarmKernel` starts one python3 kernel, imports the report stack once, and each notebook
then runs on it after a namespace reset (the user namespace is emptied; imported modules and spm_lib's per-run cube
cache stay warm). Registered in papermill's engine registry as "spm-warm".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.utils import merge_kwargs, remove_args

# no output cache (Out, _1, _2 …): reports are not kept between notebooks, and IPython's reset() then skips the
# gc.collect() its cache flush runs (~0.1 s per notebook with a run's cube in memory); no input history either
# (IPython writes every executed cell to its SQLite history: ~6 % of the kernel's time, py-spy, measured)
WARM_UP = ("import spm_lib.notebook, spm_lib.report.figures, pandas, plotly.graph_objects\n"
           "get_ipython().displayhook.cache_size = 0\nget_ipython().displayhook.do_full_cache = False\n"
           "get_ipython().history_manager.enabled = False")
# empty the user namespace like %reset -f
RESET = "get_ipython().reset(new_session=False)"


class WarmKernel:
    """One python3 kernel, started once in `cwd` with `env`, reused for many notebooks."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.km = AsyncKernelManager(kernel_name="python3")
        run_sync(self.km.start_kernel)(cwd=str(cwd), env={**os.environ, **(env or {})})
        self.kc = self.km.client()  # one client (its ZMQ channels) for every notebook run on this kernel
        self.kc.start_channels()
        run_sync(self.kc.wait_for_ready)(timeout=120)
        self.warm = False

    def run(self, code: str) -> None:
        """Execute `code` in the kernel (after a notebook: its namespace is still there); RuntimeError on failure."""
        reply = run_sync(self.kc.execute_interactive)(code, store_history=False, timeout=300,
                                                       output_hook=lambda msg: None)
        if reply["content"].get("status") != "ok":
            raise RuntimeError(f"{reply['content'].get('ename')}: {reply['content'].get('evalue')}")

    def shutdown(self) -> None:
        """Stop the kernel."""
        self.kc.stop_channels()
        if self.km.has_kernel:
            run_sync(self.km.shutdown_kernel)(now=True)


class _WarmClient(PapermillNotebookClient):
    """papermill's client that first empties the namespace (and warms the imports) of a reused kernel."""

    warm_kernel: WarmKernel | None = None

    def papermill_execute_cells(self) -> None:
        wk = self.warm_kernel
        code = RESET if wk is not None and wk.warm else f"{RESET}\n{WARM_UP}"
        reply = run_sync(self.kc.execute_interactive)(code, store_history=False, timeout=300,
                                                       output_hook=lambda msg: None)
        if reply["content"].get("status") != "ok":
            raise RuntimeError(f"the warm kernel could not be reset: {reply['content'].get('evalue')}")
        if wk is not None:
            wk.warm = True
        super().papermill_execute_cells()


class WarmKernelEngine(NBClientEngine):
    """papermill engine "spm-warm": runs the notebook on the WarmKernel passed as `warm_kernel`."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, log_output: bool = False,
                                 stdout_file: Any = None, stderr_file: Any = None, start_timeout: int = 60,
                                 execution_timeout: int | None = None, **kwargs: Any) -> Any:
        """Execute on the warm kernel; keep the kernel alive, close this notebook's client channels."""
        warm: WarmKernel = kwargs.pop("warm_kernel")
        holder: dict[str, Any] | None = kwargs.pop("result_holder", None)
        kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
        final = merge_kwargs(kwargs, timeout=execution_timeout, startup_timeout=start_timeout,
                             kernel_name=kernel_name, log_output=log_output, stdout_file=stdout_file,
                             stderr_file=stderr_file)
        client = _WarmClient(nb_man, km=warm.km, **final)
        client.kc = warm.kc  # reuse the warm client: no new channels, no wait for ready per notebook
        client.warm_kernel = warm
        if holder is not None:
            holder["nb"] = nb_man.nb
        return client.execute()


papermill_engines.register("spm-warm", WarmKernelEngine)
