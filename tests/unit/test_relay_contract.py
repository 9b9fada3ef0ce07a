"""What the streaming relay (gateway/proxy/body.py `Pipe`) reads from
aiohttp's client-side protocol per chunk, as plain attributes: an aiohttp
release that changed these would break flow control and client-gone
detection, so it must fail here first."""

from __future__ import annotations

import asyncio

from aiohttp.base_protocol import BaseProtocol


async def test_writing_paused_is_the_paused_slot_and_connection_lost_clears_transport():
    p = BaseProtocol(asyncio.get_running_loop())
    assert "_paused" in BaseProtocol.__slots__ and "transport" in BaseProtocol.__slots__
    assert p._paused is False and p.writing_paused is False
    p.pause_writing()  # what the transport calls past its high-water mark
    assert p._paused is True and p.writing_paused is True
    p.resume_writing()
    assert p._paused is False
    p.transport = object()  # type: ignore[assignment]
    p.connection_lost(None)
    assert p.transport is None
