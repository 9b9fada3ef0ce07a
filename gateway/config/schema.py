"""The config's shape: frozen dataclasses, the key tables, the problem type.

What a loaded config *is* (`GatewayConfig` and the dataclasses it holds),
which keys a file may use (`TOP_KEYS`, `PROVIDER_FIELDS`), and the rules
other modules read (`NAME_RE`, `RESERVED_NAMES`...). No parsing happens
here: gateway/config/validate.py, provider.py and sections.py turn YAML
data into these; gateway/schema.py derives the JSON Schema from them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .cors import CorsConfig
from .provider_api import DEFAULT_API, ApiOptions
from .replicas import NO_REPLICAS, REPLICA_FIELDS, ReplicaOptions
from .telemetry import DEFAULT_USAGE, TracingConfig, UsageSettings

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
DEFAULT_LISTEN = "127.0.0.1:8080"
OPENAI_BASE_URL = "https://api.openai.com/v1"
PROVIDER_TYPES = ("custom", "openai")
RESERVED_NAMES = frozenset({"auth", "admin"})
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Headers the gateway owns: letting config set them would break forwarding.
RESERVED_HEADERS = frozenset(
    {"authorization", "host", "content-length", "transfer-encoding", "connection"}
)


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in the configuration, located as precisely as possible."""

    file: str
    message: str
    provider: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.provider:
            where += f": provider '{self.provider}'"
        if self.field:
            where += f": field '{self.field}'"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every mistake found.

    From `load_config`, `secrets` and `seal_key_file` are what did parse, so
    that the secrets can still be checked and reported in the same run
    (gateway/config/check_all.py) instead of after the structure is fixed.
    """

    def __init__(
        self,
        problems: list[Problem],
        secrets: tuple[SecretRef, ...] = (),
        seal_key_file: Path | None = None,
    ):
        self.problems = problems
        self.secrets = secrets
        self.seal_key_file = seal_key_file
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A secret as written in config (`sealed:v1:...`, `env:NAME` or plain text).

    `scope` is what the value is bound to (provider name, `auth`, `admin`).
    The repr never shows the text: it may be plain text.
    """

    text: str = field(repr=False)
    scope: str
    file: str
    field: str
    provider: str | None = None

    @property
    def kind(self) -> str:
        if self.text.startswith("sealed:"):
            return "sealed"
        if self.text.startswith("env:"):
            return "env"
        return "plain"

    def __repr__(self) -> str:
        return f"SecretRef(kind={self.kind!r}, scope={self.scope!r})"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-provider upstream timeouts, in seconds.

    Defaults are generous because LLMs can think for minutes before the first
    byte of a non-streamed answer.
    """

    connect: float = 10.0
    first_byte: float = 600.0
    idle: float = 300.0


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    provider_type: str
    base_url: str
    api_key: SecretRef | None = None
    headers: tuple[tuple[str, str], ...] = ()
    models: tuple[str, ...] | None = None
    timeouts: Timeouts = Timeouts()
    max_connections: int = 100
    # Extra CA certificates (PEM) trusted for this https:// upstream, besides
    # the system's: `ca_file` as written, `ca_pem` its contents as loaded (so
    # a changed bundle makes a new runtime, and nothing re-reads the file).
    ca_file: str | None = None
    ca_pem: str | None = field(default=None, repr=False)
    proxy: str | None = None  # http://host:port of an outbound HTTP proxy
    proxy_auth: SecretRef | None = None  # its USER:PASSWORD (Basic), a secret
    # Key header, fixed query, endpoints served, passthrough paths (provider_api)
    api: ApiOptions = DEFAULT_API
    # Several replicas of one backend (gateway/config/replicas.py); off by default
    replicas: ReplicaOptions = NO_REPLICAS
    source: str = "config"  # "config" (main file) or "store" (an include fragment)
    file: str = ""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    api_keys: tuple[SecretRef, ...]
    # One per key, the `client` label of metrics and the access log: the
    # entry's `name`, or `key-N` (its position from 1) for a plain entry.
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdminConfig:
    token: SecretRef
    writable: bool = True
    # Variables the admin API may name as `env:NAME` secrets: only names
    # starting with one of these (none by default, so that the API cannot
    # send any of the gateway's environment to a base_url of its caller's).
    env_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 64 * 1024 * 1024
    # One request line or header field; long enough for big JWTs.
    max_header_bytes: int = 16 * 1024
    # Inbound connection limits, enforced by gateway/inbound.py (times in s).
    # A real client writes its whole request head at once: 10 s is room for
    # a bad mobile link, and caps what a trickling (slowloris) client holds.
    head_timeout: float = 10.0
    # Longest wait for the next KiB (or the end) of a request body once its
    # head is in; time the gateway itself is not reading does not count.
    # 30 s of silence is a stalled client on any real network.
    body_idle_timeout: float = 30.0
    # Idle time allowed between requests on one connection. Longer than the
    # 60 s idle timeout of common proxies (AWS ALB, ingress-nginx) so that
    # the proxy, not the gateway, closes an idle connection first: the other
    # order races with a request sent on it and the proxy answers 502.
    keepalive_timeout: float = 75.0
    # Open client connections; lowered at start-up to what the process's
    # file descriptor limit can carry (see inbound.fd_connection_cap).
    max_connections: int = 4096


@dataclass(frozen=True, slots=True)
class AccessLog:
    """One JSON line per request on the `gateway.access` logger, when enabled."""

    enabled: bool = False
    sample_rate: float = 1.0


@dataclass(frozen=True, slots=True)
class ModelsSettings:
    cache_ttl: float = 30.0
    fetch_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    path: Path
    listen_host: str
    listen_port: int
    include: Path | None
    seal_key_file: Path | None
    auth: AuthConfig | None
    admin: AdminConfig | None
    providers: tuple[ProviderConfig, ...]
    limits: Limits = Limits()
    models: ModelsSettings = ModelsSettings()
    # alias -> ((provider, model), ...) tried in order until one answers
    aliases: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    access_log: AccessLog = AccessLog()
    cors: CorsConfig | None = None  # None: CORS off (cors.py here; gateway/cors.py acts on it)
    usage: UsageSettings = DEFAULT_USAGE  # gateway/config/telemetry.py
    tracing: TracingConfig | None = None  # None: tracing off
    files: tuple[Path, ...] = ()  # every file read, for the reload watcher
    digest: str = ""  # a hash of those files' contents as they were read

    def ca_files(self) -> list[Path]:
        """The providers' CA bundles (watched for changes like the config)."""
        return [Path(p.file).parent / p.ca_file for p in self.providers if p.ca_file]

    def provider(self, name: str) -> ProviderConfig | None:
        for p in self.providers:
            if p.name == name:
                return p
        return None


TOP_KEYS = {
    "listen",
    "include",
    "seal_key_file",
    "auth",
    "admin",
    "providers",
    "aliases",
    "limits",
    "models",
    "access_log",
    "cors",
    "usage",
    "tracing",
}
# A provider's fields, in the order a person would write them (the admin API
# writes fragments in this order).
PROVIDER_FIELDS = (
    "name",
    "provider_type",
    "base_url",
    "api_key",
    "headers",
    "models",
    "timeouts",
    "max_connections",
    "ca_file",
    "proxy",
    "proxy_auth",
    "auth_header",
    "query",
    "endpoints",
    "passthrough",
    "stream_usage",
    *REPLICA_FIELDS,
)
PROVIDER_KEYS = frozenset(PROVIDER_FIELDS)
