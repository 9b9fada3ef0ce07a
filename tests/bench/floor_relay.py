"""The floor of a proxy on this stack: a uvloop Protocol that writes what it reads.

Run: `python3 tests/bench/floor_relay.py --port P --upstream-port U`.

No HTTP at all: each client connection gets its own upstream connection and
the bytes go through both ways as read, in one `write` per read. Not a
proxy anyone could deploy (no routing, no framing, no limits, no flow
control); it is what a Python proxy on uvloop costs before it does anything,
measured next to nginx and the gateway in the chunk phase. What the gateway
costs above it is its own code.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

HOST = "127.0.0.1"


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport):
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []  # read before the upstream connection is up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(self.transport), HOST, self.upstream_port
            )
        except OSError:
            self.transport.close()
            return
        for data in self.early:
            upstream.write(data)
        self.early.clear()
        self.upstream = upstream

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def main(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream_port), HOST, port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(main(args.port, args.upstream_port))
