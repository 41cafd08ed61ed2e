"""The application: the :class:`~wse_fast.WseServer` that ``MODULE:ATTR`` names, imported
with its directory first on ``sys.path``, and what must be imported before that."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from ..metrics import prometheus_installed
from ..server import WseServer

#: What ``/metrics`` imports at its first scrape.
PROMETHEUS_MODULES = (
    "prometheus_client",
    "prometheus_client.core",
    "prometheus_client.exposition",
    "prometheus_client.registry",
)


def import_ahead_of_the_application(cluster: bool, metrics: bool = False) -> None:
    """Imports what the server would otherwise import after :func:`load_server` has put the
    application's directory first on ``sys.path``, where a module of the same name (a
    nats.py, say) would be imported in its place: the cluster link and nats-py, when it
    joins a cluster, and prometheus_client when it serves ``/metrics`` (its first scrape, a
    request from the network, would import it). (orjson and msgpack come with wse_fast
    itself, imported already.)"""
    if cluster:
        importlib.import_module("wse_fast.cluster.nats_cluster")
    if metrics and prometheus_installed():
        for name in PROMETHEUS_MODULES:
            importlib.import_module(name)


def load_server(spec: str) -> WseServer:
    """The server ``MODULE:ATTR`` names: a :class:`WseServer`, or a function without arguments
    that returns one. ``ATTR`` may be dotted; the current directory comes first on
    ``sys.path``, as with uvicorn."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise click.BadParameter(f"{spec!r} is not MODULE:ATTR", param_hint="'MODULE:ATTR'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # only the module itself (or a package on its way) missing; an import failing inside
        # the application is its own error, shown with its traceback
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise
        raise click.ClickException(f"could not import module {module_name!r}") from None
    target: Any = module
    for name in attr.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise click.ClickException(
                f"module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not isinstance(target, WseServer) and callable(target):
        target = target()
    if not isinstance(target, WseServer):
        raise click.ClickException(
            f"{spec} is a {type(target).__name__}, not a WseServer "
            "(or a function without arguments that returns one)"
        )
    return target
