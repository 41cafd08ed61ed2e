"""I/O worlds the sans-I/O core plugs into: the own listener's sockets (uvloop), the
client's picows, and the ASGI and aiohttp mounts."""
