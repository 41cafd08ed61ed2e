"""The ``wse-fast`` command (also ``python -m wse_fast``): one module per program.

- :mod:`~wse_fast.cli.serve`: ``wse-fast serve MODULE:ATTR``, one process, the application
  loaded by :mod:`~wse_fast.cli.app`;
- :mod:`~wse_fast.cli.supervisor`: ``serve --workers N``, worker processes that share the port
  (SO_REUSEPORT) and join one NATS cluster, restarted when they end on their own;
- :mod:`~wse_fast.cli.client`: ``call``, ``listen`` and ``send``, a
  :class:`~wse_fast.WseClient` on the command line (JSON in, JSON out);
- :mod:`~wse_fast.cli.bench`: ``wse-fast bench URL``, load on any WSE server (RPC calls or
  listening on many connections) and the figures it answered with;
- :mod:`~wse_fast.cli.common`: what they share (the logger, stop signals, log formats).

This module holds the click group :func:`main` (the console script ``wse-fast``) and
registers each program's commands on it; the programs do not import it.
"""

from __future__ import annotations

import click

from . import bench, client, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wse-fast", prog_name="wse-fast")
def main() -> None:
    """wse-fast: WSE servers (users with several devices, challenge-response
    authentication, RPC both ways) on picows and uvloop."""


main.add_command(serve.serve)
main.add_command(client.call)
main.add_command(client.listen)
main.add_command(client.send)
main.add_command(bench.bench)
