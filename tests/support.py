"""Test parts: real aiohttp upstreams on 127.0.0.1 and a real gateway server.

Nothing here is mocked. `Upstream` is an aiohttp server on an ephemeral
port whose answers a test scripts and whose received requests it records.
`GatewayUnderTest` is the gateway's own aiohttp server, built from a config
file in a temp dir exactly as `gateway serve` builds it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import random
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDictProxy
from yarl import URL

from gateway.reload import Reloader, load_snapshot
from gateway.server import start_gateway
from gateway.snapshot import SnapshotHolder
from gateway.watcher import ConfigWatcher

REPO = Path(__file__).resolve().parents[1]
SSE_FIXTURES = REPO.parent / "shared" / "fixtures" / "sse"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    method: str
    path: str
    headers: CIMultiDictProxy
    body: bytes
    raw_path: str = ""  # the request target as received: path and query, undecoded

    def json(self) -> dict:
        return orjson.loads(self.body)


@dataclass
class Upstream:
    """A scriptable OpenAI-compatible upstream. Set `.handler` to change answers."""

    # None: `/models` goes to `handler` like everything else.
    models: list[str] | None = field(default_factory=lambda: ["m1", "m2"])
    requests: list[Recorded] = field(default_factory=list)
    # The gateway's own GET .../models list fetches (its User-Agent), answered
    # from `models`: kept apart from `requests`, since the gateway fetches
    # lists in the background (model_warmup.py) and tests read `requests[-1]`
    # as the request they sent. A client's passthrough GET stays in `requests`.
    model_list_fetches: list[Recorded] = field(default_factory=list)
    handler: Handler | None = None
    # Set when a streaming handler notices its client (the gateway) went away.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Recorded(request.method, request.path, request.headers, body, request.raw_path)
        if request.path.endswith("/models") and request.method == "GET" and self.models is not None:
            if request.headers.get("User-Agent", "").startswith("gateway/"):
                self.model_list_fetches.append(seen)  # the gateway's own list fetch
            else:
                self.requests.append(seen)  # a client's, passed through
            data = [
                {"id": m, "object": "model", "created": 1, "owned_by": "up"} for m in self.models
            ]
            return web.json_response({"object": "list", "data": data})
        self.requests.append(seen)
        if self.handler is not None:
            return await self.handler(request)
        payload = orjson.loads(body) if body else {}
        return web.json_response(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": payload.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    def replay(
        self,
        chunks: list[bytes],
        delay: float = 0.0,
        content_type: str = "text/event-stream",
        status: int = 200,
        hold_open: asyncio.Event | None = None,
    ) -> None:
        """Answer every POST by writing `chunks` one write each, then end."""

        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
            await resp.prepare(request)
            try:
                for i, chunk in enumerate(chunks):
                    if delay and i:
                        await asyncio.sleep(delay)
                    await resp.write(chunk)
                if hold_open is not None:
                    await hold_open.wait()
                await resp.write_eof()
            except (ConnectionError, asyncio.CancelledError):
                self.disconnected.set()
                raise
            return resp

        self.handler = handler


def split_awkwardly(data: bytes, seed: int = 0, max_piece: int = 97) -> list[bytes]:
    """Split bytes at random places: mid-line, mid-CRLF, mid-UTF-8 character."""
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_piece)
        pieces.append(data[i : i + n])
        i += n
    return pieces


@dataclass
class GatewayUnderTest:
    config_path: Path
    holder: SnapshotHolder
    reloader: Reloader
    runner: web.AppRunner
    port: int
    watcher: ConfigWatcher | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        await self.runner.cleanup()


def write_config(directory: Path, text: str, fragments: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    for name, body in (fragments or {}).items():
        frag = directory / name
        frag.parent.mkdir(parents=True, exist_ok=True)
        frag.write_text(textwrap.dedent(body))
    return path


async def start_gateway_from(
    path: Path, watch_interval: float | None = None, holder: SnapshotHolder | None = None
) -> GatewayUnderTest:
    """Start the gateway on `path`; with `watch_interval`, also its config watcher."""
    holder = holder or SnapshotHolder(load_snapshot(path))
    reloader = Reloader(path, holder)
    runner = await start_gateway(holder, "127.0.0.1", 0, shutdown_grace=2.0, reloader=reloader)
    port = runner.addresses[0][1]
    watcher = None
    if watch_interval is not None:
        watcher = ConfigWatcher(reloader, interval=watch_interval)
        watcher.start()
    return GatewayUnderTest(path, holder, reloader, runner, port, watcher)


def provider_yaml(name: str, upstream: Upstream, **extra: object) -> str:
    """One provider entry (for a `providers:` list) pointing at `upstream`."""
    lines = [f"  - name: {name}", "    provider_type: custom", f"    base_url: {upstream.base_url}"]
    for key, value in extra.items():
        lines.append(f"    {key}: {orjson.dumps(value).decode()}")
    return "\n".join(lines) + "\n"


def self_signed(tmp_path: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


class ForwardProxy:
    """A small outbound HTTP proxy on 127.0.0.1, as corporate egress runs:
    CONNECT tunnels (for https upstreams) and absolute-form requests (for
    http ones), one upstream connection per client connection, bytes piped
    both ways. Records each request line, and every byte it relayed."""

    def __init__(self) -> None:
        self.request_lines: list[str] = []
        self.relayed = bytearray()
        self.refuse_connect = False  # answer CONNECT with 403
        # "user:password" to demand (407 without it), as Basic credentials.
        self.credentials: str | None = None
        self.authorized: list[bool] = []  # per request: did it carry them?
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.request_lines.append(line)
            method, target, _ = line.split(" ", 2)
            fields = head.split(b"\r\n")[1:-2]
            auth_lines = [f for f in fields if f.lower().startswith(b"proxy-authorization:")]
            if self.credentials is not None:
                wanted = b"basic " + base64.b64encode(self.credentials.encode())
                ok = any(f.split(b":", 1)[1].strip().lower() == wanted.lower() for f in auth_lines)
                self.authorized.append(ok)
                if not ok:
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                    )
                    await writer.drain()
                    return
            if method == "CONNECT":
                if self.refuse_connect:
                    writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    return
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = b""
            else:  # absolute-form: forward the head with an origin-form request line
                url = URL(target)
                up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
                # As proxies do: the credentials were for this hop only.
                kept = b"".join(f + b"\r\n" for f in fields if f not in auth_lines)
                first = f"{method} {url.raw_path_qs} HTTP/1.1\r\n".encode() + kept + b"\r\n"
            up_writer.write(first)
            self.relayed += first
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.relayed += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def stream_chat(session, gw: GatewayUnderTest, model: str) -> bytes:
    """POST a streamed chat completion for `model` through `gw`; the body, after a 200."""
    async with session.post(
        f"{gw.base_url}/chat/completions", json={"model": model, "stream": True}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.read()
