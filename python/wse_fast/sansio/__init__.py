"""The sans-I/O core: bytes and messages in, decisions out, no sockets and no event loop."""
