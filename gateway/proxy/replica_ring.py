"""Affinity for replicas: the request's key, and a consistent-hash ring of replicas.

The ring places `VNODES` points per replica (by its URL), so that a replica
joining or leaving moves only the keys nearest its own points: about 1/N of
the sessions, not all of them, and the KV caches of the rest stay useful.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from hashlib import blake2b

import orjson

from ..config.replicas import Affinity

VNODES = 100
_MAX_KEY = 1024  # a header value or `user` longer than this is hashed as its first 1 KiB
# Where a prompt starts in the body: the first of these keys found.
_PROMPT_KEYS = (b'"messages"', b'"prompt"', b'"input"')


def hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """Points on a 64-bit circle, each naming the index of a replica."""

    __slots__ = ("_owners", "_points")

    def __init__(self, names: Sequence[str], vnodes: int = VNODES):
        pairs = sorted(
            (hash64(f"{name}#{i}".encode()), index)
            for index, name in enumerate(names)
            for i in range(vnodes)
        )
        self._points = [h for h, _ in pairs]
        self._owners = [index for _, index in pairs]

    def owner(self, key: int) -> int | None:
        """The index of the replica that owns `key`, None on an empty ring."""
        if not self._points:
            return None
        i = bisect_right(self._points, key)
        return self._owners[i if i < len(self._points) else 0]


def header_pattern(name: str) -> re.Pattern[bytes]:
    """Finds header `name`'s value in a request head as written (any case)."""
    return re.compile(rb"\r\n" + re.escape(name.encode()) + rb"[ \t]*:[ \t]*([^\r\n]*)", re.I)


def affinity_key(
    affinity: Affinity, pattern: re.Pattern[bytes] | None, head: bytes, data: object
) -> int | None:
    """The hash that picks a replica for this request, None if it carries no key.

    Read from the request as it goes upstream (head and body bytes), so the
    forwarder does no work for it when affinity is off."""
    if affinity.kind == "header":
        m = pattern.search(head) if pattern is not None else None
        value = m.group(1).strip() if m else b""
        return hash64(value[:_MAX_KEY]) if value else None
    if type(data) is not bytes:
        return None  # multipart (audio, images): no conversation to keep
    if affinity.kind == "user":
        if b'"user"' not in data:
            return None
        try:
            user = orjson.loads(data).get("user")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return hash64(user.encode()[:_MAX_KEY]) if isinstance(user, str) and user else None
    for key in _PROMPT_KEYS:
        at = data.find(key)
        if at >= 0:
            return hash64(data[at : at + len(key) + affinity.prefix_bytes])
    return None
