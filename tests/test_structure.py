"""The package's structure, read from its source alone (``ast``: nothing of wse_fast is
imported): no import circle, no object reaching into another's private attributes, nothing
below the server knowing the server, picows (its public API) only in the client.

Each test reads every module under ``python/wse_fast``. What remains on purpose is listed
below with the reason; anything new fails, and so does an entry that no longer occurs (the
list stays the truth).
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "wse_fast"

#: Private names read or written on something that is not ``self`` or ``cls``, that stay:
#: (module, expression as written) to how many times, and why. Every other ``x._name`` in
#: the package fails: a module talks to another object through its named interface.
ALLOWED_PRIVATE_REACHES: dict[tuple[str, str], tuple[int, str]] = {
    ("wse_fast.cluster.local_nats", "parts._replace"): (
        1,
        "a named tuple's public method (urllib's SplitResult), underscored by namedtuple",
    ),
    ("wse_fast.cluster.local_nats", "os._exit"): (
        2,
        "the standard library's exit without cleanup, in the forked child before exec",
    ),
    ("wse_fast.sansio.deflate", "zlib._Decompress"): (
        1,
        "an annotation: typeshed's only name for zlib's decompressor type",
    ),
}

#: Import circles that stay (each a sorted tuple of module names): none.
ALLOWED_CIRCLES: set[tuple[str, ...]] = set()

#: The modules that may import ``wse_fast.server``: the public face and the programs above
#: it. Everything below is handed a port (``ports``, ``transport.host``, ...) instead.
SERVER_USERS = {"wse_fast", "wse_fast.cli.app", "wse_fast.cli.serve", "wse_fast.cli.supervisor"}


#: The layers, from the bottom: a module may import its own layer and those below, never one
#: above (the test below). Names ending in "." take every module under that package.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "wire: the protocol without I/O",
        (
            "wse_fast.constants",
            "wse_fast.errors",
            "wse_fast.handshake",
            "wse_fast.codec",
            "wse_fast._pure",
            "wse_fast.protocols",
            "wse_fast.sansio.",
        ),
    ),
    (
        "ports and options: what the layers above are handed",
        (
            "wse_fast.ports",
            "wse_fast.options",
            "wse_fast.transport.base",
            "wse_fast.transport.admission",
            "wse_fast.transport.flush",
            "wse_fast.transport.per_loop",
            "wse_fast.cluster.broker",
            "wse_fast.cluster.local_nats",
        ),
    ),
    (
        "session: users, connections, calls, events, authentication, metrics",
        (
            "wse_fast.rpc",
            "wse_fast.connection",
            "wse_fast.registry",
            "wse_fast.events",
            "wse_fast.peer",
            "wse_fast.server_connection",
            "wse_fast.authentication",
            "wse_fast.hmac_challenge",
            "wse_fast.metrics",
        ),
    ),
    (
        "transports and brokers: sockets, mounts, NATS",
        ("wse_fast.transport.", "wse_fast.cluster."),
    ),
    (
        "the node: server, listener, client",
        ("wse_fast.server", "wse_fast.listener", "wse_fast.client"),
    ),
    ("programs and aliases", ("wse_fast.cli.", "wse_fast.__main__", "wse_fast.auth")),
)

#: Imports that run up the layers and stay: (importer, imported) to why. None.
ALLOWED_BACK_ARROWS: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of ``module``'s layer: an exact name first, then the
    longest package prefix; None for a module no layer names."""
    for index, (_title, members) in enumerate(LAYERS):
        if module in members:
            return index
    best: tuple[int, int] | None = None
    for index, (_title, members) in enumerate(LAYERS):
        for member in members:
            fits = member.endswith(".") and module.startswith(member)
            if fits and (best is None or len(member) > best[0]):
                best = (len(member), index)
    return None if best is None else best[1]


def back_arrows(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The imports from a module to one in a higher layer (unplaced modules aside)."""
    found = set()
    for importer, imported in edges.items():
        low = layer_of(importer)
        for target in imported:
            high = layer_of(target)
            if low is not None and high is not None and high > low:
                found.add((importer, target))
    return found


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name); ``package``:
    the ``wse_fast`` folder of this checkout, or of another one."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, ast.AST]]:
    """The package's modules that module ``name`` imports, anywhere in it (under
    ``TYPE_CHECKING`` and inside functions too: they are design dependencies). ``from pkg
    import sub`` names the submodule; ``from pkg import name`` the package itself."""
    here = name if is_package(path) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "wse_fast" or target.startswith("wse_fast.")):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in known else target), node


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module to the modules it imports. Packages' ``__init__`` files are left out, as
    importers and as imported: they re-export names, they do not depend on them."""
    known = modules(package)
    packages = {name for name, path in known.items() if is_package(path)}
    edges: dict[str, set[str]] = {name: set() for name in known if name not in packages}
    for name in edges:
        for target, _node in imports(name, known[name], known):
            if target != name and target in known and target not in packages:
                edges[name].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative): each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(tuple(sorted(component)))
    return found


def private_reaches() -> Counter[tuple[str, str]]:
    """``x._name`` where ``x`` is not ``self`` or ``cls`` (dunders aside), by module and
    expression."""
    found: Counter[tuple[str, str]] = Counter()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            found[name, ast.unparse(node)] += 1
    return found


def test_the_graph_is_read() -> None:
    """The reader finds what is known to be there (else every other test passes vacuously)."""
    edges = graph()
    assert "wse_fast.connection" in edges["wse_fast.server"]
    assert "wse_fast.rpc" in edges["wse_fast.server_connection"]  # from . import rpc
    assert "wse_fast.sansio.session" in edges["wse_fast.metrics"]  # from .sansio import session
    assert "wse_fast.ports" in edges["wse_fast.connection"]  # under TYPE_CHECKING
    assert "wse_fast" not in edges  # the package's __init__: left out


def test_no_import_circle() -> None:
    found = set(circles(graph()))
    assert found - ALLOWED_CIRCLES == set(), "new import circle(s)"
    assert ALLOWED_CIRCLES - found == set(), "an allowed circle is gone: take it off the list"


def test_every_module_has_a_layer() -> None:
    assert [m for m in graph() if layer_of(m) is None] == [], "place the module in LAYERS"


def test_no_import_runs_up_the_layers() -> None:
    found = back_arrows(graph())
    assert found - set(ALLOWED_BACK_ARROWS) == set(), "a module imports one above its layer"
    assert set(ALLOWED_BACK_ARROWS) - found == set(), "an allowed back arrow is gone"


def test_back_arrows_are_found() -> None:
    """The layer reader itself: a transport importing the server runs up; the server
    importing a transport does not."""
    edges = {"wse_fast.transport.asgi": {"wse_fast.server"}, "wse_fast.server": {"wse_fast.rpc"}}
    assert back_arrows(edges) == {("wse_fast.transport.asgi", "wse_fast.server")}
    assert layer_of("wse_fast.sansio.session") == 0
    assert layer_of("wse_fast.cluster.broker") == 1  # an exact name before its package's
    assert layer_of("wse_fast.cluster.nats_link") == 3


def test_circles_are_found() -> None:
    """The circle finder itself, on a small graph: two circles and a tail."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert sorted(circles(edges)) == [("a", "b", "c"), ("e", "f")]


def test_no_private_reach_across_objects() -> None:
    found = private_reaches()
    new = {
        key: count
        for key, count in found.items()
        if count > ALLOWED_PRIVATE_REACHES.get(key, (0, ""))[0]
    }
    assert new == {}, "a module reaches into another object's private attributes"
    stale = {key for key, (count, _why) in ALLOWED_PRIVATE_REACHES.items() if found[key] < count}
    assert stale == set(), "an allowed reach is gone: lower or remove its entry"


def test_nothing_below_the_server_imports_it() -> None:
    known = modules()
    users = {
        name
        for name, path in known.items()
        for target, _node in imports(name, path, known)
        if target == "wse_fast.server"
    }
    assert users - SERVER_USERS == set()


def picows_imports() -> dict[str, set[str]]:
    """The picows modules each module of the package imports (only those that import any)."""
    users: dict[str, set[str]] = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                named = [node.module or ""]
            else:
                continue
            found = {n for n in named if n == "picows" or n.startswith("picows.")}
            if found:
                users.setdefault(name, set()).update(found)
    return users


def test_picows_only_in_the_client() -> None:
    # The server reads its own sockets; picows is the client's alone (the endpoint it shares
    # with the server gets picows's callbacks through the client's listener), and only
    # through its public API: the top-level ``picows`` module. Its private ``picows.picows``
    # classes (a positional constructor that any release may change) stay out.
    users = picows_imports()
    assert set(users) <= {"wse_fast.client"}
    assert all(named == {"picows"} for named in users.values()), users
