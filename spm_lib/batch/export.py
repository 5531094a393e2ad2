"""Export an executed report notebook to one self-contained, small HTML file; write files atomically.

The page uses the `spm_report` nbconvert template (spm_lib/templates/spm_report, based on `basic`):
no code, our CSS and the vendored plotly.js finance bundle inline once, no remote scripts, no random
ids, so the same notebook always gives the same HTML. The bundle goes in gzip-compressed and base64-encoded
(0.57 MB instead of 1.3 MB): the page's head unpacks it with the browser's `DecompressionStream('gzip')`
and then draws the figures, which `html.figure_html` queues through `window.spmPlot` until plotly.js is there.
The vendored .js stays the one source: it is compressed once per process with a fixed gzip mtime.
"""

from __future__ import annotations

import base64
import functools
import gzip
import re
from pathlib import Path
from typing import Any

from nbconvert import HTMLExporter, TemplateExporter
from nbconvert.filters.highlight import Highlight2HTML
from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter
from nbformat import NotebookNode

from spm_lib.util.atomic import write_atomic

__all__ = ["export_html", "forget_assets", "pack_js", "write_atomic"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # spm_lib/
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATES_DIR = PACKAGE_DIR / "templates"
TEMPLATE_NAME = "spm_report"
PLOTLY_JS = STATIC_DIR / "plotly-finance.min.js"
REPORT_CSS = STATIC_DIR / "report.css"
# The template writes this marker where the packed bundle goes; the bundle replaces it after nbconvert's
# HTML clean-up (which would otherwise re-parse 0.6 MB of text for every report).
PLOTLY_MARKER = "spm_lib:plotly.js-finance-bundle"
_BANNER = re.compile(r"/\*\*?(.*?)\*/", re.DOTALL)  # the bundle's leading comment: its name, version, licence


def pack_js(js: bytes) -> str:
    """`js` gzip-compressed (level 9, mtime 0: the same bytes give the same text) and base64-encoded."""
    return base64.b64encode(gzip.compress(js, compresslevel=9, mtime=0)).decode("ascii")


def _banner(js: str) -> str:
    """The bundle's leading comment (name, version, copyright, licence) as plain lines, for an HTML comment."""
    found = _BANNER.match(js.lstrip())
    lines = (line.strip(" *") for line in (found.group(1) if found else "").splitlines())
    return " ".join(line for line in lines if line).replace("--", "- -")


def forget_assets() -> None:
    """Forget the packed CSS and plotly.js bundle: the next export packs them again, as a new process does."""
    _assets.cache_clear()


@functools.cache
def _assets() -> dict[str, str]:
    """The inline CSS, the packed plotly.js bundle and the bundle's banner, made once per process."""
    js = PLOTLY_JS.read_bytes()
    return {"css": REPORT_CSS.read_text(encoding="utf-8"), "plotly_gz": pack_js(js),
            "plotly_banner": _banner(js.decode("utf-8"))}


def _resources(title: str) -> dict[str, object]:
    """nbconvert resources: the page title and the inline assets (the packed bundle as its marker)."""
    assets = _assets()
    return {"metadata": {"name": title}, "spm": {"css": assets["css"], "plotly_banner": assets["plotly_banner"],
                                                 "plotly_gz": PLOTLY_MARKER}}


class ReportExporter(HTMLExporter):
    """nbconvert's HTMLExporter without its BeautifulSoup pass over the page.

    That pass only adds alt texts to images and tab stops to the `lab` template's cells (neither
    applies to spm_report) and costs ~85 % of a report's export time (a 1 MB body re-parsed).
    """

    def from_notebook_node(self, nb: NotebookNode, resources: dict[str, Any] | None = None,  # type: ignore[override] # narrower kw
                           **kw: Any) -> tuple[str, dict[str, Any]]:
        """Render `nb` with the template (the filters HTMLExporter registers, then the template itself)."""
        resources = self._init_resources(resources)
        self.register_filter("highlight_code", Highlight2HTML(parent=self))
        self.register_filter("filter_data_type", WidgetsDataTypeFilter(
            notebook_metadata=self._nb_metadata, parent=self, resources=resources))
        try:
            return TemplateExporter.from_notebook_node(self, nb, resources, **kw)
        finally:
            self._nb_metadata.clear()  # nbconvert keeps every exported notebook's metadata by name otherwise


@functools.cache
def _exporter() -> ReportExporter:
    """The one exporter of the process, set up with the spm_report template."""
    return ReportExporter(template_name=TEMPLATE_NAME, extra_template_basedirs=[str(TEMPLATES_DIR)],
                          exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
                          optimistic_validation=True)  # the notebook checked once, not after each of 12 steps


def export_html(nb: NotebookNode, title: str) -> str:
    """The executed notebook `nb` as a self-contained HTML page titled `title` (no code cells' inputs shown)."""
    body, _ = _exporter().from_notebook_node(nb, resources=_resources(title))
    return body.replace(PLOTLY_MARKER, _assets()["plotly_gz"], 1)


