# examples/metrics_app.py: Prometheus metrics and a health check beside a WSE server.
#
# Needs the metrics extra: pip install 'wse-fast[metrics]'. Run alone, it serves, makes some
# traffic, scrapes itself once and prints a few series. In production the command does the
# listening: wse-fast serve metrics_app:server --metrics-port 9100
# (mounted in Starlette or aiohttp instead: route /metrics and /health to server.metrics.asgi
# or server.metrics.aiohttp_handler).
import asyncio

from wse_fast import IdentifyRequest, WseClient, WseServer


def identify(req: IdentifyRequest) -> None:
    req.accept(req.identity)


server = WseServer(identify, port=0)
server.register("add", lambda conn, p: p["a"] + p["b"])
server.channel.on("chat", lambda conn, text: server.broadcast("chat", text))


async def scrape(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    head, body = (await reader.read()).decode().split("\r\n\r\n", 1)
    writer.close()
    return f"{head.split(' ', 2)[1]} {body}"  # status and body


async def main() -> None:
    await server.start()
    metrics = await server.metrics.listen("127.0.0.1", 0)  # what --metrics-port does
    port = metrics.sockets[0].getsockname()[1]
    client = WseClient(f"ws://127.0.0.1:{server.port}", reconnect=None)
    got = asyncio.Event()
    client.channel.on("chat", lambda text: got.set())
    await client.connect("alice")
    await client.call("add", {"a": 2, "b": 3})
    client.send("chat", "hello")
    await got.wait()

    text = await scrape(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(("wse_connections ", "wse_users ", "wse_messages_")) or (
            line.startswith("wse_rpc_duration_seconds_count")
        ):
            print(line)
    print("health:", await scrape(port, "/health"), end="")

    await client.close()
    await server.close()
    print("health:", await scrape(port, "/health"), end="")
    metrics.close()


if __name__ == "__main__":
    asyncio.run(main())
