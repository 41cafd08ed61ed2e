"""The Rust codec against its pure-Python reference, on random inputs."""

from __future__ import annotations

import ast
import gc
import inspect
import json
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wse_fast import _codec as rust
from wse_fast import _pure as pure
from wse_fast import codec

IMPLS = [pytest.param(rust, id="rust"), pytest.param(pure, id="pure")]
big = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.binary(min_size=4, max_size=4)
lengths_up_to_100k = st.one_of(st.integers(0, 64), st.integers(0, 4096), st.integers(0, 100_000))


def test_active_path_follows_the_environment() -> None:
    expected = "python" if os.environ.get("WSE_FAST_PURE") == "1" else "rust"
    assert codec.IMPLEMENTATION == expected


# ---- the codec's Python surface: codec.EXPORTS, everywhere -----------------------------------

STUB = ast.parse((Path(rust.__file__).parent / "_codec.pyi").read_text())


def stub_public_names() -> set[str]:
    names: set[str] = set()
    for node in STUB.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


def test_extension_twin_stub_and_codec_provide_exactly_the_exports() -> None:
    exports = set(codec.EXPORTS)
    assert len(exports) == len(codec.EXPORTS)
    # PyO3 lists in __all__ every name added to the module
    assert set(rust.__all__) == exports
    assert {name for name in vars(rust) if not name.startswith("_")} == exports
    own = {
        name
        for name, value in vars(pure).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == pure.__name__
    }
    # the twin raises the extension's class, so one except clause catches both
    assert own | {"EnvelopeError"} == exports and pure.EnvelopeError is rust.EnvelopeError
    assert stub_public_names() == exports
    active = pure if codec.IMPLEMENTATION == "python" else rust
    assert set(codec.__all__) == exports | {"IMPLEMENTATION"}
    assert all(getattr(codec, name) is getattr(active, name) for name in exports)


def stub_signature(node: ast.FunctionDef) -> list[tuple[str, object, str]]:
    """(name, default, annotation) of each parameter, as written in the stub."""
    args = node.args.args
    defaults = [inspect.Parameter.empty] * (len(args) - len(node.args.defaults))
    defaults += [ast.literal_eval(d) for d in node.args.defaults]
    return [
        (a.arg, d, ast.unparse(a.annotation) if a.annotation else "")
        for a, d in zip(args, defaults, strict=True)
    ]


def runtime_signature(function: Any, annotated: bool) -> list[tuple[str, object, str]]:
    return [
        (p.name, p.default, str(p.annotation) if annotated and p.name != "self" else "")
        for p in inspect.signature(function).parameters.values()
    ]


STUB_FUNCTIONS = {node.name: node for node in STUB.body if isinstance(node, ast.FunctionDef)}
STUB_METHODS = {
    f"{cls.name}.{node.name}": node
    for cls in STUB.body
    if isinstance(cls, ast.ClassDef)
    for node in cls.body
    if isinstance(node, ast.FunctionDef)
    and node.name != "__init__"
    # properties are attributes, not calls
    and not any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)
}


@pytest.mark.parametrize("name", sorted(STUB_FUNCTIONS | STUB_METHODS))
def test_every_function_takes_the_stubs_parameters(name: str) -> None:
    """Callers are type-checked against the stub on either path: the twin has the stub's
    parameters and annotations, the extension its parameter names and defaults."""
    expected = stub_signature({**STUB_FUNCTIONS, **STUB_METHODS}[name])
    in_pure: Any = pure
    in_rust: Any = rust
    for part in name.split("."):
        in_pure, in_rust = getattr(in_pure, part), getattr(in_rust, part)
    assert runtime_signature(in_pure, annotated=True) == expected
    assert runtime_signature(in_rust, annotated=False) == [(n, d, "") for n, d, _ in expected]


# ---- masking -------------------------------------------------------------------------------


@big
@given(n=lengths_up_to_100k, key=keys, offset=st.integers(0, 7), seed=st.integers(0, 255))
def test_mask_matches_reference(n: int, key: bytes, offset: int, seed: int) -> None:
    data = bytes((i * 31 + seed) & 0xFF for i in range(n))
    expected = pure.mask(data, key, offset)
    assert rust.mask(data, key, offset) == expected
    assert rust.mask(memoryview(data), key, offset) == expected
    # the definition itself, on a prefix
    assert expected[:50] == bytes(b ^ key[(i + offset) % 4] for i, b in enumerate(data[:50]))


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_is_an_involution_and_rejects_bad_keys(impl: Any) -> None:
    data, key = os.urandom(1000), os.urandom(4)
    assert impl.mask(impl.mask(data, key, 3), key, 3) == data
    with pytest.raises(ValueError):
        impl.mask(data, b"abc")


def frame_key(frame: bytes) -> bytes:
    head = codec.parse_frame_header(frame)
    assert head is not None and head[3] is not None
    return head[3]


MASKED_FRAME_BUILDERS = [
    pytest.param(lambda impl: impl.build_frame(0x1, b"x", mask=True), id="build_frame"),
    pytest.param(lambda impl: impl.pack_json_frame("t", mask=True), id="pack_json_frame"),
    pytest.param(lambda impl: impl.pack_msgpack_frame("t", mask=True), id="pack_msgpack_frame"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("build", MASKED_FRAME_BUILDERS)
def test_masking_keys_come_from_a_csprng(impl: Any, build: Callable[[Any], bytes]) -> None:
    keys_seen = {frame_key(build(impl)) for _ in range(2000)}
    # RFC 6455 §5.3: every frame's key is unpredictable. 2000 draws from 2**32 values: a
    # repeat is a 1-in-2000 event, a constant or cycling key is a bug.
    assert len(keys_seen) >= 1998


# ---- UTF-8 ---------------------------------------------------------------------------------

_bad_sequences = [
    b"\x80",  # lone continuation
    b"\xc0\xaf",  # overlong
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xff",
    b"\xe2\x82",  # truncated
]


@st.composite
def utf8ish(draw: st.DrawFn) -> bytes:
    text = draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(_bad_sequences)) + text[at:]
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


@settings(max_examples=400, deadline=None)
@given(data=utf8ish())
def test_validate_utf8_matches_reference(data: bytes) -> None:
    assert rust.validate_utf8(data) == pure.validate_utf8(data)


@settings(max_examples=150, deadline=None)
@given(data=utf8ish())
def test_incremental_validator_split_at_every_point(data: bytes) -> None:
    whole = pure.validate_utf8(data)
    for cut in range(len(data) + 1):
        for impl in (rust, pure):
            v = impl.Utf8Validator()
            ok = v.feed(data[:cut]) and v.feed(data[cut:])
            assert (ok and v.finish()) == whole, (impl.__name__, cut)


@settings(max_examples=150, deadline=None)
@given(data=utf8ish(), sizes=st.lists(st.integers(1, 5), min_size=1, max_size=60))
def test_incremental_validator_reports_invalid_as_soon_as_the_reference(
    data: bytes, sizes: list[int]
) -> None:
    r, p = rust.Utf8Validator(), pure.Utf8Validator()
    at = 0
    for size in sizes:
        piece = data[at : at + size]
        at += size
        assert r.feed(piece) == p.feed(piece)
    assert r.feed(data[at:]) == p.feed(data[at:])
    assert r.finish() == p.finish()


def test_validator_reset_and_large_input() -> None:
    v = rust.Utf8Validator()
    assert not v.feed(b"\xff")
    v.reset()
    text = ("ascii and ünïcödé 漢字 😀 " * 50_000).encode()
    assert v.feed(text) and v.finish()
    assert rust.validate_utf8(text)


# ---- frames --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    n=st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]),
    opcode=st.sampled_from([0, 1, 2, 8, 9, 10]),
    fin=st.booleans(),
    rsv=st.integers(0, 7),
    masked=st.booleans(),
)
def test_frames_round_trip_between_implementations(
    n: int, opcode: int, fin: bool, rsv: int, masked: bool
) -> None:
    payload = os.urandom(n)
    for builder, parser in ((rust, pure), (pure, rust)):
        frame = builder.build_frame(opcode, payload, fin=fin, mask=masked, rsv=rsv)
        head = parser.parse_frame_header(frame)
        assert head is not None
        got_fin, got_rsv, got_op, key, length, hlen = head
        assert (got_fin, got_rsv, got_op, length) == (fin, rsv, opcode, n)
        assert (key is not None) == masked
        body = frame[hlen:]
        assert (pure.mask(body, key) if key else body) == payload
        assert parser.parse_frame_header(frame[: hlen - 1]) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_frame_header_rejects_64_bit_length_with_top_bit(impl: Any) -> None:
    with pytest.raises(ValueError):
        impl.parse_frame_header(b"\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00")


# ---- envelopes -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
types = st.text(min_size=1)
stamps = st.none() | st.text(alphabet="abcXYZ019", min_size=10, max_size=10)


@settings(max_examples=300, deadline=None)
@given(kind=types, payload=json_values, stamp=stamps)
def test_json_envelope_round_trips_across_implementations(
    kind: str, payload: Any, stamp: str | None
) -> None:
    fast, ref = rust.pack_json(kind, payload, stamp), pure.pack_json(kind, payload, stamp)
    # both are what JSON.parse reads back as the same three values
    assert json.loads(fast) == json.loads(ref) == [kind, payload, stamp]
    for packed in (fast, ref):
        for unpack in (rust.unpack_json, pure.unpack_json):
            assert unpack(packed) == (kind, payload, stamp)
    frame = rust.pack_json_frame(kind, payload, stamp)
    head = rust.parse_frame_header(frame)
    assert head is not None and head[2] == 1 and head[3] is None
    assert frame[head[5] :] == fast


@settings(max_examples=200, deadline=None)
@given(kind=types, payload=json_values, stamp=stamps)
def test_msgpack_envelope_round_trips_across_implementations(
    kind: str, payload: Any, stamp: str | None
) -> None:
    fast, ref = rust.pack_msgpack(kind, payload, stamp), pure.pack_msgpack(kind, payload, stamp)
    assert msgpack.unpackb(fast) == msgpack.unpackb(ref) == [kind, payload, stamp]
    for packed in (fast, ref):
        for unpack in (rust.unpack_msgpack, pure.unpack_msgpack):
            assert unpack(memoryview(packed)) == (kind, payload, stamp)
    frame = rust.pack_msgpack_frame(kind, payload, stamp, mask=True)
    head = rust.parse_frame_header(frame)
    assert head is not None and head[2] == 2 and head[3] is not None
    assert rust.mask(frame[head[5] :], head[3]) == fast


@pytest.mark.parametrize("impl", IMPLS)
def test_json_output_is_compact_utf8_with_null(impl: Any) -> None:
    assert (
        impl.pack_json("t", {"a": [1, None], "é": "ü"})
        == '["t",{"a":[1,null],"é":"ü"},null]'.encode()
    )
    assert (
        impl.pack_json("~wse:response", None, "STAMP00001")
        == b'["~wse:response",null,"STAMP00001"]'
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"this is not json", "invalid JSON"),
        (b'{"a":1}', "must be an array"),
        (b"[]", "1 to 3 elements"),
        (b'["a",1,null,4]', "1 to 3 elements"),
        (b"[null,1]", "must be a string"),
        (b"[1]", "must be a string"),
        (b'["",1]', "must not be empty"),
        (b'["a",1,7]', "stamp"),
        (b'["a",\xff]', "invalid JSON"),
        (b'["a",NaN]', "invalid JSON"),
    ],
)
def test_bad_json_envelopes_raise_clear_errors(impl: Any, data: bytes, why: str) -> None:
    with pytest.raises(impl.EnvelopeError, match=why):
        impl.unpack_json(data)


@pytest.mark.parametrize("impl", IMPLS)
def test_trailing_elements_default_to_none(impl: Any) -> None:
    assert impl.unpack_json(b'["x"]') == ("x", None, None)
    assert impl.unpack_json(b'["hello",{"x":1}]') == ("hello", {"x": 1}, None)
    assert impl.unpack_msgpack(msgpack.packb(["x"])) == ("x", None, None)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_msgpack_envelopes_raise_clear_errors(impl: Any) -> None:
    for data in (b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([1, 2]), b"\x93\xa1"):
        with pytest.raises(impl.EnvelopeError):
            impl.unpack_msgpack(data)


@pytest.mark.parametrize("impl", IMPLS)
def test_unserialisable_payloads_and_bad_types_raise_type_error(impl: Any) -> None:
    with pytest.raises(TypeError):
        impl.pack_json("t", object())
    with pytest.raises(TypeError):
        impl.pack_json(5, None)
    with pytest.raises(TypeError):
        impl.pack_msgpack("t", None, 5)


class DictSub(dict):  # type: ignore[type-arg]
    pass


def has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(has_float(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_float(v) for v in value)
    return False


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "payload",
    [
        DictSub(a=1),  # a subclass: the Rust path hands it to orjson
        (1, "two", [3.5, None, True, False]),  # tuples are arrays
        {"ctl": '\x00\x1f\n\t"\\/é😀'},  # escapes, and non-ASCII as is
        [2**63 - 1, -(2**63), 2**64 - 1, 0, -1],  # the 64-bit range, both signs
        [1e16, 1e-7, -0.0, 0.1, 123456.789, 5e-324],
        [[[[[[[[[[1]]]]]]]]]],
        {"": {"": []}},
    ],
)
def test_json_payload_edge_cases_agree(payload: Any) -> None:
    fast, ref = rust.pack_json("t", payload), pure.pack_json("t", payload)
    assert json.loads(fast) == json.loads(ref) == orjson.loads(orjson.dumps(["t", payload, None]))
    if not has_float(payload):  # floats may be spelled 1e16 or 1e+16
        assert fast == orjson.dumps(["t", payload, None])


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_floats_become_null_like_javascript(impl: Any) -> None:
    assert (
        impl.pack_json("t", [float("nan"), float("inf"), -float("inf")])
        == b'["t",[null,null,null],null]'
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "payload",
    [{1: "int key"}, 2**64, -(2**63) - 1, {"s": "\ud800"}, object(), nested(300)],
    ids=["int-key", "too-big", "too-small", "surrogate", "object", "too-deep"],
)
def test_what_json_cannot_carry_raises_type_error(impl: Any, payload: Any) -> None:
    with pytest.raises(TypeError):
        impl.pack_json("t", payload)


# ---- CallAnswerer: a call decoded, dispatched and answered in one call ------------------------


class Awaitable:
    def __await__(self) -> Any:
        yield


def answerer_procedures(origins: list[Any]) -> dict[str, Callable[..., Any]]:
    def add(origin: Any, p: Any) -> Any:
        origins.append(origin)
        return p["a"] + p["b"]

    def fail(origin: Any, p: Any) -> Any:
        raise KeyError("missing")

    def interrupt(origin: Any, p: Any) -> Any:
        raise KeyboardInterrupt

    return {
        "add": add,
        "fail": fail,
        "interrupt": interrupt,
        "later": lambda origin, p: Awaitable(),
        "bytes": lambda origin, p: b"raw",  # not plain data: the general path refuses it
        "odd-int": lambda origin, p: 2**70,  # plain class, but past what JSON here encodes
    }


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("binary", [False, True])
def test_call_answerer_answers_a_call_in_one_call(impl: Any, binary: bool) -> None:
    origins: list[Any] = []
    answerer = impl.CallAnswerer(
        answerer_procedures(origins), "~wse:response", "~wse:response-err", binary
    )
    pack = impl.pack_msgpack if binary else impl.pack_json
    frame = impl.pack_msgpack_frame if binary else impl.pack_json_frame
    origin = object()
    assert answerer.answer(pack("add", {"a": 1, "b": 2}, "s1"), origin) == (
        "add",
        frame("~wse:response", 3, "s1"),
    )
    assert origins == [origin]  # the procedure got the origin, then the payload


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("binary", [False, True])
def test_call_answerer_leaves_what_it_does_not_answer_decoded(impl: Any, binary: bool) -> None:
    origins: list[Any] = []
    answerer = impl.CallAnswerer(
        answerer_procedures(origins), "~wse:response", "~wse:response-err", binary
    )
    pack = impl.pack_msgpack if binary else impl.pack_json
    # a message, answers to our own calls, a name not registered: decoded, nothing called
    assert answerer.answer(pack("add", {"a": 1}), None) == ("add", {"a": 1}, None)
    assert answerer.answer(pack("~wse:response", 5, "s"), None) == ("~wse:response", 5, "s")
    assert answerer.answer(pack("~wse:response-err", {}, "s"), None) == (
        "~wse:response-err",
        {},
        "s",
    )
    assert answerer.answer(pack("nope", [1], "s"), None) == ("nope", [1], "s")
    assert origins == []
    # called, its answer left to the caller: a failure, an awaitable, what it cannot encode
    name, payload, stamp, result, exc = answerer.answer(pack("fail", 1, "s2"), None)
    assert (name, payload, stamp, result, type(exc)) == ("fail", 1, "s2", None, KeyError)
    name, payload, stamp, result = answerer.answer(pack("later", None, "s3"), None)
    assert (name, payload, stamp, type(result)) == ("later", None, "s3", Awaitable)
    assert answerer.answer(pack("bytes", None, "s4"), None) == ("bytes", None, "s4", b"raw")
    if not binary:
        assert answerer.answer(pack("odd-int", None, "s5"), None) == ("odd-int", None, "s5", 2**70)
    # what is not an Exception goes on up
    with pytest.raises(KeyboardInterrupt):
        answerer.answer(pack("interrupt", None, "s6"), None)
    with pytest.raises(impl.EnvelopeError):
        answerer.answer(b"[1, 2]" if not binary else msgpack.packb([1, 2]), None)


@pytest.mark.parametrize("impl", IMPLS)
def test_call_answerer_reads_the_live_registry_and_text(impl: Any) -> None:
    procedures: dict[str, Callable[..., Any]] = {}
    answerer = impl.CallAnswerer(procedures, "~wse:response", "~wse:response-err")
    assert answerer.answer('["echo", "é", "s"]', None) == ("echo", "é", "s")
    procedures["echo"] = lambda origin, p: p
    assert answerer.answer('["echo", "é", "s"]', None) == (
        "echo",
        impl.pack_json_frame("~wse:response", "é", "s"),
    )


class _Server:
    answerer: Any


def _server_in_a_cycle(impl: Any) -> weakref.ref[_Server]:
    """A procedure that refers to its server, which holds the answerer: a reference cycle
    through the answerer. Returns a weak reference to the server, which nothing else holds."""
    server = _Server()
    procedures: dict[str, Callable[..., Any]] = {"me": lambda origin, p: server}
    server.answerer = impl.CallAnswerer(procedures, "~wse:response", "~wse:response-err")
    return weakref.ref(server)


@pytest.mark.parametrize("impl", IMPLS)
def test_call_answerer_lets_the_cycle_collector_free_its_server(impl: Any) -> None:
    gone = _server_in_a_cycle(impl)
    gc.collect()
    assert gone() is None
