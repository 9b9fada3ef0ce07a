"""Redaction of a provider's secrets from upstream text the gateway shows or logs.

Upstreams echo requests: a 401 page that quotes the Authorization header, a
proxy's error that quotes Proxy-Authorization, a debug server that dumps
every header. Any such text the gateway itself puts into a response or a log
line (model listing errors, the admin API's test and models endpoints) goes
through the provider's `Redactor` first. Each runtime builds its own once,
from the secrets it sends, in every form they are sent in.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

import orjson

MASK = "***"
_MASK_BYTES = MASK.encode()
# Header names whose values the admin API masks and that are redacted here
# too: a configured `X-Api-Key: ...` is as secret as api_key.
SECRETISH_HEADER = re.compile(r"auth|key|token|secret|password|cookie|signature", re.I)
# Shorter configured header values are not hunted in text: masking every "1"
# or "on" would garble messages and hide nothing of value.
_MIN_HEADER_SECRET = 4


class Redactor:
    """Replaces every known secret in a text with `***`. Never shows what it hides."""

    __slots__ = ("_byte_needles", "_needles", "longest")

    def __init__(self, secrets: Iterable[str] = ()):
        needles: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            needles.add(secret)
            # As it appears inside a JSON string an upstream echoes back.
            needles.add(orjson.dumps(secret).decode()[1:-1])
        # Longest first, so that a secret containing another is hidden whole.
        self._needles = tuple(sorted(needles, key=len, reverse=True))
        self._byte_needles = tuple(
            sorted({n.encode("utf-8", "surrogateescape") for n in needles}, key=len, reverse=True)
        )
        self.longest = len(self._byte_needles[0]) if self._byte_needles else 0

    def __bool__(self) -> bool:
        return bool(self._needles)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        """`data` with every secret, as UTF-8, replaced by `***`."""
        for needle in self._byte_needles:
            if needle in data:
                data = data.replace(needle, _MASK_BYTES)
        return data

    def __repr__(self) -> str:
        return f"Redactor({len(self._needles)} needles)"


class StreamRedaction:
    """A body's bytes redacted as they pass, for copy_body's `edit`: the last
    `longest - 1` bytes wait for the next chunk, so a secret split across
    chunks is still found whole; `edit(b"")` at the end gives them."""

    __slots__ = ("_held", "_keep", "_redactor")

    def __init__(self, redactor: Redactor):
        self._redactor = redactor
        self._keep = max(redactor.longest - 1, 0)
        self._held = b""

    def __call__(self, chunk: bytes) -> bytes:
        data = self._redactor.redact_bytes(self._held + chunk)
        cut = max(len(data) - self._keep, 0) if chunk else len(data)  # b"": the end
        self._held = data[cut:]
        return data[:cut]


def provider_redactor(
    api_key: str | None, proxy_auth: str | None, headers: Iterable[tuple[str, str]] = ()
) -> Redactor:
    """The redactor for one provider: its key, its proxy credentials (also as
    the base64 of the Basic header, and the password alone), and the values of
    its configured headers whose names look secret."""
    secrets = [api_key or ""]
    if proxy_auth:
        secrets.append(proxy_auth)
        secrets.append(base64.b64encode(proxy_auth.encode()).decode())
        password = proxy_auth.partition(":")[2]
        if len(password) >= _MIN_HEADER_SECRET:
            secrets.append(password)
    secrets += [
        value
        for name, value in headers
        if SECRETISH_HEADER.search(name) and len(value) >= _MIN_HEADER_SECRET
    ]
    return Redactor(secrets)
