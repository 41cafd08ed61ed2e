"""The upgrade, written once for every transport whose host server reads the HTTP request
(ASGI, aiohttp): admit, accept or refuse, serve.

:func:`serve_upgrade` runs the sequence; a transport hands it what only it knows as a
:class:`Mount` (how to refuse with an HTTP status, how to accept with a subprotocol, how to
make the endpoint) and the request as an :class:`UpgradeRequest`. Every step that decides
something is the node's or this module's, so the transports cannot drift apart:

1. the stranger is counted (:meth:`~.admission.StrangerTicket.admit`): past the server's
   bounds, 503 or 429 (:func:`~.admission.stranger_refusal`), with ``Retry-After``;
2. the node's links start (``attach``: the first connection starts the cluster link): a
   failure is 503, with ``Retry-After``;
3. the node decides (``admit_async``: origins, a trusted proxy's client, ``on_upgrade``):
   a connection, or the status and body that refuse it;
4. the 101 names :func:`agreed_subprotocol` and ``on_upgrade``'s headers;
5. the endpoint serves the connection until it ends.

The stranger's place is given back on every way out before the endpoint holds it, a
cancellation included.

wse-fast's own listener (:mod:`.server_socket`) makes the same
decisions with the same pieces (:func:`offered_subprotocols`, :func:`agreed_subprotocol`,
:func:`~.admission.stranger_refusal`, the node's ``admit``) but not through
:func:`serve_upgrade`: there the stranger is counted at the TCP accept, before a byte is
read, an ``async`` ``on_upgrade`` runs while the read guard holds the request, and the
upgrade is answered synchronously inside the read callback that completed the request (so
that the frames that came behind it in the same read are fed at once, in order), after
which the transport drives the endpoint through callbacks; no coroutine serves it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from .admission import StrangerTicket

if TYPE_CHECKING:
    from .host import UpgradeHost
    from .messages import MessageEndpoint

#: Sent with a refusal that a client may retry soon (the server's strangers are all taken, or
#: its links are down).
RETRY_SOON: tuple[tuple[str, str], ...] = (("Retry-After", "1"),)


def offered_subprotocols(lines: Iterable[str]) -> list[str]:
    """The subprotocols a client offered, from every ``Sec-WebSocket-Protocol`` field line:
    each a comma-separated list (RFC 6455 §4.1, §11.3.4), and a list may be split over
    several lines (RFC 9110 §5.3)."""
    return [name.strip() for line in lines for name in line.split(",")]


def agreed_subprotocol(ours: str, offered: Collection[str]) -> str | None:
    """The subprotocol the 101 response names: the server's own, when the client offered it;
    else none (the connection then opens, to be closed with ``wse.protocol-error``, which a
    WSE client understands better than a refused upgrade)."""
    return ours if ours in offered else None


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """One upgrade request as a mounted transport read it."""

    target: str  # as the client sent it: percent-encoded, with the query
    headers: Mapping[str, str]
    peer: tuple[str, int]  # the socket's peer, as the host server gives it
    counted_as: str  # the address the stranger is counted under
    offered: list[str]  # the subprotocols the client offered
    native: Any  # the host server's own request (``HandshakeRequest.native``)


class Mount(Protocol):
    """What a mounted transport does for one upgrade, in its host server's terms."""

    async def refuse(self, status: int, body: str, headers: Sequence[tuple[str, str]]) -> None:
        """Answers the upgrade with an HTTP error (or what the host can send instead)."""
        ...

    async def accept(self, subprotocol: str | None, headers: Sequence[tuple[str, str]]) -> None:
        """Answers 101, naming ``subprotocol`` (None: none), with ``headers`` added."""
        ...

    def endpoint(self, options: dict[str, Any]) -> MessageEndpoint:
        """The endpoint of the accepted connection, made with the node's ``options``."""
        ...


async def serve_upgrade(host: UpgradeHost, request: UpgradeRequest, mount: Mount) -> None:
    """Admits, accepts or refuses, and serves one upgrade on a mounted transport (see the
    module's docstring for the steps); returns once the connection has ended or the upgrade
    was refused."""
    ticket = StrangerTicket.admit(host.admission, request.counted_as, host.stranger_budget)
    if isinstance(ticket, int):
        await mount.refuse(ticket, "", RETRY_SOON)
        return
    try:
        await host.attach()
    except Exception:
        ticket.release()
        await mount.refuse(HTTPStatus.SERVICE_UNAVAILABLE, "", RETRY_SOON)
        return
    try:
        verdict = await host.admit_async(
            request.target, request.headers, request.peer, ticket, request.offered, request.native
        )
    except BaseException:  # cancelled too: the stranger's place must not stay taken
        ticket.release()
        raise
    if isinstance(verdict, tuple):
        ticket.release()
        await mount.refuse(*verdict, ())
        return
    assert verdict.handshake is not None
    try:
        await mount.accept(
            agreed_subprotocol(host.protocol.name, request.offered),
            verdict.handshake.response_headers,  # on_upgrade's
        )
        endpoint = mount.endpoint(host.endpoint_options(verdict, ticket, request.peer))
    except BaseException:  # cancelled too: the stranger's place must not stay taken
        ticket.release()
        raise
    await endpoint.serve()
