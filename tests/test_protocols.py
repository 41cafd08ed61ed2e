"""Wire protocols: the one rule for what counts as a built-in protocol
(:func:`wse_fast.protocols.builtin_format`), and what a subclass of a built-in protocol gets
under it, on a real server and client."""

from __future__ import annotations

import json
from typing import Any

import pytest
from wse_fast import JsonProtocol, MsgpackProtocol
from wse_fast.protocols import Triple, builtin_format

from tests.conftest import ClientFactory, EventLog, ServerFactory


class RenamedJson(JsonProtocol):
    """Changes only the name: still the built-in JSON protocol."""

    name = "renamed-json"


class OwnPackJson(JsonProtocol):
    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> bytes:
        return super().pack(type, payload, stamp)


class OwnFrameMsgpack(MsgpackProtocol):
    def frame(self, type: str, payload: Any, stamp: str | None, mask: bool) -> bytes:
        return super().frame(type, payload, stamp, mask)


class OwnUnpackJson(JsonProtocol):
    """Decodes with the standard library, which takes ``str`` or ``bytes`` but not a view,
    and records what each message came as."""

    name = "own-unpack-json"

    def __init__(self) -> None:
        self.given: list[type] = []

    def unpack(self, data: bytes | str) -> Triple:
        self.given.append(type(data))
        type_, payload, *rest = json.loads(data)
        return type_, payload, rest[0] if rest else None


class Custom:
    """Not a subclass at all."""

    name = "custom"
    internal_types = JsonProtocol.internal_types

    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> bytes:
        return JsonProtocol().pack(type, payload, stamp)

    def unpack(self, data: bytes | str) -> Triple:
        return JsonProtocol().unpack(data)


@pytest.mark.parametrize(
    ("protocol", "rule"),
    [
        (JsonProtocol(), False),
        (MsgpackProtocol(), True),
        (RenamedJson(), False),  # name and internal types may change
        (OwnPackJson(), None),  # any of pack, unpack, frame overridden: not built-in
        (OwnUnpackJson(), None),
        (OwnFrameMsgpack(), None),
        (Custom(), None),
    ],
)
def test_what_counts_as_a_builtin_protocol(protocol: Any, rule: bool | None) -> None:
    assert builtin_format(protocol) is rule


class OwnPackAndUnpackJson(OwnUnpackJson):
    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> bytes:
        return json.dumps([type, payload] if stamp is None else [type, payload, stamp]).encode()


@pytest.mark.parametrize("protocol", [OwnUnpackJson, OwnPackAndUnpackJson])
async def test_a_json_subclass_with_its_own_methods_gets_text_of_its_own(
    make_server: ServerFactory,
    make_client: ClientFactory,
    log: EventLog,
    protocol: type[OwnUnpackJson],
) -> None:
    # Under the rule, a subclass that overrides unpack is not built-in: its unpack gets str
    # for a text message, never a view into the transport's read buffer; and its messages
    # are text (JSON's binary = False), also when its own pack answers bytes.
    on_server, on_client = protocol(), protocol()
    server = await make_server(protocol=on_server)
    server.channel.on("ping", lambda conn, payload: conn.send("pong", payload))
    client = make_client(server, protocol=on_client)
    client.channel.on("pong", log.hook("pong"))
    await client.connect("alice")
    client.send("ping", {"n": 1})
    assert await log.wait("pong") == [({"n": 1},)]
    assert set(on_server.given) == {str} and set(on_client.given) == {str}
