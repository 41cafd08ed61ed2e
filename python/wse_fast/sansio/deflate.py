"""permessage-deflate (RFC 7692): the handshake's offer and answer, and messages compressed
and inflated. No sockets: transports hand it header values and payloads.

Without context takeover (the default here) every message is compressed on its own, so the
compressed bytes of one message are valid on every connection whose peer allows the window
they were made with: a broadcast is compressed once per window size in use (in practice once)
and the same frame goes to all of them. With context takeover a connection keeps its own
compressor and inflater, each bounded by the window bits agreed (memory per connection:
about ``2 ** (bits + 2) + 2 ** (mem_level + 9)`` bytes to compress and ``2 ** bits`` + 7 KiB
to inflate, zlib's own figures).

Inflation is bounded: output stops one byte past what the caller allows, whatever the ratio
(a 1 KiB message of zeros inflating to gigabytes is refused after ``limit + 1`` bytes).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Final

from .. import codec
from ..constants import OP_BINARY, OP_TEXT

#: The extension's name in Sec-WebSocket-Extensions.
EXTENSION: Final = "permessage-deflate"
#: ``rsv`` of a compressed message's first frame: RSV1 (RFC 7692 §6), as the codec takes it.
RSV_COMPRESSED: Final = 4
#: What a sync flush ends with and RFC 7692 §7.2.1 strips from every compressed message;
#: the receiver appends it again before inflating (§7.2.2).
SYNC_TAIL: Final = b"\x00\x00\xff\xff"
#: The window bits a peer may ask for (§7.1.2). zlib's raw deflate cannot compress with 8
#: (it silently uses 9, zlib issue 171): a peer that demands 8 is answered, and sent plain.
MIN_WINDOW_BITS: Final = 8
MAX_WINDOW_BITS: Final = 15
_NO_COMPRESSION_BITS: Final = 8
#: zlib's default memLevel, for the compressors shared by every connection without takeover.
_SHARED_MEM_LEVEL: Final = 8
#: How many distinct offers a server remembers its answer to; strangers choose offers, so
#: the cache is bounded (browsers and libraries send a handful of distinct ones).
OFFER_CACHE_SIZE: Final = 64
#: Longer Sec-WebSocket-Extensions values (all lines together) are declined without being
#: parsed: real offers are under 200 bytes (a browser's is 58), and a stranger's header must
#: not cost the server milliseconds.
MAX_OFFER_LENGTH: Final = 1024

_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_PARAMETERS: Final = frozenset(
    {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
)

Parameters = list[tuple[str, str | None]]


class MessageTooBig(ValueError):
    """An inflated message would pass the limit (close 1009)."""


class CorruptMessage(ValueError):
    """A compressed message is not valid DEFLATE data (close 1007)."""


def parse_extensions(values: list[str]) -> list[tuple[str, Parameters]]:
    """Sec-WebSocket-Extensions header values (RFC 6455 §9.1) as ``[(name, [(param, value
    or None)])]``, in order, across lines; quoted values unquoted. Raises ValueError for a
    value that does not follow the grammar."""
    extensions: list[tuple[str, Parameters]] = []
    for value in values:
        for element in _split_outside_quotes(value, ","):
            if not element.strip():
                continue  # RFC 7230 §7: empty list elements are ignored
            parts = _split_outside_quotes(element, ";")
            name = parts[0].strip()
            if not _is_token(name):
                raise ValueError(f"bad extension name {name!r}")
            params: Parameters = []
            for part in parts[1:]:
                key, eq, raw = part.partition("=")
                key = key.strip()
                if not _is_token(key):
                    raise ValueError(f"bad extension parameter {key!r}")
                if not eq:
                    params.append((key, None))
                    continue
                raw = raw.strip()
                if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                    raw = raw[1:-1].replace("\\", "")  # quoted-pair: the escaped character
                if not _is_token(raw):  # §9.1: a quoted value must still be a token
                    raise ValueError(f"bad value for {key!r}")
                params.append((key, raw))
            extensions.append((name.lower(), params))
    return extensions


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for at, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:at])
            start = at + 1
    if quoted:
        raise ValueError("unterminated quoted string")
    parts.append(text[start:])
    return parts


def _is_token(text: str) -> bool:
    return bool(text) and all(char in _TOKEN_CHARS for char in text)


@dataclass(frozen=True, slots=True)
class Agreement:
    """What one connection agreed: the parameters of the server's answer (RFC 7692 §7.1).

    A window of None was not named in the answer: 15 bits.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None

    def header(self) -> str:
        """The answer, as the server's Sec-WebSocket-Extensions value."""
        parts = [EXTENSION]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits is not None:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits is not None:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)

    def sender(self, client_side: bool) -> tuple[bool, int]:
        """``(takeover, window_bits)`` of what this side sends."""
        if client_side:
            bits, fresh = self.client_max_window_bits, self.client_no_context_takeover
        else:
            bits, fresh = self.server_max_window_bits, self.server_no_context_takeover
        return not fresh, MAX_WINDOW_BITS if bits is None else bits

    def receiver(self, client_side: bool) -> tuple[bool, int]:
        """``(takeover, window_bits)`` of what this side receives."""
        return self.sender(not client_side)


def _offer_parameters(params: Parameters) -> dict[str, str | None] | None:
    """An offer's (or answer's) parameters by name, or None when one is unknown, repeated or
    has a value it may not have (§7.1: such an offer is declined)."""
    found: dict[str, str | None] = {}
    for key, value in params:
        if key not in _PARAMETERS or key in found:
            return None
        if key.endswith("_no_context_takeover"):
            if value is not None:
                return None
        elif value is not None:
            # at most two digits: int() of thousands of them raises (and costs time)
            if (
                not value.isdigit()
                or len(value) > 2
                or not MIN_WINDOW_BITS <= int(value) <= MAX_WINDOW_BITS
            ):
                return None
        elif key == "server_max_window_bits":  # §7.1.2.1: it must have a value
            return None
        found[key] = value
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Compression:
    """permessage-deflate as one server or client uses it
    (``Limits(compression=Compression(level=1))``; ``compression=None``: off).

    Without takeover every message is compressed on its own: a broadcast is compressed once
    and the same frame goes to every connection that agreed, and a connection keeps no zlib
    state between messages.

    - ``level``: zlib's compression level, 1 (fastest) to 9 (smallest);
    - ``threshold``: messages with a shorter payload are sent plain (RSV1 clear is always
      allowed, §6);
    - ``takeover``: keep a compression context per connection, each way, where the peer
      allows it (smaller messages when they repeat one another; every message, a broadcast
      too, is then compressed per connection);
    - ``window_bits`` / ``mem_level``: with ``takeover``, what bounds each connection's
      contexts, on both sides: about ``2 ** (bits + 2) + 2 ** (mem_level + 9)`` bytes to
      compress and ``2 ** bits`` + 7 KiB to inflate (32 KiB and 11 KiB at 12 and 5); a peer
      whose window cannot be limited is asked not to take over. The shared compressors
      (without takeover), one per process and window, take zlib's default memLevel 8.
    """

    level: int = 6
    mem_level: int = 5
    threshold: int = 128
    takeover: bool = False
    window_bits: int = 12

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 9 or not 1 <= self.mem_level <= 9:
            raise ValueError("compression level and mem_level must be 1..9")
        if not 9 <= self.window_bits <= MAX_WINDOW_BITS:
            raise ValueError("compression window_bits must be 9..15")
        if self.threshold < 0:
            raise ValueError("compression threshold must not be negative")


class PerMessageDeflate:
    """The extension as one server or client has it: negotiation, and the compressors and
    inflaters of its connections (compressors without takeover shared by all of them)."""

    __slots__ = ("_answers", "_shared", "settings")

    def __init__(self, settings: Compression) -> None:
        self.settings = settings
        self._answers: dict[tuple[str, ...], Agreement | None] = {}
        self._shared: dict[int, Compressor] = {}

    # ---- server side -----------------------------------------------------------------------

    def negotiate(self, values: list[str]) -> Agreement | None:
        """The server's answer to a client's Sec-WebSocket-Extensions values: the first
        permessage-deflate offer it can honour (§5.1), or None to decline them all."""
        key = tuple(values)
        if key in self._answers:
            return self._answers[key]
        if sum(len(value) for value in values) > MAX_OFFER_LENGTH:
            return None  # declined unread: parsing is per character, offers are short
        try:
            extensions = parse_extensions(values)
        except ValueError:
            extensions = []  # a malformed header: compression declined, the upgrade goes on
        answer = None
        for name, params in extensions:
            if name == EXTENSION:
                answer = self._answer(params)
                if answer is not None:
                    break
        if len(self._answers) < OFFER_CACHE_SIZE:
            self._answers[key] = answer
        return answer

    def _answer(self, params: Parameters) -> Agreement | None:
        offer = _offer_parameters(params)
        if offer is None:
            return None
        takeover, limit = self.settings.takeover, self.settings.window_bits
        # What the server sends: it may always refrain from takeover (§7.1.1.1), and must
        # keep to the client's window when one is named (§7.1.2.1).
        server_bits = offer.get("server_max_window_bits")
        server_fresh = not takeover or "server_no_context_takeover" in offer
        server_window = int(server_bits) if server_bits is not None else None
        if takeover and not server_fresh:
            server_window = min(server_window or MAX_WINDOW_BITS, limit)
        # What the client sends: without takeover it is asked to refrain (§7.1.1.2), so
        # that its messages are inflated with a context made for each one. With takeover
        # its window must be limitable (client_max_window_bits offered, §7.1.2.2) to bound
        # this side's inflater; otherwise it is asked to refrain as well.
        client_fresh = "client_no_context_takeover" in offer
        client_window: int | None = None
        if not takeover or "client_max_window_bits" not in offer:
            client_fresh = True
        elif not client_fresh:
            offered = offer["client_max_window_bits"]
            client_window = min(int(offered) if offered is not None else MAX_WINDOW_BITS, limit)
        return Agreement(
            server_no_context_takeover=server_fresh,
            client_no_context_takeover=client_fresh,
            server_max_window_bits=server_window,
            client_max_window_bits=client_window,
        )

    # ---- client side -----------------------------------------------------------------------

    def offer(self) -> str:
        """The client's Sec-WebSocket-Extensions value."""
        if self.settings.takeover:
            bits = self.settings.window_bits
            return f"{EXTENSION}; server_max_window_bits={bits}; client_max_window_bits={bits}"
        return f"{EXTENSION}; server_no_context_takeover; client_no_context_takeover"

    def accept(self, values: list[str]) -> Agreement | None:
        """The server's answer to :meth:`offer` (None: declined). Raises ValueError for an
        answer the offer did not allow (the client must fail the connection, §5.1)."""
        extensions = parse_extensions(values)
        if not extensions:
            return None
        if len(extensions) != 1 or extensions[0][0] != EXTENSION:
            raise ValueError(f"extensions not offered: {values!r}")
        answer = _offer_parameters(extensions[0][1])
        if answer is None:
            raise ValueError(f"bad permessage-deflate answer: {values!r}")
        server_bits, client_bits = (
            answer.get("server_max_window_bits"),
            answer.get("client_max_window_bits"),
        )
        if self.settings.takeover:
            limit = self.settings.window_bits
            if server_bits is None or int(server_bits) > limit:
                raise ValueError("server_max_window_bits missing or larger than offered")
        elif "server_no_context_takeover" not in answer:
            raise ValueError("server_no_context_takeover offered but not answered")
        if "client_max_window_bits" in answer:
            if not self.settings.takeover:
                raise ValueError("client_max_window_bits answered but not offered")
            if client_bits is None:
                raise ValueError("client_max_window_bits answered without a value")
            client_bits = str(min(int(client_bits), self.settings.window_bits))
        return Agreement(
            server_no_context_takeover="server_no_context_takeover" in answer,
            # not offered: this client takes no context over, whatever the answer
            client_no_context_takeover=not self.settings.takeover
            or "client_no_context_takeover" in answer,
            server_max_window_bits=int(server_bits) if server_bits is not None else None,
            client_max_window_bits=int(client_bits) if client_bits is not None else None,
        )

    # ---- either side -----------------------------------------------------------------------

    def compressor(self, agreement: Agreement, client_side: bool) -> Compressor | None:
        """What compresses this side's messages on a connection with ``agreement``: without
        takeover the one shared by every connection with the same window; None when the
        peer's window is too small for zlib (the connection's messages then go plain)."""
        takeover, bits = agreement.sender(client_side)
        if bits == _NO_COMPRESSION_BITS:
            return None
        if takeover:
            return Compressor(self.settings, bits, takeover=True)
        shared = self._shared.get(bits)
        if shared is None:
            shared = self._shared[bits] = Compressor(self.settings, bits, takeover=False)
        return shared

    def inflater(self, agreement: Agreement, client_side: bool) -> Inflater:
        """What inflates the peer's messages on a connection with ``agreement``."""
        takeover, bits = agreement.receiver(client_side)
        # Without takeover a full window inflates any smaller one, and the inflater is
        # made per message anyway; with it, the window agreed bounds what is kept.
        return Inflater(bits if takeover else MAX_WINDOW_BITS, takeover)


class Compressor:
    """Compresses whole messages (§7.2.1). Without takeover each message is compressed alone
    (a full flush resets the history), so one instance serves any number of connections;
    with it, the instance is one connection's and later messages refer to earlier ones.

    ``shared``: made without takeover, for any number of connections; ``messages`` counts
    the messages compressed (a broadcast counts once). zlib's state (tens of KiB with
    takeover) is made at the first message compressed, so that a stranger, which is sent
    little before it is accepted, costs none.
    """

    __slots__ = (
        "_deflate",
        "_flush",
        "_level",
        "_mem_level",
        "messages",
        "shared",
        "threshold",
        "window_bits",
    )

    def __init__(self, settings: Compression, window_bits: int, *, takeover: bool) -> None:
        self.window_bits = window_bits
        self.shared = not takeover
        self.threshold = settings.threshold
        self._level = settings.level
        self._mem_level = settings.mem_level if takeover else _SHARED_MEM_LEVEL
        self._deflate: Any = None  # zlib's compressor, made when first needed
        self._flush = zlib.Z_SYNC_FLUSH if takeover else zlib.Z_FULL_FLUSH
        self.messages = 0

    def compress(self, payload: bytes | memoryview) -> memoryview:
        """A message's payload compressed, without the 4-byte tail (§7.2.1)."""
        deflate = self._deflate
        if deflate is None:
            deflate = self._deflate = zlib.compressobj(
                self._level, zlib.DEFLATED, -self.window_bits, self._mem_level
            )
        data = deflate.compress(payload) + deflate.flush(self._flush)
        self.messages += 1
        # a sync or full flush always ends with an empty stored block: 00 00 ff ff
        return memoryview(data)[:-4]

    def compress_frame(self, frame: bytes) -> bytes:
        """A complete, unmasked, unfragmented frame (as the codec builds for a server) with
        its payload compressed and RSV1 set; ``frame`` itself when it is not a data frame or
        its payload is shorter than the threshold."""
        first, length = frame[0], frame[1] & 0x7F
        opcode = first & 0x0F
        if opcode != OP_TEXT and opcode != OP_BINARY:
            return frame
        start = 2 if length < 126 else 4 if length == 126 else 10
        if len(frame) - start < self.threshold:
            return frame
        return codec.build_frame(
            opcode, self.compress(memoryview(frame)[start:]), rsv=RSV_COMPRESSED
        )

    def message_frame(self, opcode: int, payload: bytes | memoryview, mask: bool) -> bytes:
        """One data frame of a whole message: compressed (RSV1) unless its payload is shorter
        than the threshold; masked for a client (RFC 6455 §5.3)."""
        if len(payload) < self.threshold:
            return codec.build_frame(opcode, payload, mask=mask)
        return codec.build_frame(opcode, self.compress(payload), mask=mask, rsv=RSV_COMPRESSED)


class Inflater:
    """Inflates the compressed messages of one connection, bounded.

    A message arrives as one or more :meth:`feed` calls (its frames' payloads) and ends with
    :meth:`end`; each returns what it inflated, at most ``room`` bytes, and raises
    :class:`MessageTooBig` past that. Without takeover a zlib context lives only while a
    message is being inflated.
    """

    __slots__ = ("_inflate", "takeover", "window_bits")

    def __init__(self, window_bits: int, takeover: bool) -> None:
        self.window_bits = window_bits
        self.takeover = takeover
        self._inflate: zlib._Decompress | None = None

    def feed(self, data: bytes | memoryview, room: int) -> bytes:
        inflate = self._inflate
        if inflate is None:
            inflate = self._inflate = zlib.decompressobj(-self.window_bits)
        try:
            # room + 1: asking for one byte more tells "exactly full" from "too big"
            # (and max_length 0 would mean no limit)
            out = inflate.decompress(data, room + 1)
        except zlib.error as exc:
            self._inflate = None
            raise CorruptMessage(str(exc)) from None
        if len(out) > room:
            self._inflate = None
            raise MessageTooBig(f"inflated message over {room} bytes")
        return out

    def end(self, room: int) -> bytes:
        """The message's last frame has been fed: what the tail adds (§7.2.2)."""
        out = self.feed(SYNC_TAIL, room)
        inflate = self._inflate
        if not self.takeover or (inflate is not None and inflate.eof):
            # a BFINAL block ends the DEFLATE stream: the next message starts a new one
            self._inflate = None
        return out

    def reset(self) -> None:
        """Forgets a message that was cut short (the connection is failing)."""
        self._inflate = None
