"""Wire protocols: how ``[type, payload, stamp]`` becomes a WebSocket message.

A protocol object has ``name`` (the negotiated subprotocol), ``internal_types`` and
``pack``/``unpack``. The two built-in ones also build complete frames in one call through the
Rust codec; any other object, a subclass of a built-in one that overrides ``pack``, ``unpack``
or ``frame`` too (:func:`builtin_format`, the one rule), is used through ``pack``/``unpack``
alone. ``pack`` may answer ``str`` (a text message) or ``bytes`` (a binary one, or text when
the protocol declares ``binary = False``, as :class:`JsonProtocol` and its subclasses do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from . import codec
from .constants import OP_BINARY, OP_TEXT


@dataclass(frozen=True, slots=True)
class InternalTypes:
    hi: str = "~wse:hi"
    challenge: str = "~wse:challenge"
    welcome: str = "~wse:welcome"
    call: str = "~wse:call"
    response: str = "~wse:response"
    response_error: str = "~wse:response-err"

    @classmethod
    def of(cls, value: InternalTypes | Mapping[str, str] | Any) -> InternalTypes:
        """Reads the internal types of a custom protocol: this class, a mapping or an object."""
        if isinstance(value, InternalTypes):
            return value
        get = value.get if isinstance(value, Mapping) else lambda k, d: getattr(value, k, d)
        defaults = cls()
        return cls(**{f: get(f, getattr(defaults, f)) for f in cls.__dataclass_fields__})


Triple = tuple[str, Any, "str | None"]


@runtime_checkable
class WireProtocol(Protocol):
    name: str
    internal_types: Any

    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> bytes | str: ...

    def unpack(self, data: bytes | str) -> Triple: ...


class JsonProtocol:
    """The JavaScript package's default protocol: JSON text frames, ``wse-default-json``."""

    name = "wse-default-json"
    internal_types = InternalTypes()
    binary = False

    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> bytes:
        return codec.pack_json(type, payload, stamp)

    def unpack(self, data: bytes | str) -> Triple:
        return codec.unpack_json(data)

    def frame(self, type: str, payload: Any, stamp: str | None, mask: bool) -> bytes:
        return codec.pack_json_frame(type, payload, stamp, mask)


class MsgpackProtocol:
    """wse-fast's MessagePack protocol: binary frames, ``wse-msgpack``."""

    name = "wse-msgpack"
    internal_types = InternalTypes()
    binary = True

    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> bytes:
        return codec.pack_msgpack(type, payload, stamp)

    def unpack(self, data: bytes | str) -> Triple:
        if isinstance(data, str):
            raise codec.EnvelopeError("the MessagePack protocol takes binary messages")
        return codec.unpack_msgpack(data)

    def frame(self, type: str, payload: Any, stamp: str | None, mask: bool) -> bytes:
        return codec.pack_msgpack_frame(type, payload, stamp, mask)


def builtin_format(protocol: WireProtocol) -> bool | None:
    """The one rule for "is this a built-in protocol": True for MessagePack, False for JSON,
    None for any other protocol.

    Built-in means an instance of :class:`JsonProtocol` or :class:`MsgpackProtocol`, or of a
    subclass that overrides none of ``pack``, ``unpack`` and ``frame`` (it may change ``name``
    or ``internal_types``). A subclass that overrides any of them is NOT built-in: its own
    methods are called for every message, in both directions (``pack`` then framed, ``unpack``
    given ``bytes`` or ``str`` of its own), and the codec's one-call paths (frames, decoding
    a received message in place, answering calls) are not used for it.
    """
    cls = type(protocol)
    for builtin in (JsonProtocol, MsgpackProtocol):
        if (
            isinstance(protocol, builtin)
            and cls.pack is builtin.pack
            and cls.unpack is builtin.unpack
            and getattr(cls, "frame", None) is builtin.frame
        ):
            return builtin.binary
    return None


class FrameEncoder:
    """Builds complete frames with any protocol: the codec's one-call path when there is one."""

    __slots__ = ("_bytes_opcode", "_fast", "_pack", "mask", "protocol")

    def __init__(self, protocol: WireProtocol, mask: bool) -> None:
        self.protocol = protocol
        self.mask = mask
        # The codec's one-call frame only for a built-in protocol (see builtin_format)
        self._fast = protocol.frame if builtin_format(protocol) is not None else None  # type: ignore[attr-defined]
        self._pack = protocol.pack
        # What pack's bytes go out as: the kind a protocol declares (``binary``, as the
        # built-ins and their subclasses do: a JSON subclass with its own pack still sends
        # text), else binary
        declared = getattr(protocol, "binary", None)
        self._bytes_opcode = OP_TEXT if declared is False else OP_BINARY

    def __call__(self, type: str, payload: Any = None, stamp: str | None = None) -> bytes:
        if self._fast is not None:
            return self._fast(type, payload, stamp, self.mask)  # type: ignore[no-any-return]
        data = self._pack(type, payload, stamp)
        if isinstance(data, str):
            return codec.build_frame(OP_TEXT, data.encode(), mask=self.mask)
        return codec.build_frame(self._bytes_opcode, data, mask=self.mask)


class MessageDecoder:
    """Decodes a received message with any protocol: ``(binary, data) -> (type, payload,
    stamp)``.

    ``data`` may be a view into a transport's read buffer, valid only during the call. The
    built-in protocols copy what they keep; a custom protocol's ``unpack`` gets ``bytes`` or
    ``str`` (text, as in JavaScript) of its own, which it may keep (a zero-copy slice of a view
    would later read frames of other messages, or freed memory).
    """

    __slots__ = ("_text_input", "_unpack")

    def __init__(self, protocol: WireProtocol) -> None:
        self._unpack = protocol.unpack
        # a protocol that is not built-in (see builtin_format) gets data of its own
        self._text_input = builtin_format(protocol) is None

    def __call__(self, binary: bool, data: Any) -> Triple:
        if self._text_input:  # message-level transports give text as str already
            if binary:
                data = bytes(data)
            elif not isinstance(data, str):
                data = str(data, "utf-8")
        return self._unpack(data)
