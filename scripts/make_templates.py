"""Write templates/<level>_<cadence>.ipynb: thin session agendas, one spm_lib call per cell, stored without outputs.

Run again after changing the agenda (`make templates`); analysts may also copy and edit a template by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from spm_lib.report.core import decides
from spm_lib.report.markup import LEVEL_TITLES as LEVELS

CADENCES = {"weekly": "week", "monthly": "month", "quarterly": "quarter", "annual": "year"}


def _cadence_cells(cadence: str) -> list[nbformat.NotebookNode]:
    """The agenda item that differs by cadence: deals to push, priorities and resources, targets and structure."""
    item = {"weekly": ("Deals to push this week", "rpt.deals_to_push()"),
            "monthly": ("Deals to push and activity mix", "rpt.deals_to_push()"),
            "quarterly": ("Priorities and resources", "rpt.priorities()"),
            "annual": ("Targets, structure and budget", "rpt.targets_and_structure()")}[cadence]
    return [new_markdown_cell(f"### {item[0]}"), new_code_cell(item[1])]


def template(level: str, cadence: str) -> nbformat.NotebookNode:
    """The notebook of one level × cadence."""
    unit = CADENCES[cadence]
    cells = [
        new_markdown_cell(f"# {LEVELS[level]} · {cadence} performance session\n\n"
                          f"The agenda of this {unit}'s session: trust the numbers, see where you stand, "
                          f"look ahead, decide {decides(level, cadence)}."),
        new_code_cell("owner_id = None\ncadence = None\nas_of = None\nrun_dir = None",
                      metadata={"tags": ["parameters"]}),
        new_code_cell(f"from spm_lib import notebook\n\nrpt = notebook.load(owner_id, cadence, as_of, run_dir, "
                      f"level={level!r}, default_cadence={cadence!r})\nrpt.header()"),
        new_markdown_cell("## 1. Can we trust the numbers?"),
        new_code_cell("rpt.trust()"),
        new_markdown_cell(f"## 2. Above the line: where we stand this {unit}"),
        new_code_cell("rpt.above_the_line()"),
        new_markdown_cell("## 3. Forward look"),
        new_code_cell("rpt.forward_look()"),
        new_markdown_cell(f"## 4. Where to focus{' — the team' if level != 'rep' else ''}"),
        new_code_cell("rpt.focus()"),
        *_cadence_cells(cadence),
        new_markdown_cell("## 5. Decisions and actions"),
        new_code_cell("rpt.actions()"),
        new_markdown_cell("## 6. Below the line"),
        new_code_cell("rpt.below_the_line()"),
    ]
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    for i, c in enumerate(nb.cells):
        c["id"] = f"{level}-{cadence}-{i:02d}"  # stable ids: templates diff cleanly
    return nb


def main(folder: Path) -> None:
    """Write every template into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for level in LEVELS:
        for cadence in CADENCES:
            if cadence == "weekly" and level != "rep":
                continue
            nbformat.write(template(level, cadence), folder / f"{level}_{cadence}.ipynb")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "templates")
