"""The structure of ``wse_fast.cli``, one module per program: read from the modules' syntax
trees (nothing is imported), every import between the package's modules, those inside
functions and under ``TYPE_CHECKING`` included (they are design dependencies too), forms no
circle; the programs never import the package's ``__init__`` (which registers them on the
command group), and no module reaches for a sibling's private name."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

PACKAGE = "wse_fast.cli"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "python" / "wse_fast" / "cli"


def module_name(path: Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


def modules() -> dict[str, ast.Module]:
    """Every module of the package by its dotted name, parsed."""
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE_DIR.glob("*.py"))
    }


def imported(name: str, tree: ast.Module, known: set[str]) -> Iterator[tuple[str, list[str]]]:
    """The package's modules that module ``name`` imports (anywhere in its tree), each with
    the names it takes from it; relative imports resolved against the package."""
    package = PACKAGE  # every module of the package sits directly in it
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names = [alias.name for alias in node.names]
            if source in known:
                # ``from . import serve``: the submodule, when there is one of that name
                submodules = [n for n in names if f"{source}.{n}" in known]
                for submodule in submodules:
                    yield f"{source}.{submodule}", []
                rest = [n for n in names if n not in submodules]
                if rest:
                    yield source, rest


def import_graph() -> dict[str, dict[str, list[str]]]:
    """module -> {imported module of the package: the names taken from it}."""
    trees = modules()
    known = set(trees)
    graph: dict[str, dict[str, list[str]]] = {}
    for name, tree in trees.items():
        edges = graph.setdefault(name, {})
        for target, names in imported(name, tree, known):
            if target != name:
                edges.setdefault(target, []).extend(names)
    return graph


def import_circles(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """The circles of ``graph``: each strongly connected set of more than one module (or a
    module importing itself), sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, {}):
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(circles)


def test_the_circle_finder_finds_a_circle_and_only_circles() -> None:
    graph = {
        "a": {"b": []},
        "b": {"c": []},
        "c": {"a": [], "d": []},
        "d": {},
        "e": {"e": []},
        "f": {"d": []},
    }
    assert import_circles(graph) == [["a", "b", "c"], ["e"]]
    assert import_circles({"a": {"b": []}, "b": {}}) == []


def test_the_import_reader_sees_relative_imports_in_functions_and_type_checking() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "from . import serve, main\n"
        "from ..server import WseServer\n"
        "if TYPE_CHECKING:\n"
        "    from .client import Listening\n"
        "def run() -> None:\n"
        "    from .bench import bench\n"
    )
    known = {PACKAGE, f"{PACKAGE}.serve", f"{PACKAGE}.client", f"{PACKAGE}.bench"}
    assert sorted(imported(f"{PACKAGE}.common", tree, known)) == [
        (PACKAGE, ["main"]),
        (f"{PACKAGE}.bench", ["bench"]),
        (f"{PACKAGE}.client", ["Listening"]),
        (f"{PACKAGE}.serve", []),
    ]


def test_the_cli_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) >= 6, sorted(graph)  # the reader found the package's modules
    assert import_circles(graph) == []


def test_the_programs_do_not_import_the_command_group() -> None:
    graph = import_graph()
    importers = sorted(name for name, edges in graph.items() if PACKAGE in edges)
    assert importers == []


def test_no_module_takes_a_private_name_from_a_sibling() -> None:
    trees = modules()
    graph = import_graph()
    taken = {
        f"{name} <- {target}: {taken}"
        for name, edges in graph.items()
        for target, names in edges.items()
        for taken in names
        if taken.startswith("_")
    }
    # nor reaches for one through the module (``serve._private``)
    for name, tree in trees.items():
        siblings = {target.rsplit(".", 1)[1] for target in graph[name]}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in siblings
            ):
                taken.add(f"{name}: {node.value.id}.{node.attr}")
    assert taken == set()
