"""What the hot path's upstream client hands out: a response head and its errors.

Shared by `gateway.upstream_conn` (one connection) and `gateway.upstream`
(the pool), which re-exports both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .upstream_conn import Connection


class UpstreamError(Exception):
    """The exchange failed. `kind` is a metrics label, one of a fixed set:
    connect, connect_timeout, first_byte_timeout, idle_timeout, reset,
    protocol (a response that cannot be framed safely), other.
    `before_response` tells whether any of the response had arrived (so
    failover is still safe)."""

    def __init__(self, kind: str, message: str, before_response: bool = True):
        super().__init__(message)
        self.kind = kind
        self.before_response = before_response


class Response:
    """Status and headers of an upstream answer; the body comes from `read()`."""

    __slots__ = ("_conn", "headers", "reason", "status")

    def __init__(self, conn: Connection, status: int, reason: str, headers: list[tuple[str, str]]):
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    async def read(self) -> bytes:
        """The next body bytes as they came; b"" at the end. Raises UpstreamError."""
        return await self._conn.read_body()

    def set_idle_timeout(self, seconds: float | None) -> None:
        self._conn.set_idle_timeout(seconds)
