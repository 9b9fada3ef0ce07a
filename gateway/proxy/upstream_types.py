"""What the hot path's upstream client hands out: a response head and its errors.

Shared by `gateway.proxy.upstream_conn` (one connection) and `gateway.proxy.upstream`
(the pool), which re-exports both.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .upstream_conn import Connection


class ErrorKind(StrEnum):
    """Why an exchange with an upstream failed: one fixed set for the client's
    message (relay._failure), failover and replica ejection, and the `kind`
    label of `gateway_upstream_errors_total`. A str enum, so that the label
    is the value itself ("connect", not "ErrorKind.CONNECT") and a kind
    compares equal to its string."""

    CONNECT = "connect"  # refused, unreachable, DNS
    CONNECT_TIMEOUT = "connect_timeout"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"  # request sent, no response head in time
    IDLE_TIMEOUT = "idle_timeout"  # a gap between two body chunks
    RESET = "reset"  # the connection closed or broke under the exchange
    PROTOCOL = "protocol"  # a response that cannot be framed safely
    OTHER = "other"  # a closed pool, an oversized health answer...
    # Not UpstreamError kinds, but counted under the same label: an answer
    # whose status made failover move on, and a provider with every replica out.
    STATUS = "status"
    NO_HEALTHY_REPLICA = "no_healthy_replica"


class UpstreamError(Exception):
    """The exchange failed; `kind` says how (an ErrorKind; a plain string
    naming one is accepted and converted). `before_response` tells whether
    any of the response had arrived (so failover is still safe)."""

    def __init__(self, kind: ErrorKind | str, message: str, before_response: bool = True):
        super().__init__(message)
        # ErrorKind(...) raises on a typo'd kind instead of inventing a label.
        self.kind = ErrorKind(kind)
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

    def whole_body(self) -> bytes | None:
        """All of the body when the answer has already ended cleanly (it came
        with its head, as small JSON answers do), taken; else None."""
        return self._conn.whole_body()

    def set_idle_timeout(self, seconds: float | None) -> None:
        self._conn.set_idle_timeout(seconds)
