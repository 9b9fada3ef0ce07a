"""Ports, certificates and an outbound proxy for tests that need the network."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that were free a moment ago (held together so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    """A port that was free a moment ago, for a process that must be told its port."""
    return free_ports(1)[0]


def dead_url() -> str:
    """A base_url nothing listens on (connections to it are refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


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
