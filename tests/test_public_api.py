"""The package's public face: ``import wse_fast`` starts no network stack, every name of
``__all__`` is there when read, and the option objects refuse the 0.1 spellings they replace
with a message that names the new one."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import wse_fast
from wse_fast import ClusterOptions, Compression, Limits, Reconnect, ServerLimits, WseClient

#: Modules that start or belong to a network stack: none is imported by ``import wse_fast``.
HEAVY = ("picows", "uvloop", "nats", "wse_fast.server", "wse_fast.client", "wse_fast.transport")


def imported_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    found: list[str] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_importing_the_package_and_its_sansio_core_starts_no_network_stack() -> None:
    assert imported_after("import wse_fast") == []
    sansio = "import wse_fast.sansio.session, wse_fast.sansio.deflate, wse_fast.sansio.framing"
    assert imported_after(f"import wse_fast.sansio\n{sansio}") == []
    # the option objects and the errors are plain values: building them stays light too
    options = "from wse_fast import Limits, Reconnect, Compression, ClusterOptions, WseError"
    assert imported_after(options) == []


def test_a_name_is_loaded_when_first_read() -> None:
    found = imported_after("import wse_fast\nwse_fast.WseServer")
    assert "wse_fast.server" in found and "picows" not in found  # picows is the client's
    found = imported_after("import wse_fast\nwse_fast.WseClient")
    assert "wse_fast.client" in found and "picows" in found


def test_every_public_name_resolves_and_nothing_else_does() -> None:
    for name in wse_fast.__all__:
        assert getattr(wse_fast, name) is not None, name
    assert set(wse_fast._HOMES) == set(wse_fast.__all__)  # one table, no name left behind
    assert set(wse_fast.__all__) <= set(dir(wse_fast))
    with pytest.raises(AttributeError, match="Reconect"):
        wse_fast.Reconect  # noqa: B018


def test_the_old_reconnect_switch_is_refused_with_what_replaced_it() -> None:
    # 0.1's ``reconnect=False`` would otherwise be taken for "reconnect" (not None)
    with pytest.raises(TypeError, match=r"Reconnect\(\.\.\.\) or None"):
        WseClient("ws://127.0.0.1:1", reconnect=False)  # type: ignore[arg-type]
    assert WseClient("ws://127.0.0.1:1").reconnect == Reconnect()
    assert WseClient("ws://127.0.0.1:1", reconnect=None).reconnect is None


def test_option_objects_check_their_values_when_made() -> None:
    assert Reconnect(codes=[1006, 1006]).codes == frozenset({1006})
    assert Reconnect(delay=0.5, jitter=0.0, factor=2.0, max_delay=1.5).wait(5) == 1.5
    for bad in ({"delay": -1.0}, {"factor": 0.5}, {"max_delay": 0.0}):
        with pytest.raises(ValueError):
            Reconnect(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ClusterOptions(max_pending_users=0)
    with pytest.raises(ValueError):
        ClusterOptions(node_ttl=0)
    assert Limits(compression=Compression()).compression == Compression()


def test_read_buffer_size_warns_that_it_does_nothing_where_it_is_set() -> None:
    # it sized the read buffers of the server's picows sockets, which are gone
    with pytest.warns(DeprecationWarning, match="read_buffer_size has no effect") as record:
        Limits(read_buffer_size=4096)
    assert record[0].filename == __file__  # the line that set it, not the dataclass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Limits()
        ServerLimits(max_message_size=1024)


def test_the_server_side_user_is_user_and_client_a_deprecated_alias() -> None:
    from wse_fast.registry import User

    assert wse_fast.User is User and "Client" not in wse_fast.__all__
    with pytest.warns(DeprecationWarning, match=r"wse_fast\.Client is now wse_fast\.User"):
        assert wse_fast.Client is User
