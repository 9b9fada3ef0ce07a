"""A provider's live state: what the hot path needs of it, computed once.

`ProviderRuntime` holds the upstream request pieces built from the config
when a snapshot is built (request lines, the head's fixed headers, TLS), and
creates on first use the keep-alive pool of the hot path (`gateway.proxy.upstream`,
or one per replica), and an aiohttp session for model listing and the admin
API. Everything on it but the pools, sessions and model cache is fixed; a
reload reuses a runtime whose config and key did not change
(`gateway.snapshot`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from . import __version__
from .config import ProviderConfig
from .config.provider_api import AUTH_HEADERS
from .proxy.endpoints import ENDPOINTS, Endpoint
from .proxy.replicas import ReplicaSet, outstanding
from .proxy.upstream import Pool
from .redact import provider_redactor
from .secrets import Secret

log = logging.getLogger("gateway.snapshot")


@dataclass
class ModelCache:
    """A provider's upstream model list, fetched at most once per TTL."""

    models: list[dict] | None = None
    # The ids of `models`, for bounded metric labels without a scan per request.
    ids: frozenset[str] = frozenset()
    fetched_at: float = 0.0
    error: str | None = None
    pending: asyncio.Future | None = field(default=None, repr=False)

    def fresh(self, ttl: float) -> bool:
        return self.models is not None and time.monotonic() - self.fetched_at < ttl


class ProviderRuntime:
    """A provider's live state. Everything on it but the pool is fixed."""

    __slots__ = (
        "_closing",
        "_pool",
        "_session",
        "_tls",
        "_tunnel_auth",
        "api_key",
        "base_path",
        "base_url",
        "config",
        "host_line",
        "model_cache",
        "name",
        "origin_prefix",
        "proxy_auth",
        "proxy_connect_headers",
        "query",
        "redact",
        "refs",
        "replicas",
        "request_lines",
        "timeout",
        "upstream_header_block",
        "upstream_header_names",
        "upstream_headers",
        "urls",
    )

    def __init__(
        self, config: ProviderConfig, api_key: Secret | None, proxy_auth: Secret | None = None
    ):
        self.config = config
        self.name = config.name
        self.api_key = api_key
        self.proxy_auth = proxy_auth
        self.base_url = URL(config.base_url)
        query = config.api.query
        # Appending with "/" keeps the base path (".../v1") and is done once.
        self.urls = {
            ep: URL(f"{config.base_url}/{ep}").update_query(query)
            for ep in ("chat/completions", "models")
        }
        headers = CIMultiDict(config.headers)
        if api_key is not None:
            style = config.api.auth_header
            value = api_key.reveal()
            headers[AUTH_HEADERS[style]] = f"Bearer {value}" if style == "bearer" else value
        # Basic credentials for the proxy. For an https upstream they go on
        # the CONNECT that opens the tunnel (the hot path's pool; aiohttp's
        # `proxy_headers`); for an http one, on every request, which the
        # proxy strips, so they simply join the upstream headers.
        https = self.base_url.scheme == "https"
        proxy_credentials = None
        if proxy_auth is not None:
            basic = base64.b64encode(proxy_auth.reveal().encode()).decode()
            proxy_credentials = f"Basic {basic}"
            if not https:
                headers["Proxy-Authorization"] = proxy_credentials
        self.upstream_headers = headers
        # Hides this provider's secrets in upstream text shown or logged.
        self.redact = provider_redactor(
            api_key.reveal() if api_key is not None else None,
            proxy_auth.reveal() if proxy_auth is not None else None,
            config.headers,
        )
        self.proxy_connect_headers = (
            f"Proxy-Authorization: {proxy_credentials}\r\n".encode()
            if proxy_credentials and https
            else b""
        )
        self._tunnel_auth = proxy_credentials if https else None
        # The hot path's request head pieces, encoded once per provider.
        url = self.base_url
        host = url.raw_host or ""
        if ":" in host:
            host = f"[{host}]"
        if url.explicit_port:
            host = f"{host}:{url.port}"
        base_path = url.raw_path.rstrip("/")
        origin = ""
        if config.proxy and url.scheme == "http":
            # Through a proxy, plain-HTTP requests name the whole URL.
            origin = f"http://{host}"
        self.origin_prefix = origin
        self.base_path = origin + base_path
        self.host_line = f"Host: {host}\r\n".encode("latin-1")
        self.query = URL.build(query=query).raw_query_string if query else ""
        self.request_lines = {
            name: self.request_line("POST", self.endpoint_path(e)) for name, e in ENDPOINTS.items()
        }
        self.upstream_header_block = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode(
            "utf-8"
        )
        self.upstream_header_names = frozenset(k.lower().encode() for k in headers)
        t = config.timeouts
        # sock_read covers the wait for response headers (the first byte);
        # the forwarder lowers it to the idle timeout once headers are in.
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=t.connect, sock_read=t.first_byte
        )
        # Live snapshots holding this runtime (see SnapshotHolder).
        self.refs = 0
        self.model_cache: ModelCache = ModelCache()
        self._session: aiohttp.ClientSession | None = None
        self._pool: Pool | None = None
        self._tls: ssl.SSLContext | None = None
        self._closing = False
        # Several replicas (gateway/proxy/replicas.py); None for one base_url, whose
        # hot path stays as it was.
        self.replicas: ReplicaSet | None = (
            ReplicaSet(self, config.replicas) if config.replicas.enabled else None
        )

    def __repr__(self) -> str:
        return f"ProviderRuntime({self.name!r}, {self.config.base_url!r})"

    def endpoint_path(self, endpoint: Endpoint) -> str:
        """Where `endpoint` is served upstream: under base_url, or at the server's root."""
        base = self.origin_prefix if endpoint.root else self.base_path
        return f"{base}/{endpoint.upstream}"

    def request_line(self, method: str, path: str, client_query: str = "") -> bytes:
        """`METHOD path?query HTTP/1.1` and the Host line; the provider's own
        `query` parameters follow the client's. `path` is already in raw
        (percent-encoded) form."""
        query = "&".join(q for q in (client_query, self.query) if q)
        target = f"{path}?{query}" if query else path
        return f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self.host_line

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created lazily: a session needs a running loop, and `gateway check`
        # builds snapshots without one.
        s = self._session
        if s is None:
            connector = aiohttp.TCPConnector(
                ssl=self.tls_context() or True,
                limit=self.config.max_connections,
                limit_per_host=0,
                ttl_dns_cache=60,
                keepalive_timeout=30,
            )
            s = self._session = aiohttp.ClientSession(
                # Requests add `proxy_headers=runtime.proxy_headers()`.
                proxy=self.config.proxy,
                connector=connector,
                # The gateway forwards bytes verbatim: never decompress, never
                # keep cookies between clients, never read proxy settings from the
                # environment (a provider's `proxy` is explicit).
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                timeout=self.timeout,
                headers={"User-Agent": f"gateway/{__version__}"},
                skip_auto_headers=("Content-Type",),
            )
        return s

    def proxy_headers(self) -> dict[str, str] | None:
        """`proxy_headers` for a request through the session (a fresh dict:
        aiohttp adds to the one it is given)."""
        return {"Proxy-Authorization": self._tunnel_auth} if self._tunnel_auth else None

    def tls_context(self) -> ssl.SSLContext | None:
        """Verification against the system CAs, plus the provider's `ca_file`.

        None for plain http://. One context per runtime, shared by the pool and
        the session (building one loads the system store: milliseconds)."""
        if self.base_url.scheme != "https":
            return None
        if self._tls is None:
            self._tls = ssl.create_default_context()
            if self.config.ca_pem:
                self._tls.load_verify_locations(cadata=self.config.ca_pem)
        return self._tls

    @property
    def pool(self) -> Pool:
        """The hot path's keep-alive connections (see gateway.upstream)."""
        p = self._pool
        if p is None:
            url = self.base_url
            p = self._pool = Pool(
                url.host or "",
                url.port or (443 if url.scheme == "https" else 80),
                tls=self.tls_context(),
                limit=self.config.max_connections,
                connect_timeout=self.config.timeouts.connect,
                proxy=_host_port(self.config.proxy) if self.config.proxy else None,
                proxy_headers=self.proxy_connect_headers,
            )
        return p

    def replicas_state(self) -> list[dict]:
        """Each upstream server: url, state, in_flight, requests, errors,
        ejected_until. One base_url has no per-request counts of its own
        (they would cost its hot path): requests and errors are None there,
        and so is its state: nothing ejects it, so "up" would be a guess (a
        status page showed a refused base_url as "up")."""
        if self.replicas is not None:
            return self.replicas.state()
        in_flight = outstanding(self._pool) if self._pool is not None else 0
        return [
            {
                "url": self.config.base_url,
                "state": None,
                "in_flight": in_flight,
                "requests": None,
                "errors": None,
                "ejected_until": None,
            }
        ]

    def same_as(self, other: ProviderRuntime) -> bool:
        return (
            self.config == other.config
            and self.api_key == other.api_key
            and self.proxy_auth == other.proxy_auth
        )

    def retire(self) -> None:
        """No snapshot holds this runtime any more: close its pools.

        Requests in flight need no count of their own here: each one leases a
        snapshot that holds this runtime, so no request is using it now.
        """
        self._closing = True
        if self.replicas is not None:
            self.replicas.close()  # its tasks stop; requests in flight finish
        if self._session is not None or self._pool is not None:
            _spawn_close(self)

    @property
    def closed(self) -> bool:
        """Retired and without a pool (for operators and tests)."""
        return self._closing and self._session is None and self._pool is None

    async def close(self) -> None:
        if self.replicas is not None:
            self.replicas.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        s, self._session = self._session, None
        if s is not None and not s.closed:
            await s.close()


# The loop keeps only weak references to tasks: hold closing tasks until done
# so that a pool is never left half-closed by the garbage collector.
_closing_tasks: set[asyncio.Task] = set()


def _spawn_close(runtime: ProviderRuntime) -> None:
    task = asyncio.get_running_loop().create_task(runtime.close())
    _closing_tasks.add(task)
    task.add_done_callback(_closing_tasks.discard)


def _host_port(url: str) -> tuple[str, int]:
    u = URL(url)
    return u.host or "", u.port or 80
