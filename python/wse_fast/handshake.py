"""The HTTP upgrade request as the application sees it, and who sent it.

Nothing here trusts a header by default: ``X-Forwarded-For`` only names the client when the
socket's peer is one of the ``trusted_proxies``. ``Forwarded`` (RFC 7239) is never read: a
proxy that writes ``X-Forwarded-For`` commonly passes a client's own ``Forwarded`` through.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A header name (RFC 9110 §5.1: a token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A header value the application may add: visible ASCII, spaces and tabs, so that no value
#: can end the header line (CR, LF) or be read differently by the client.
_VALUE = re.compile(r"[\t\x20-\x7e]*")
#: Headers of the 101 response that the handshake writes itself (RFC 6455 §4.2.2), and the
#: ones that frame an HTTP message: an application adding one would break the upgrade.
HANDSHAKE_RESPONSE_HEADERS = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "sec-websocket-version",
        "content-length",
        "transfer-encoding",
    }
)


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
    host server's own request: the ASGI scope (a dict; ``starlette.requests.HTTPConnection(scope)``
    reads it) or aiohttp's ``web.Request``; None on the own listener, which keeps no request
    object of its own (``path``, ``query``, ``headers`` and the addresses are all it reads).

    :meth:`add_response_header` adds a header to the 101 response (ws's ``headers`` event).
    """

    __slots__ = (
        "_response_headers",
        "headers",
        "native",
        "path",
        "peer_addr",
        "query",
        "remote_addr",
    )

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
        # made by the first add_response_header: most upgrades add none
        self._response_headers: list[tuple[str, str]] | None = None

    def __repr__(self) -> str:
        return f"<HandshakeRequest {self.path!r} from {self.remote_addr!r}>"

    def add_response_header(self, name: str, value: str) -> None:
        """Adds ``name: value`` to the 101 response that accepts this upgrade (from
        ``on_upgrade``; a name may come more than once, as ``Set-Cookie`` does). Raises
        ``ValueError`` for a name that is not an HTTP token, a value with other characters
        than visible ASCII, spaces and tabs, or a header the handshake writes itself
        (``Upgrade``, ``Connection``, ``Sec-WebSocket-*``, ``Content-Length``,
        ``Transfer-Encoding``)."""
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
        if name.lower() in HANDSHAKE_RESPONSE_HEADERS:
            raise ValueError(f"{name} is written by the WebSocket handshake itself")
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise ValueError(f"the value of {name} may hold visible ASCII, spaces and tabs only")
        if self._response_headers is None:
            self._response_headers = []
        self._response_headers.append((name, value))

    @property
    def response_headers(self) -> tuple[tuple[str, str], ...]:
        """The headers :meth:`add_response_header` added, in order."""
        return tuple(self._response_headers or ())

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
