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
# Header names whose values the admin API masks and that are redacted here
# too: a configured `X-Api-Key: ...` is as secret as api_key.
SECRETISH_HEADER = re.compile(r"auth|key|token|secret|password|cookie|signature", re.I)
# Shorter configured header values are not hunted in text: masking every "1"
# or "on" would garble messages and hide nothing of value.
_MIN_HEADER_SECRET = 4


class Redactor:
    """Replaces every known secret in a text with `***`. Never shows what it hides."""

    __slots__ = ("_needles",)

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

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return text

    def __repr__(self) -> str:
        return f"Redactor({len(self._needles)} needles)"


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
