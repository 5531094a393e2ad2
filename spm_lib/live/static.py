"""The live server's read path: an owner's batch report of the run, served at once, without a kernel.

`spm run` renders every owner's report into the run folder (runs/<cadence>/<as_of>/<level>/<owner>.html, one
self-contained page: tables, text and charts). A live page shows the same numbers, so the server sends that page
as it is, with a bar on top leading to the interactive report (drill-down, what-if, the action form), which a
preheated kernel serves. The server has already verified the link (spm_lib.live.serve); this module only finds
the file, and only one the run's manifest says was rendered from the cube the server serves, so a page rendered
from an older cube of the same as-of is never shown beside today's numbers.
"""

from __future__ import annotations

from pathlib import Path

from markupsafe import escape

from spm_lib.engine.cube import read_cube_meta
from spm_lib.store.runfolder import read_manifest, safe_name

_BAR = """<nav class="spm-live-bar" aria-label="Live report"><style>
.spm-live-bar{{position:sticky;top:0;z-index:10;display:flex;flex-wrap:wrap;gap:4px 16px;align-items:baseline;
padding:8px 16px;background:#eef4fc;border-bottom:1px solid #c9d9ef;font:14px/1.4 system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif;color:#1f2933}}.spm-live-bar a{{color:#1d5fbf;font-weight:600}}
.spm-live-bar .spm-live-note{{color:#5f6b7a}}
</style><a href="{interactive}">Open the interactive report</a><span class="spm-live-note">drill-down, what-if and
the action form (a live session starts)</span><a href="{landing}">All your reports</a></nav>"""


class RenderedReports:
    """The batch reports of run folders, checked against their manifest and cube (both re-read when they change)."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[tuple[float, float], bool, dict[str, str]]] = {}

    def _statuses(self, folder: Path) -> tuple[bool, dict[str, str]]:
        """(manifest matches the cube, status per owner) of `folder`."""
        manifest, cube = folder / "manifest.json", folder / "cube.json"
        if not manifest.is_file() or not cube.is_file():
            return False, {}
        stamp = (manifest.stat().st_mtime, cube.stat().st_mtime)
        hit = self._cache.get(folder)
        if hit is None or hit[0] != stamp:
            data = read_manifest(folder)
            same = bool(data.get("run_id")) and data.get("run_id") == read_cube_meta(folder).get("run_id")
            hit = (stamp, same, {str(k): str(v.get("status")) for k, v in data.get("owners", {}).items()})
            self._cache[folder] = hit
        return hit[1], hit[2]

    def find(self, folder: Path, level: str, owner_id: str) -> Path | None:
        """The batch HTML of `owner_id` (a `level` owner) in `folder`, when the run rendered it from this cube."""
        same, statuses = self._statuses(folder)
        if not same or statuses.get(owner_id) != "ok":
            return None
        root = folder.resolve()
        path = (root / level / f"{safe_name(owner_id)}.html").resolve()
        if path.parent != root / level or not path.is_file():  # never a file outside the run's level folder
            return None
        return path


def with_live_bar(page: bytes, interactive_href: str, landing_href: str) -> bytes:
    """The batch page `page` with the live bar (links to the interactive report and the landing page) on top."""
    bar = _BAR.format(interactive=escape(interactive_href), landing=escape(landing_href)).encode()
    head, sep, rest = page.partition(b"<body>")
    if not sep:
        return bar + page
    return head + sep + bar + rest
