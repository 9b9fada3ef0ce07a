"""Test parts: real aiohttp upstreams on 127.0.0.1 and a real gateway server.

Nothing here is mocked. `Upstream` is an aiohttp server on an ephemeral
port whose answers a test scripts and whose received requests it records.
`GatewayUnderTest` is the gateway's own aiohttp server, built from a config
file in a temp dir exactly as `gateway serve` builds it. Tests import it all
from here: `from tests.support import ...`.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.fixtures import factory
from tests.support.gateway import (
    GatewayUnderTest,
    provider_yaml,
    readyz,
    start_gateway_from,
    stream_chat,
    write_config,
)
from tests.support.net import ForwardProxy, dead_url, free_port, free_ports, self_signed
from tests.support.upstream import Handler, Recorded, Upstream, serve_app, split_awkwardly

REPO = Path(__file__).resolve().parents[2]
SSE_FIXTURES = REPO.parent / "shared" / "fixtures" / "sse"

__all__ = [
    "REPO",
    "SSE_FIXTURES",
    "ForwardProxy",
    "GatewayUnderTest",
    "Handler",
    "Recorded",
    "Upstream",
    "dead_url",
    "factory",
    "free_port",
    "free_ports",
    "provider_yaml",
    "readyz",
    "self_signed",
    "serve_app",
    "split_awkwardly",
    "start_gateway_from",
    "stream_chat",
    "write_config",
]
