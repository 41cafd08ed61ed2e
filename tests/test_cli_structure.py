"""The structure of ``wse_fast.cli``, one module per program, read from the modules' syntax
trees (nothing is imported; imports inside functions and under ``TYPE_CHECKING`` count): the
programs never import the package's ``__init__`` (which registers them on the command group),
and no module reaches for a sibling's private name. That the package, like all of wse_fast,
has no import circle is tests/test_structure.py's."""

from __future__ import annotations

import ast
from collections.abc import Iterator
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
