"""The project's own modules import each other without circles.

A circle is found by reading the source with `ast`, not by importing: an import inside a function counts as
much as one at the top of a module (it only postpones the circle to the first call), relative imports are
resolved, and only `if TYPE_CHECKING:` blocks are left out (they never run). An edge goes to the module an
import names: `from pkg import sub` to `pkg.sub` when `sub` is a submodule, otherwise to `pkg` (its
`__init__`); the parent packages Python initialises on the way are not edges, because a package that is still
initialising is already in `sys.modules` and its submodules import fine. Names that `importlib` resolves at
run time (the registries' "module:Class" entries, the lazy exports of a package `__init__`, the command table)
are not edges either: a registry knows its plugins by name only, and the plugins depend on the shared base.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (folder put on sys.path, top-level package): scripts/gpu_check.py imports its library as `gpu_check_lib`
PACKAGES = ((ROOT, "mllm"), (ROOT, "vision_tower"), (ROOT, "projector"), (ROOT, "demo"),
            (ROOT / "scripts", "gpu_check_lib"))


def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the project's packages."""
    modules = {}
    for base, package in PACKAGES:
        for path in sorted((base / package).rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _import_nodes(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = _resolve(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                targets.add(sub if sub in modules else base)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path `[a, b, ..., a]`, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        state[start] = 1
        iters = [iter(sorted(graph[start]))]
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_the_project_import_graph_has_no_cycle():
    modules = project_modules()
    assert {"mllm.templates", "mllm.data.labels", "vision_tower.loader", "demo.app"} <= set(modules)
    graph = import_graph(modules)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_demo_does_not_import_the_quickstart():
    graph = import_graph(project_modules())
    offenders = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[0] == "demo"
                       for t in targets if t.startswith("mllm.quickstart"))
    assert not offenders, offenders


@pytest.mark.parametrize("source, expected", [
    # a function-local import is an edge, as is a relative one and a submodule named by `from pkg import sub`
    ({"pkg": "", "pkg.a": "def f():\n    from .b import g\n", "pkg.b": "from . import a\n"},
     ["pkg.a", "pkg.b", "pkg.a"]),
    ({"a": "import pkg.b\n", "pkg.b": "from a import x\n", "pkg": ""}, ["a", "pkg.b", "a"]),
    ({"pkg": "from .b import x\n", "pkg.b": "from pkg import y\n"}, ["pkg", "pkg.b", "pkg"]),
    # TYPE_CHECKING imports never run; a submodule importing a sibling while the package initialises is fine
    ({"a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from b import x\n", "b": "import a\n"}, None),
    ({"pkg": "from .b import x\n", "pkg.b": "from .c import y\n", "pkg.c": ""}, None),
])
def test_the_checker_finds_cycles_it_should_and_only_those(tmp_path, source, expected):
    modules = {}
    for name, text in source.items():
        is_package = any(other.startswith(name + ".") for other in source)
        path = tmp_path / name.replace(".", "/") / "__init__.py" if is_package else \
            tmp_path / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        modules[name] = path
    cycle = find_cycle(import_graph(modules))
    if expected is None:
        assert cycle is None
    else:  # the same circle, whichever module it starts at
        assert cycle is not None and len(cycle) == len(expected)
        assert set(cycle) == set(expected)
