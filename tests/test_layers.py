"""The package map: each package of spm_lib imports only the packages below it, and no module imports in a cycle.

The order, lowest first (README, "How it is built"): errors and project; util; domain; config; metrics; data; engine;
store; state; report; live; batch; deliver; notebook and cli. A module may import its own package and any package
below it, at module level or inside a function alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spm_lib"
ORDER = ["errors", "project", "util", "domain", "config", "metrics", "data", "engine", "store", "state", "report",
         "live", "batch", "deliver", "notebook", "cli"]
RANK = {name: (1 if name == "project" else 0) if name in ("errors", "project") else i for i, name in enumerate(ORDER)}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("spm_lib",) + tuple(p for p in parts if p != "__init__"))
        out[name] = path
    return out


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported spm_lib module or package, line, at module level) of every import in `path`."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "spm_lib":
            for alias in node.names:
                found.append((f"{node.module}.{alias.name}" if node.module == "spm_lib" else node.module,
                              node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.startswith("spm_lib.")]
    return found


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else "spm_lib"


def test_every_module_has_a_package_of_the_map() -> None:
    layers = {_layer(m) for m in _modules() if m != "spm_lib"}
    assert layers <= set(ORDER), sorted(layers - set(ORDER))


def test_no_package_imports_one_above_it() -> None:
    upward = []
    for module, path in sorted(_modules().items()):
        if module == "spm_lib":
            continue
        for target, line, _ in _imports(path):
            if RANK[_layer(target)] > RANK[_layer(module)]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {module} -> {target}")
    assert upward == [], "\n".join(upward)


def test_no_import_cycle_between_modules() -> None:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        deps = set()
        for target, _, at_top in _imports(path):
            if not at_top:
                continue
            while target not in mods and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in mods and target != module:
                deps.add(target)
        graph[module] = deps
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], cycles
