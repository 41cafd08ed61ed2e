"""A cluster node for the fault tests, run as its own process by
``wse-fast serve tests.cluster_node_app:make_server --port 0`` so that it can be killed with
SIGKILL. It joins the cluster itself, with the options the test gives it in the environment
(``wse-fast serve --cluster`` has no option for the node's TTL):

- ``WSE_FAST_TEST_NATS``: the NATS URL;
- ``WSE_FAST_TEST_NODE``: the node's name;
- ``WSE_FAST_TEST_NODE_TTL``: seconds before the node stops counting once it is dead;
- ``WSE_FAST_TEST_CONN_PER_USER``: the per-user connection limit.

Every connection is the user its identity names."""

from __future__ import annotations

import os

from wse_fast import ClusterOptions, IdentifyRequest, WseServer


def identify(req: IdentifyRequest) -> None:
    req.accept(str(req.identity))


def make_server() -> WseServer:
    env = os.environ
    server = WseServer(identify, conn_per_user=int(env["WSE_FAST_TEST_CONN_PER_USER"]))
    server.join_cluster(
        env["WSE_FAST_TEST_NATS"],
        ClusterOptions(
            node=env["WSE_FAST_TEST_NODE"], node_ttl=float(env["WSE_FAST_TEST_NODE_TTL"])
        ),
    )
    return server
