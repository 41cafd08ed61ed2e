"""The unit-test home of ``wse_fast.registry`` and of the bookkeeping of
``wse_fast.connection.User``: who is registered, with which connections in which order, the
per-user limit, and what a user's send costs. No socket, no loop: the registry is handed
connections and the node's encoder and sent-meter (its ports), as the server hands them.

End to end, the same rules are in tests/test_behaviour.py (``conn_per_user``, ``joined`` and
``left``) on every transport.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from wse_fast import codec
from wse_fast.connection import Client, Connection, User
from wse_fast.registry import UserRegistry
from wse_fast.sansio.session import ServerSession, Wire


class Meter:
    """The node's sent-meter (``ports.SentMeter``): what was counted."""

    def __init__(self, counting: bool = True) -> None:
        self.counting = counting
        self.sent: list[tuple[str, int, int]] = []

    def count_sent(self, type: str, size: int, connections: int = 1) -> None:
        self.sent.append((type, size, connections))


class Node:
    """What a connection needs of its node (``ports.ConnectionHost``)."""

    def __init__(self, wire: Wire, meter: Meter) -> None:
        self.encode = wire.encode
        self.metrics = meter
        self.when = self
        self.timeout = None

    def emit_unless_within(self, name: str, *args: Any) -> None:
        raise AssertionError(f"no event expected, got {name}")


class Device:
    """One connection's transport: what was written to it, and its close."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.open = True
        self.remote_addr = ("127.0.0.1", 1)

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self, code: int, reason: str = "", *, wait: bool = True) -> None:
        self.closed = (code, reason)
        self.open = False

    def abort(self) -> None:
        self.open = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
def meter() -> Meter:
    return Meter()


@pytest.fixture
def registry(wire: Wire, meter: Meter) -> UserRegistry:
    return UserRegistry(wire.encode, conn_per_user=3, metrics=meter)


@pytest.fixture
def connect(wire: Wire, meter: Meter) -> Any:
    """Makes connection number ``n`` of the node, open on a :class:`Device`."""
    node = Node(wire, meter)

    def make(n: int, meta: dict[str, Any] | None = None) -> Connection:
        conn = Connection(node, f"c{n}", ServerSession(wire))
        conn.endpoint = Device()
        conn.meta = meta or {}
        return conn

    return make


def accept(registry: UserRegistry, conn: Connection, cid: Any) -> tuple[User, bool, list[Any]]:
    """What the server does with an accepted connection (``WseServer.admitted``)."""
    user, joined, excess = registry.add(conn, cid)
    conn.client = user
    conn.cid = cid
    return user, joined, excess


def frames_of(conn: Connection) -> list[bytes]:
    assert isinstance(conn.endpoint, Device)
    return conn.endpoint.frames


# ---- adding and removing ---------------------------------------------------------------------


def test_a_users_first_connection_registers_it_and_it_joins(
    registry: UserRegistry, connect: Any
) -> None:
    first = connect(1, meta={"device": "phone"})
    user, joined, excess = accept(registry, first, "alice")
    assert joined and excess == []
    assert registry.clients == {"alice": user}
    assert user.cid == "alice" and user.meta == {"device": "phone"}
    assert dict(user.conns) == {"c1": first}


def test_more_connections_of_a_user_are_kept_oldest_first(
    registry: UserRegistry, connect: Any
) -> None:
    conns = [connect(n) for n in range(3)]
    user, _, _ = accept(registry, conns[0], "alice")
    for conn in conns[1:]:
        again, joined, excess = accept(registry, conn, "alice")
        assert again is user and not joined and excess == []
    assert list(user.conns.values()) == conns
    assert len(registry.clients) == 1


def test_any_hashable_cid_is_kept_as_given(registry: UserRegistry, connect: Any) -> None:
    user, _, _ = accept(registry, connect(1), ("tenant", 7))
    assert registry.clients[("tenant", 7)] is user and user.cid == ("tenant", 7)


def test_past_the_per_user_limit_the_oldest_connections_are_given_to_drop(
    registry: UserRegistry, connect: Any
) -> None:
    conns = [connect(n) for n in range(5)]
    for conn in conns[:3]:
        accept(registry, conn, "alice")
    _, joined, excess = accept(registry, conns[3], "alice")
    assert not joined and excess == [conns[0]]
    # the registry keeps them until they close: while they are still open, the next one
    # over the limit gives every connection past it, oldest first
    _, _, excess = accept(registry, conns[4], "alice")
    assert excess == conns[:2]
    user = registry.clients["alice"]
    for old in conns[:2]:
        assert registry.remove(old) is None  # closed; alice has others
    assert list(user.conns.values()) == conns[2:]


def test_a_changed_limit_holds_from_the_next_connection(
    registry: UserRegistry, connect: Any
) -> None:
    first, second = connect(1), connect(2)
    accept(registry, first, "alice")
    registry.conn_per_user = 1
    _, _, excess = accept(registry, second, "alice")
    assert excess == [first]


def test_a_user_leaves_with_its_last_connection(registry: UserRegistry, connect: Any) -> None:
    first, second = connect(1), connect(2)
    user, _, _ = accept(registry, first, "alice")
    accept(registry, second, "alice")
    assert registry.remove(first) is None  # alice still has a device
    assert registry.clients == {"alice": user}
    assert registry.remove(second) is user  # the last one: alice left
    assert registry.clients == {}
    assert dict(user.conns) == {}


def test_removing_what_was_never_accepted_or_is_gone_changes_nothing(
    registry: UserRegistry, connect: Any
) -> None:
    stranger, first, second = connect(0), connect(1), connect(2)
    assert registry.remove(stranger) is None  # never accepted: no user
    user, _, _ = accept(registry, first, "alice")
    accept(registry, second, "alice")
    assert registry.remove(first) is None
    assert registry.remove(first) is None  # twice: no longer one of alice's
    assert list(user.conns.values()) == [second]


def test_a_user_who_comes_back_is_a_new_user(registry: UserRegistry, connect: Any) -> None:
    first, later = connect(1), connect(2)
    before, _, _ = accept(registry, first, "alice")
    before.state["cart"] = 1
    assert registry.remove(first) is before
    after, joined, _ = accept(registry, later, "alice")
    assert joined and after is not before
    assert after.state == {}  # the application's data went with the user who left
    assert registry.remove(first) is None  # the old user's last device, already gone


def test_users_are_counted_each_once(registry: UserRegistry, connect: Any) -> None:
    for n, cid in enumerate(["alice", "bob", "alice", "carol", "bob"]):
        accept(registry, connect(n), cid)
    assert {cid: len(user.conns) for cid, user in registry.clients.items()} == {
        "alice": 2,
        "bob": 2,
        "carol": 1,
    }


# ---- what a user is to the application ---------------------------------------------------------


def test_conns_is_a_read_only_snapshot(registry: UserRegistry, connect: Any) -> None:
    first, second = connect(1), connect(2)
    user, _, _ = accept(registry, first, "alice")
    snapshot = user.conns
    assert isinstance(snapshot, MappingProxyType)
    accept(registry, second, "alice")
    assert list(snapshot) == ["c1"] and list(user.conns) == ["c1", "c2"]


def test_a_users_send_is_encoded_once_for_every_device_and_counted_once(
    registry: UserRegistry, connect: Any, meter: Meter, wire: Wire
) -> None:
    first, second = connect(1), connect(2)
    user, _, _ = accept(registry, first, "alice")
    accept(registry, second, "alice")
    user.send("news", {"n": 1})
    [frame] = frames_of(first)
    assert frames_of(second) == [frame] and frames_of(second)[0] is frame  # one encoding
    assert frame == wire.encode("news", {"n": 1}, None)
    assert codec.unpack_json(frame[2:]) == ("news", {"n": 1}, None)
    assert meter.sent == [("news", len(frame), 2)]


def test_nothing_is_counted_while_the_meter_does_not_count(wire: Wire, connect: Any) -> None:
    idle = Meter(counting=False)
    registry = UserRegistry(wire.encode, conn_per_user=3, metrics=idle)
    user, _, _ = accept(registry, connect(1), "alice")
    user.send("news")
    assert idle.sent == []
    alone = UserRegistry(wire.encode, conn_per_user=3)  # no meter at all
    accept(alone, connect(2), "bob")[0].send("news")


def test_send_frame_answers_how_many_devices_it_went_to(
    registry: UserRegistry, connect: Any
) -> None:
    first, second = connect(1), connect(2)
    user, _, _ = accept(registry, first, "alice")
    accept(registry, second, "alice")
    assert user.send_frame(b"frame") == 2
    assert frames_of(first) == frames_of(second) == [b"frame"]


def test_drop_closes_every_device_of_the_user(registry: UserRegistry, connect: Any) -> None:
    first, second = connect(1), connect(2)
    user, _, _ = accept(registry, first, "alice")
    accept(registry, second, "alice")
    user.drop("wse.bye")
    for conn in (first, second):
        assert isinstance(conn.endpoint, Device)
        assert conn.endpoint.closed == (1000, "wse.bye")


def test_client_is_the_deprecated_name_of_user() -> None:
    assert Client is User
