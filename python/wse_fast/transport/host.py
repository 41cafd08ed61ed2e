"""What the transports need from the node they serve (the server), as ports: the upgrade
(admit, then serve what it opened: :mod:`.upgrade` on a mounted transport, the listener's
own on wse-fast's) and the limits the transport applies itself. The transports import this
module, never ``server``; the server satisfies these structurally."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..handshake import HandshakeRequest, Network
    from ..options import ServerLimits
    from ..protocols import WireProtocol
    from ..server_connection import ServerConnection
    from .admission import Admission, ReadGuard, StrangerHold
    from .endpoint import Endpoint


class TransportHost(Protocol):
    """What every transport reads of its node: limits, its protocol, the strangers' count."""

    @property
    def limits(self) -> ServerLimits: ...

    @property
    def protocol(self) -> WireProtocol: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def stranger_budget(self) -> int: ...

    async def close(self) -> None: ...


class UpgradeHost(TransportHost, Protocol):
    """What the upgrade flow of a mounted transport (ASGI, aiohttp:
    :func:`~.upgrade.serve_upgrade`) calls on its node: start the node's links, decide an
    upgrade (a connection, or the HTTP refusal), and the options of the endpoint that serves
    the connection it opened."""

    @property
    def trusted_proxies(self) -> tuple[Network, ...]: ...

    async def attach(self) -> None: ...

    async def admit_async(
        self,
        target: str,
        headers: Mapping[str, str],
        peer: Any,
        stranger: StrangerHold,
        offered: Collection[str],
        native: Any = None,
    ) -> ServerConnection | tuple[int, str]: ...

    def endpoint_options(
        self, conn: ServerConnection, stranger: StrangerHold, peer: Any
    ) -> dict[str, Any]: ...


class ListenerHost(TransportHost, Protocol):
    """What the own listener calls on each node it routes to: the upgrade, at once or after
    an ``async`` ``on_upgrade`` has answered (``vet_upgrade``)."""

    @property
    def upgrade_is_async(self) -> bool: ...

    async def vet_upgrade(
        self, target: str, headers: Mapping[str, str], stranger: StrangerHold, peer: Any
    ) -> HandshakeRequest | tuple[int, str]: ...

    def upgrade(
        self,
        target: str,
        headers: Any,
        guard: ReadGuard,
    ) -> tuple[int, str] | tuple[Endpoint, list[tuple[str, str]]]: ...
