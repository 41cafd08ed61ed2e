"""The HTTP upgrade request as the application sees it, and who sent it.

Nothing here trusts a header by default: ``X-Forwarded-For`` only names the client when the
socket's peer is one of the ``trusted_proxies``. ``Forwarded`` (RFC 7239) is never read: a
proxy that writes ``X-Forwarded-For`` commonly passes a client's own ``Forwarded`` through.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(trusted: Iterable[str]) -> tuple[Network, ...]:
    """``"10.0.0.1"``, ``"10.0.0.0/8"``, ``"::1"``: addresses and networks to trust."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in trusted)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(networks: tuple[Network, ...], host: str) -> bool:
    """Whether ``host`` is an address within one of the trusted ``networks``."""
    if not networks:
        return False
    ip = _ip(host)
    return ip is not None and any(ip in net for net in networks)


def client_address(
    peer: Any, headers: Mapping[str, str], trusted: tuple[Network, ...]
) -> tuple[str, int]:
    """The client's address: the socket's peer, or, when the peer is a trusted proxy, the last
    address in the forwarding chain that is not itself a trusted proxy.

    The chain is read from the right (the hop nearest to us) because each proxy appends; any
    entry left of the first untrusted one may have been written by the client itself.
    """
    host, port = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else ("", 0)
    if not is_trusted(trusted, host):
        return host, port
    # Every header line: some proxies add a line of their own instead of appending.
    lines = _get_all(headers, "X-Forwarded-For")
    chain = [hop.strip() for line in lines for hop in line.split(",")]
    for hop in reversed(chain):
        ip = _ip(hop)
        if ip is None:
            break  # an obfuscated or malformed hop: nothing left of it can be believed
        if not any(ip in net for net in trusted):
            return str(ip), 0  # one spelling per address, for the per-address counts
        host = str(ip)
    return host, 0 if host != peer[0] else port


class HandshakeRequest:
    """The upgrade request: what the ``on_upgrade`` hook and ``identify`` (as ``req.request``)
    see. ``remote_addr`` is the client's ``(host, port)``, through trusted proxies (port 0 when
    a proxy named the client); ``peer_addr`` is the socket's own peer. ``native`` is the
    transport's own request: the ASGI scope (a dict; ``starlette.requests.HTTPConnection(scope)``
    reads it), aiohttp's ``web.Request``, or picows's ``WSUpgradeRequest``."""

    __slots__ = ("headers", "native", "path", "peer_addr", "query", "remote_addr")

    def __init__(
        self,
        target: str,
        headers: Mapping[str, str],
        peer_addr: Any,
        remote_addr: tuple[str, int],
        native: Any = None,
    ) -> None:
        path, _, query = target.partition("?")
        self.path = path
        self.query = query
        self.headers = headers
        self.peer_addr = peer_addr
        self.remote_addr = remote_addr
        self.native = native

    def __repr__(self) -> str:
        return f"<HandshakeRequest {self.path!r} from {self.remote_addr!r}>"

    @property
    def params(self) -> dict[str, list[str]]:
        """The query string, parsed: name to every value given."""
        return parse_qs(self.query)

    @property
    def cookies(self) -> dict[str, str]:
        """The ``Cookie`` header, parsed (empty when it is missing or malformed)."""
        jar: SimpleCookie = SimpleCookie()
        for value in _get_all(self.headers, "Cookie"):
            try:
                jar.load(value)
            except CookieError:
                return {}
        return {name: morsel.value for name, morsel in jar.items()}


def _get_all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    value = headers.get(name)
    return [] if value is None else [value]
