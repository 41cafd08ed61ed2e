"""``wse-fast call``, ``listen`` and ``send``: a :class:`~wse_fast.WseClient` on the command
line (JSON in, JSON out).

Secrets stay out of argv, which every local user can read (ps, /proc/PID/cmdline): the
identity may come from the environment (:data:`IDENTITY_ENV`) or a file as well as from
--identity. What the server sends is made safe for a terminal before it is printed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import ssl as ssl_module
import sys
import unicodedata
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

import click

from ..errors import WseError
from .common import STOP_SIGNALS

if TYPE_CHECKING:
    from ..client import WseClient

#: The client commands' ``--identity`` from the environment (a token kept out of argv).
IDENTITY_ENV = "WSE_FAST_IDENTITY"


def ws_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A ws:// or wss:// URL with a host (and a valid port, if it names one)."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # a port that is not a number in 0..65535 raises ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a valid URL") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not a ws:// or wss:// URL")
    return value


def json_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """The value of a JSON text (None when the argument is left out)."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{value!r} is not JSON ({exc.msg} at character {exc.pos}; "
            "a string is written in double quotes: '\"text\"')"
        ) from None


def json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """The value of a JSON text that must be an object (None when the option is left out)."""
    result = json_value(ctx, param, value)
    if value is not None and not isinstance(result, dict):
        raise click.BadParameter(f"{value!r} is not a JSON object")
    return result


FC = TypeVar("FC", bound=Callable[..., Any])


def identity_from(ctx: click.Context, identity: str | None, identity_file: IO[str] | None) -> str:
    """The identity of ``--identity`` (or its environment variable) or ``--identity-file``
    (its first line, without the line end): exactly one of the options is given, and a file
    wins over the environment variable."""
    source = ctx.get_parameter_source("identity")
    from_env = source is click.core.ParameterSource.ENVIRONMENT
    if identity_file is None:
        if identity is None:
            raise click.UsageError(
                f"an identity is needed: --identity ID, --identity-file PATH or {IDENTITY_ENV}"
            )
        return identity
    if identity is not None and not from_env:
        raise click.UsageError("--identity and --identity-file exclude each other")
    text = identity_file.readline().removesuffix("\n").removesuffix("\r")
    if not text:
        raise click.BadParameter(
            f"{identity_file.name} holds no identity", param_hint="'--identity-file'"
        )
    return text


def client_options(command: FC) -> FC:
    """The options every client command takes: how to connect and who to be."""

    @functools.wraps(command)
    def with_identity(*args: Any, identity_file: IO[str] | None, **kwargs: Any) -> Any:
        kwargs["identity"] = identity_from(
            click.get_current_context(), kwargs.get("identity"), identity_file
        )
        return command(*args, **kwargs)

    options = (
        click.option(
            "--identity",
            metavar="ID",
            envvar=IDENTITY_ENV,
            show_envvar=True,
            help="The identity to connect with (a string: what the server's identify gets). "
            "A secret (a token) is better given in the environment variable or a file than "
            "in argv, which other local users can read.",
        ),
        click.option(
            "--identity-file",
            type=click.File("r", encoding="utf-8"),
            metavar="PATH",
            help="Read the identity from the first line of this file ('-': standard input).",
        ),
        click.option(
            "--meta",
            callback=json_object,
            metavar="JSON",
            help="Connection meta sent with the identity: a JSON object.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=20.0,
            show_default=True,
            help="Seconds for connecting and authenticating, and for each call's answer.",
        ),
        click.option(
            "--cafile",
            type=click.Path(exists=True, dir_okay=False),
            help="With wss://: trust the certificates in this PEM file (a self-signed "
            "server's, say) instead of the system's.",
        ),
    )
    wrapped = cast(FC, with_identity)
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped


def client_ssl_context(url: str, cafile: str | None) -> ssl_module.SSLContext | None:
    """The TLS context for ``url``: the system's trust store, or ``cafile``; None for ws://."""
    if urlsplit(url).scheme != "wss":
        if cafile is not None:
            raise click.UsageError("--cafile is for wss:// URLs")
        return None
    try:
        return ssl_module.create_default_context(cafile=cafile)
    except ssl_module.SSLError as exc:
        raise click.BadParameter(
            f"no certificates could be read from {cafile}: {exc}", param_hint="'--cafile'"
        ) from None


def printable(text: str) -> str:
    """Text from the other side, safe for a terminal: control and format characters (escape
    sequences, C1 controls, bidi overrides) as escapes, the rest as it is."""
    return "".join(
        c if c.isprintable() and unicodedata.category(c) != "Cf" else ascii(c)[1:-1] for c in text
    )


def report(err: WseError) -> None:
    """A :class:`WseError` on stderr: its code, then its details as JSON on the same line
    (when it has any), and its message on the next; what the server sent, made printable."""
    line = printable(str(err.code))
    if err.details:
        line += " " + json.dumps(err.details, ensure_ascii=True, default=repr)
    click.echo(line, err=True)
    if err.message:
        click.echo(printable(err.message), err=True)


#: Candidates for escaping in a JSON text: everything but printable ASCII, which json.dumps
#: writes only for structure and for string contents that are safe as they are.
NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def as_json(value: Any) -> str:
    """``value`` as one line of JSON for a terminal: the text as it is, but for the
    characters :func:`printable` escapes, written as JSON escapes (``\\u009b``), so the line
    is still the same JSON value. json.dumps escapes C0 controls itself, not DEL, C1
    controls (U+009B is a CSI, which starts an escape sequence), format characters (bidi
    overrides and isolates, U+202A..U+202E, U+2066..U+2069), line separators or lone
    surrogates (which stdout could not even encode)."""
    return NOT_PRINTABLE_ASCII.sub(json_escape, json.dumps(value, ensure_ascii=False))


def json_escape(found: re.Match[str]) -> str:
    """A character of a JSON text as it is when :func:`printable` keeps it, else as a JSON
    escape (strings are the only place json.dumps writes such characters)."""
    char = found[0]
    if char.isprintable() and unicodedata.category(char) != "Cf":
        return char
    code = ord(char)
    if code > 0xFFFF:  # a JSON escape is UTF-16: a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


async def call_once(
    client: WseClient, identity: str, meta: dict[str, Any] | None, rp: str, payload: Any
) -> int:
    try:
        await client.connect(identity, meta)
        result = await client.call(rp, payload)
    except WseError as err:
        report(err)
        return 1
    finally:
        await client.close()
    click.echo(as_json(result))
    return 0


async def send_once(
    client: WseClient, identity: str, meta: dict[str, Any] | None, type: str, payload: Any
) -> int:
    try:
        await client.connect(identity, meta)
        # queued for this loop turn's write; close() then sends its Close frame after it, so
        # the server reads the message before it learns that the connection ends
        client.send(type, payload)
    except WseError as err:
        report(err)
        return 1
    finally:
        await client.close()
    return 0


class Listening:
    """What ``listen`` does with each message and event; ``outcome`` is its exit status."""

    def __init__(self, client: WseClient, count: int | None) -> None:
        self.client = client
        self.count = count
        self.received = 0
        self.ready = False
        self.close: tuple[int, str] | None = None  # the connection's close, once it came
        self.outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        client.when.ignored(self.on_message)  # no channel handlers: every type comes here
        client.when.ready(self.on_ready)
        client.when.closed(self.on_closed)

    def on_message(self, type: str, payload: Any) -> None:
        if self.outcome.done():
            return
        try:
            sys.stdout.write(as_json([type, payload]) + "\n")
            sys.stdout.flush()  # a line as it comes, also into a pipe
        except BrokenPipeError:
            # the reader is gone (| head): stop as after --count, and let nothing more
            # (Python's own flush at exit included) write into the broken pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.stop(0)
            return
        self.received += 1
        if self.count is not None and self.received >= self.count:
            self.stop(0)

    def on_ready(self, welcome: Any) -> None:
        self.ready = True
        if self.close is not None:
            # The server closed in the same read as its welcome: the client reported the close
            # before it resumed connect and said it was ready.
            self.closed_by_server(*self.close)

    def on_closed(self, code: int, reason: str) -> None:
        # Before ready, a close may still be connect's to report (as the error it raises), or
        # come before a ready that follows: kept until ready tells which.
        self.close = (code, reason)
        if self.ready:
            self.closed_by_server(code, reason)

    def closed_by_server(self, code: int, reason: str) -> None:
        if not self.outcome.done():
            click.echo(f"connection closed: {code} {printable(reason)}".rstrip(), err=True)
            self.outcome.set_result(1)

    def stop(self, status: int) -> None:
        if not self.outcome.done():
            self.outcome.set_result(status)


async def listen_until_done(
    client: WseClient, identity: str, meta: dict[str, Any] | None, count: int | None
) -> int:
    listening = Listening(client, count)
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, listening.stop, 0)
    connecting = asyncio.ensure_future(client.connect(identity, meta))
    try:
        await asyncio.wait({connecting, listening.outcome}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():  # a signal while connecting
            connecting.cancel()
            return await listening.outcome
        try:
            connecting.result()
        except WseError as err:
            if err.details.get("error") == "closed at once" and listening.close is not None:
                # Welcomed, then closed in the same read: what it sent before was printed,
                # and the close is told as any close by the server is, whichever of connect
                # and the close the client reported first.
                listening.closed_by_server(*listening.close)
            else:
                report(err)
            return 1
        return await listening.outcome
    finally:
        await client.close()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def run_client(
    url: str,
    cafile: str | None,
    timeout: float,
    work: Callable[[WseClient], Awaitable[int]],
) -> None:
    """Runs ``work(client)`` on uvloop with a client for ``url`` (reconnect off) and exits
    with the status it returns."""
    import uvloop

    from ..client import WseClient  # here: `wse-fast serve` imports this module too

    context = client_ssl_context(url, cafile)

    async def main() -> int:
        client = WseClient(url, timeout=timeout, reconnect=None, ssl=context)
        return await work(client)

    sys.exit(uvloop.run(main()))


def with_exit_status(fn: FC) -> FC:
    """Ends a client command's help (its docstring, which click reads) with its exit status."""
    fn.__doc__ = (fn.__doc__ or "").rstrip() + (
        "\n\n    Exit status: 0 on success; 1 with a WSE error code on stderr, followed by its"
        "\n    details as JSON: wse.not-authorized (the server refused the identity),"
        "\n    wse.client.ws-error (no connection: nothing listening, TLS, no welcome in time),"
        "\n    wse.client.rp.timeout, or the code the procedure answered with; 2 for a wrong"
        "\n    argument.\n"
    )
    return fn


@click.command(short_help="Call a procedure of a WSE server and print its result.")
@click.argument("url", callback=ws_url)
@click.argument("rp")
@click.argument("payload", metavar="[JSON]", callback=json_value, required=False)
@client_options
@with_exit_status
def call(
    url: str,
    rp: str,
    payload: Any,
    identity: str,
    meta: dict[str, Any] | None,
    timeout: float,
    cafile: str | None,
) -> None:
    """Connects to the WSE server at URL (ws:// or wss://) as --identity, calls its procedure
    RP with the JSON payload (null when left out), prints the result as JSON on stdout, and
    closes. It connects once: no reconnecting.

    \b
        wse-fast call ws://127.0.0.1:4200 add '[1, 2]' --identity alice
        WSE_FAST_IDENTITY="$TOKEN" wse-fast call wss://example.com/ws whoami --meta '{"v": 2}'
    """
    run_client(url, cafile, timeout, lambda client: call_once(client, identity, meta, rp, payload))


@click.command(short_help="Print the messages a WSE server sends, one JSON line each.")
@click.argument("url", callback=ws_url)
@client_options
@click.option(
    "--count",
    type=click.IntRange(min=1),
    metavar="N",
    help="Stop after N messages  [default: run until Ctrl-C or the server closes].",
)
@with_exit_status
def listen(
    url: str,
    identity: str,
    meta: dict[str, Any] | None,
    timeout: float,
    cafile: str | None,
    count: int | None,
) -> None:
    """Connects to the WSE server at URL (ws:// or wss://) as --identity and prints every
    message it sends as a JSON line [type, payload] on stdout, flushed line by line (for
    jq, grep, ...).

    It stops after --count messages, on Ctrl-C (SIGINT) or SIGTERM, closing the connection
    (exit status 0 either way), or when the server closes the connection: then exit status 1,
    with "connection closed:", the close code and reason on stderr. It connects once: no
    reconnecting. Calls the server makes to this client are answered
    wse.server.rp.not-registered.

    \b
        wse-fast listen ws://127.0.0.1:4200 --identity alice --count 10
    """
    run_client(
        url, cafile, timeout, lambda client: listen_until_done(client, identity, meta, count)
    )


@click.command(short_help="Send one message to a WSE server.")
@click.argument("url", callback=ws_url)
@click.argument("type")
@click.argument("payload", metavar="[JSON]", callback=json_value, required=False)
@client_options
@with_exit_status
def send(
    url: str,
    type: str,
    payload: Any,
    identity: str,
    meta: dict[str, Any] | None,
    timeout: float,
    cafile: str | None,
) -> None:
    """Connects to the WSE server at URL (ws:// or wss://) as --identity, sends one message
    of type TYPE with the JSON payload (null when left out), and closes with a close
    handshake, which the server answers after it has read the message.

    \b
        wse-fast send ws://127.0.0.1:4200 chat '{"text": "hello"}' --identity alice
    """
    run_client(
        url, cafile, timeout, lambda client: send_once(client, identity, meta, type, payload)
    )
