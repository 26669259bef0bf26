"""The package's layout rules, checked on the source: rooms by concern, imports one way.

Layers, highest first: entry points (``train``, ``cli``) -> ``run``, ``results``, ``bench``
-> ``lightning`` -> ``models``, ``data``, ``records``, ``attention`` -> ``utils``,
``errors``, ``config``. A module may import its own layer or lower ones, never a higher one,
and no set of modules may import each other in a circle. Every import counts: at the top,
inside a function, or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "stnrepro"

LAYERS: dict[str, int] = {
    "train": 5,
    "cli": 5,
    "run": 4,
    "results": 4,
    "bench": 4,
    "lightning": 3,
    "models": 2,
    "data": 2,
    "records": 2,
    "attention": 2,
    "utils": 1,
    "errors": 1,
    "config": 1,
    "conf": 1,
    "": 1,  # stnrepro/__init__.py
}
MAX_TOP_LEVEL_MODULES = 6


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    """Every ``stnrepro`` module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "stnrepro":
                found.update(f"stnrepro.{alias.name}" for alias in node.names)
            elif node.module.startswith("stnrepro."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("stnrepro."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(path):
            # ``from stnrepro.run import provenance`` names a module; ``from stnrepro.x import
            # f`` names a module's attribute: resolve to the module that exists.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def test_every_room_has_a_layer():
    rooms = {_room(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert rooms <= set(LAYERS), f"rooms without a layer: {sorted(rooms - set(LAYERS))}"


def test_few_modules_sit_at_the_top_level():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{a} -> {b}"
        for a, targets in sorted(_graph().items())
        for b in sorted(targets)
        if LAYERS[_room(b)] > LAYERS[_room(a)]
    ]
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "has_cycle"),
    [
        ({"a": {"b"}, "b": {"c"}}, False),
        ({"a": {"b"}, "b": {"a"}}, True),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, has_cycle):
    assert (_cycle(graph) is not None) is has_cycle


def test_the_import_finder_sees_imports_inside_functions_and_type_checking(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from stnrepro.run.fit import train\n"
        "def f():\n    from stnrepro import errors\n"
    )
    assert _imports(source) == {"stnrepro.run.fit", "stnrepro.errors"}


def test_objects_are_built_from_config_by_the_one_builder():
    """Hydra's ``instantiate`` is called in run/build.py only, so a constructor's refusal is
    always the project's one line (never Hydra's wrapped multi-line exception)."""
    callers = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p != PACKAGE / "run" / "build.py"
        and any(
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "instantiate"
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        )
    ]
    assert not callers, f"instantiate called outside run/build.py: {callers}"
