"""The one exception type of the public API."""

from __future__ import annotations

from typing import Any


class WseError(Exception):
    """An error with a WSE code (see :class:`wse_fast.WSE_ERROR`) and optional details.

    Raised by the client for refused connections, RPC failures and timeouts. An RPC handler
    that raises one sends its code and details to the caller.
    """

    def __init__(
        self, code: str, details: dict[str, Any] | None = None, message: str | None = None
    ):
        super().__init__(code)
        self.code = code
        self.details: dict[str, Any] = dict(details) if details else {}
        self.message = message

    def __repr__(self) -> str:
        return f"WseError({self.code!r}, {self.details!r})"
