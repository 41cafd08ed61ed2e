"""The unit-test home of ``wse_fast.transport.upgrade``: the one upgrade flow of the mounted
transports (admit, accept or refuse, serve), run by a real server against a mount that
records what the flow asks of it. Every way out gives the stranger's place back.

End to end, under uvicorn and aiohttp, the same flow is tests/test_mounts.py and
tests/test_upgrade_hook.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from wse_fast import HandshakeRequest, WseServer
from wse_fast.transport.admission import Admission, StrangerTicket
from wse_fast.transport.messages import MessageEndpoint, Received
from wse_fast.transport.upgrade import (
    RETRY_SOON,
    UpgradeRequest,
    agreed_subprotocol,
    offered_subprotocols,
    serve_upgrade,
)

from tests.conftest import accept_identity

PEER = ("127.0.0.1", 50000)


class EndsAtOnce(MessageEndpoint):
    """A connection whose peer closes as soon as it is served."""

    async def send_message(self, binary: bool, payload: memoryview) -> None:
        pass

    async def send_close(self, code: int, reason: str) -> None:
        pass

    async def receive_event(self) -> Received:
        return None, (1000, "")


class RecordingMount:
    """A mount that keeps what the flow asked of it; ``accepting`` (when set) holds the
    accept until it is done."""

    def __init__(self) -> None:
        self.refused: tuple[int, str, tuple[tuple[str, str], ...]] | None = None
        self.accepted: tuple[str | None, tuple[tuple[str, str], ...]] | None = None
        self.options: dict[str, Any] | None = None
        self.accepting: asyncio.Future[None] | None = None
        self.accept_started = asyncio.Event()

    async def refuse(self, status: int, body: str, headers: Sequence[tuple[str, str]]) -> None:
        self.refused = (status, body, tuple(headers))

    async def accept(self, subprotocol: str | None, headers: Sequence[tuple[str, str]]) -> None:
        self.accept_started.set()
        if self.accepting is not None:
            await self.accepting
        self.accepted = (subprotocol, tuple(headers))

    def endpoint(self, options: dict[str, Any]) -> MessageEndpoint:
        self.options = options
        return EndsAtOnce(**options)


def request(offered: list[str], **headers: str) -> UpgradeRequest:
    return UpgradeRequest(
        "/ws?room=1",
        CIMultiDictProxy(CIMultiDict(headers)),
        PEER,
        PEER[0],
        offered,
        None,
    )


def test_offered_subprotocols_are_read_from_every_line() -> None:
    assert offered_subprotocols(["a, b", "c"]) == ["a", "b", "c"]
    assert offered_subprotocols([]) == []


def test_the_agreed_subprotocol_is_the_servers_when_offered() -> None:
    assert agreed_subprotocol("wse-msgpack", ["chat", "wse-msgpack"]) == "wse-msgpack"
    assert agreed_subprotocol("wse-msgpack", ["chat"]) is None


async def test_an_admitted_upgrade_is_accepted_with_the_agreed_subprotocol_and_served() -> None:
    def hook(req: HandshakeRequest) -> None:
        req.add_response_header("X-Room", "1")

    server = WseServer(accept_identity, on_upgrade=hook)
    mount = RecordingMount()
    await serve_upgrade(server, request(["chat", "wse-default-json"]), mount)
    assert mount.refused is None
    assert mount.accepted == ("wse-default-json", (("X-Room", "1"),))
    assert mount.options is not None and mount.options["remote_addr"] == PEER
    assert server.admission.total == 0 and not server.connections  # served to its end


async def test_an_upgrade_not_offering_the_subprotocol_is_accepted_naming_none() -> None:
    server = WseServer(accept_identity)
    mount = RecordingMount()
    await serve_upgrade(server, request(["chat"]), mount)
    assert mount.accepted == (None, ())


async def test_past_the_strangers_bound_the_upgrade_is_refused_to_retry_soon() -> None:
    server = WseServer(accept_identity)
    for _ in range(server.limits.max_unauthenticated_per_ip):
        assert server.admission.admit(PEER[0]) == (True, PEER[0])
    mount = RecordingMount()
    await serve_upgrade(server, request(["wse-default-json"]), mount)
    assert mount.refused == (429, "", RETRY_SOON) and mount.accepted is None


async def test_the_nodes_refusal_is_sent_and_the_place_given_back() -> None:
    server = WseServer(accept_identity, origins=["https://app.example"])
    mount = RecordingMount()
    await serve_upgrade(server, request(["wse-default-json"], Origin="https://evil"), mount)
    assert mount.refused == (403, "origin not allowed", ()) and mount.accepted is None
    assert server.admission.total == 0


async def test_an_upgrade_cancelled_while_accepting_gives_the_place_back() -> None:
    server = WseServer(accept_identity)
    mount = RecordingMount()
    mount.accepting = asyncio.get_running_loop().create_future()
    upgrade = asyncio.ensure_future(serve_upgrade(server, request(["wse-default-json"]), mount))
    await mount.accept_started.wait()
    assert server.admission.total == 1  # counted while it is accepted
    upgrade.cancel()
    await asyncio.gather(upgrade, return_exceptions=True)
    assert upgrade.cancelled() and mount.accepted is None
    assert server.admission.total == 0


class FailingEndpointMount(RecordingMount):
    """A mount whose endpoint cannot be made (the host went away after the 101, say)."""

    def endpoint(self, options: dict[str, Any]) -> MessageEndpoint:
        raise ConnectionResetError("the host's socket is gone")


async def test_an_endpoint_that_cannot_be_made_gives_the_place_back() -> None:
    server = WseServer(accept_identity)
    with pytest.raises(ConnectionResetError):
        await serve_upgrade(server, request(["wse-default-json"]), FailingEndpointMount())
    assert server.admission.total == 0


def test_a_ticket_past_its_budget_reports_once_and_gives_its_place_back() -> None:
    """A mounted stranger past its byte budget is refused once: what it sends while its
    Close leaves is not reported again, message after message."""
    admission = Admission(10, 10, lambda host: False)
    ticket = StrangerTicket.admit(admission, "127.0.0.1", 100)
    assert isinstance(ticket, StrangerTicket) and admission.total == 1
    exhausted: list[int] = []
    ticket.on_exhausted = lambda: exhausted.append(ticket.budget)
    ticket.spend(100)  # its whole budget: not past it
    assert exhausted == []
    for _ in range(3):
        ticket.spend(10)
    assert exhausted == [-10]
    ticket.release()
    assert admission.total == 0
