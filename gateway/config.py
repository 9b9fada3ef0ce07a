"""Configuration: YAML files -> one immutable `GatewayConfig`.

Every mistake is collected (not just the first) as a `Problem` naming the
file, the provider and the field, so that `gateway check` can list them all
and a reload can be rejected with one clear message. Secrets are *not*
resolved here: fields that hold them keep a `SecretRef` (the text as written),
which `gateway.secrets` turns into plain text when a snapshot is built.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from yarl import URL

from .cors import CorsConfig, parse_cors
from .headercheck import header_name_problem, header_value_problem, printable
from .provider_api import DEFAULT_API, ApiOptions, parse_api_options
from .replicas_config import (
    NO_REPLICAS,
    REPLICA_FIELDS,
    ReplicaOptions,
    default_base_url,
    parse_replica_options,
)
from .telemetry_config import (
    DEFAULT_USAGE,
    TracingConfig,
    UsageSettings,
    parse_tracing,
    parse_usage,
)

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
    (gateway/config_errors.py) instead of after the structure is fixed.
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
    # Several replicas of one backend (gateway/replicas_config.py); off by default
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
    cors: CorsConfig | None = None  # None: CORS off (gateway/cors.py)
    usage: UsageSettings = DEFAULT_USAGE  # gateway/telemetry_config.py
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


# --------------------------------------------------------------------------
# Parsing


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


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` -> (host, port); ValueError if malformed."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # raises ValueError
    if not host:
        host = "0.0.0.0"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number between 0 and 65535")
    if not re.match(r"^[A-Za-z0-9.:_-]+$", host):
        raise ValueError(f"host {host!r} is not a valid host name or address")
    return host, int(port_text)


class _Parser:
    """Collects problems while turning raw YAML data into dataclasses."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.names: dict[str, str] = {}  # provider name -> file it was first defined in
        self.secrets: list[SecretRef] = []  # every secret field that parsed, for the report
        # Every file as read, so the digest describes exactly what was loaded.
        self.digest = hashlib.sha256()

    def problem(self, file: Path | str, message: str, provider=None, field=None) -> None:
        self.problems.append(Problem(str(file), message, provider, field))

    def unknown_keys(self, data: Mapping, allowed: set[str], file, provider=None, prefix=""):
        for key in data:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                self.problem(file, f"unknown key (known keys: {known})", provider, f"{prefix}{key}")

    # -- pieces ---------------------------------------------------------------

    def secret(self, value, *, file, field, scope, provider=None) -> SecretRef | None:
        if not isinstance(value, str) or not value:
            self.problem(file, "must be a non-empty string", provider, field)
            return None
        if value.startswith("env:") and not ENV_NAME_RE.match(value[4:]):
            self.problem(file, "env: must be followed by a variable name", provider, field)
            return None
        ref = SecretRef(value, scope, str(file), field, provider)
        self.secrets.append(ref)
        return ref

    def env_prefixes(self, value, file: Path) -> tuple[str, ...]:
        """`admin.env_prefixes`: variable name prefixes the admin API may use."""
        if isinstance(value, list) and all(
            isinstance(p, str) and ENV_NAME_RE.match(p) for p in value
        ):
            return tuple(value)
        example = "must be a list of environment variable name prefixes, e.g. [GATEWAY_PROVIDER_]"
        self.problem(file, example, field="admin.env_prefixes")
        return ()

    def number(self, value, *, file, field, provider=None, minimum=0.0, integer=False):
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or value <= minimum:
            kind = "an integer" if integer else "a number"
            self.problem(file, f"must be {kind} greater than {minimum:g}", provider, field)
            return None
        return value

    def provider(self, raw, file: Path, source: str, index: int) -> ProviderConfig | None:
        label = f"providers[{index}]" if source == "config" else None
        if not isinstance(raw, Mapping):
            self.problem(file, "a provider must be a mapping", label)
            return None
        name = raw.get("name")
        before = len(self.problems)
        if not isinstance(name, str) or not NAME_RE.match(name):
            # Every line about this provider names it the same way: by the
            # name as written when there is one, by position only when not
            # (a fragment without a name is named by its file alone).
            shown = label if name is None or name == "" else printable(str(name))[:64]
            self.problem(
                file,
                "required: a slug of lowercase letters, digits, '-' and '_' (max 63)",
                shown,
                "name",
            )
            pname = shown or ""
        elif name in RESERVED_NAMES:
            # These are the scopes of auth.api_keys and admin.token: a
            # provider by that name could be handed their sealed values and
            # send them to a base_url of anyone's choosing.
            self.problem(file, f"'{name}' is reserved; choose another name", name, "name")
            pname = name
        else:
            pname = name
            if name in self.names:
                first = self.names[name]
                self.problem(
                    file, f"duplicate provider name (first defined in {first})", name, "name"
                )
            else:
                self.names[name] = str(file)
        self.unknown_keys(raw, PROVIDER_KEYS, file, pname)

        ptype = raw.get("provider_type", "custom")
        if ptype not in PROVIDER_TYPES:
            self.problem(
                file,
                f"unknown provider_type {ptype!r} (known: {', '.join(PROVIDER_TYPES)})",
                pname,
                "provider_type",
            )
        base_url = default_base_url(raw)  # the first of `replicas` if only they are given
        if base_url is None and ptype == "openai":
            base_url = OPENAI_BASE_URL
        if base_url is None:
            self.problem(file, "required for provider_type custom", pname, "base_url")
        else:
            base_url = self.base_url(base_url, file, pname)

        api_key = None
        if raw.get("api_key") is not None:
            api_key = self.secret(
                raw["api_key"], file=file, field="api_key", scope=pname, provider=pname
            )

        headers: list[tuple[str, str]] = []
        raw_headers = raw.get("headers") or {}
        if not isinstance(raw_headers, Mapping):
            self.problem(file, "must be a mapping of header name to value", pname, "headers")
        else:
            for hname, hvalue in raw_headers.items():
                # The name may hold CR/LF itself: escaped, for a one-line error.
                fname = f"headers.{printable(str(hname))}"
                bad_name = header_name_problem(hname)
                if bad_name:
                    self.problem(file, bad_name, pname, fname)
                elif hname.lower() in RESERVED_HEADERS:
                    self.problem(file, "set by the gateway; cannot be configured", pname, fname)
                elif not isinstance(hvalue, (str, int, float)) or isinstance(hvalue, bool):
                    self.problem(file, "must be a string", pname, fname)
                elif bad_value := header_value_problem(str(hvalue)):
                    self.problem(file, bad_value, pname, fname)
                else:
                    headers.append((hname, str(hvalue)))

        models = None
        if raw.get("models") is not None:
            raw_models = raw["models"]
            if not isinstance(raw_models, list) or not all(
                isinstance(m, str) and m for m in raw_models
            ):
                self.problem(file, "must be a list of model names", pname, "models")
            else:
                models = tuple(dict.fromkeys(raw_models))

        timeouts = Timeouts()
        raw_timeouts = raw.get("timeouts")
        if raw_timeouts is not None:
            if not isinstance(raw_timeouts, Mapping):
                self.problem(file, "must be a mapping", pname, "timeouts")
            else:
                allowed = {"connect", "first_byte", "idle"}
                self.unknown_keys(raw_timeouts, allowed, file, pname, "timeouts.")
                values = {}
                for key in allowed & raw_timeouts.keys():
                    v = self.number(
                        raw_timeouts[key], file=file, field=f"timeouts.{key}", provider=pname
                    )
                    if v is not None:
                        values[key] = float(v)
                timeouts = Timeouts(**values)

        max_conn = raw.get("max_connections", 100)
        max_conn = self.number(
            max_conn, file=file, field="max_connections", provider=pname, integer=True
        )

        ca_file = raw.get("ca_file")
        ca_pem = None
        if ca_file is not None:
            ca_pem = self.ca_bundle(ca_file, file, pname, base_url)

        proxy = None
        if raw.get("proxy") is not None:
            proxy = self.proxy_url(raw["proxy"], file, pname)
        proxy_auth = None
        if raw.get("proxy_auth") is not None:
            if raw.get("proxy") is None:
                self.problem(file, "set only with proxy", pname, "proxy_auth")
            proxy_auth = self.secret(
                raw["proxy_auth"], file=file, field="proxy_auth", scope=pname, provider=pname
            )

        api = parse_api_options(self, raw, file, pname)
        replicas = parse_replica_options(self, raw, file, pname, base_url)

        if len(self.problems) > before:
            return None
        return ProviderConfig(
            name=pname,
            provider_type=ptype,
            base_url=base_url,
            api_key=api_key,
            headers=tuple(headers),
            models=models,
            timeouts=timeouts,
            max_connections=max_conn,
            ca_file=ca_file,
            ca_pem=ca_pem,
            proxy=proxy,
            proxy_auth=proxy_auth,
            api=api,
            replicas=replicas,
            source=source,
            file=str(file),
        )

    def ca_bundle(self, value, file: Path, pname: str, base_url: str | None) -> str | None:
        """The PEM text of `ca_file` (relative to `file`'s directory), if usable."""
        if not isinstance(value, str) or not value:
            self.problem(file, "must be a path to a PEM file of CA certificates", pname, "ca_file")
            return None
        if isinstance(base_url, str) and URL(base_url).scheme != "https":
            self.problem(file, "only applies to an https:// base_url", pname, "ca_file")
            return None
        path = file.parent / value
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.problem(file, f"cannot read {path}: {exc.strerror}", pname, "ca_file")
            return None
        self.digest.update(data)
        try:
            pem = data.decode("ascii")
            if "-----BEGIN CERTIFICATE-----" not in pem:
                raise ValueError
            # A bare context: only this bundle is parsed, not the system's.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
        except (ValueError, ssl.SSLError):
            self.problem(file, f"{path} holds no usable PEM CA certificate", pname, "ca_file")
            return None
        return pem

    def proxy_url(self, value, file: Path, pname: str) -> str | None:
        """`http://host:port` of an outbound proxy, normalised; None if unusable."""
        example = "must be http://HOST:PORT of an HTTP proxy, e.g. http://10.0.0.1:3128"
        try:
            url = URL(value) if isinstance(value, str) else None
        except ValueError:
            url = None
        if url is None or url.scheme != "http" or not url.host:
            self.problem(file, example, pname, "proxy")
            return None
        if url.user or url.password:
            self.problem(file, "proxy credentials are not supported", pname, "proxy")
            return None
        if url.path not in ("", "/") or url.query_string or url.fragment:
            self.problem(file, example, pname, "proxy")
            return None
        host = f"[{url.host}]" if ":" in url.host else url.host
        return f"http://{host}:{url.port}"

    def base_url(self, value, file, pname) -> str | None:
        if not isinstance(value, str) or not value:
            self.problem(file, "must be a URL string", pname, "base_url")
            return None
        try:
            url = URL(value)
        except ValueError as exc:
            self.problem(file, f"not a valid URL: {exc}", pname, "base_url")
            return None
        if url.scheme not in ("http", "https") or not url.host:
            self.problem(
                file,
                "must be an absolute http:// or https:// URL, e.g. http://127.0.0.1:8000/v1",
                pname,
                "base_url",
            )
            return None
        if url.user or url.password:
            self.problem(file, "must not contain credentials; use api_key", pname, "base_url")
            return None
        if url.query_string or url.fragment:
            self.problem(file, "must not have a query or fragment", pname, "base_url")
            return None
        return value.rstrip("/")


# libyaml's parser when PyYAML was built with it (the wheels are): the pure
# Python one took 85% of a 200-provider reload's ~110 ms, on the event loop.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, with libyaml where available."""
    return yaml.load(text, Loader=_YAML_LOADER)


def _read_yaml(path: Path, parser: _Parser) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        parser.problem(path, "file not found")
        return None
    except OSError as exc:
        parser.problem(path, f"cannot read: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        parser.problem(path, "not UTF-8 text")
        return None
    parser.digest.update(str(path).encode())
    parser.digest.update(text.encode())
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or "invalid YAML"
        parser.problem(path, f"invalid YAML{where}: {reason}")
        return None


def include_files(include_dir: Path) -> list[Path]:
    """The fragment files of an include directory, in a stable order."""
    return sorted(
        p
        for p in include_dir.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
    )


def _auth_config(parser: _Parser, raw: Any, path: Path) -> AuthConfig | None:
    """`auth.api_keys`: plain secrets (named key-1, key-2... by position) or
    `{name: team-a, key: <secret>}` mappings."""
    if not isinstance(raw, Mapping):
        parser.problem(path, "must be a mapping with api_keys", field="auth")
        return None
    parser.unknown_keys(raw, {"api_keys"}, path, prefix="auth.")
    keys = raw.get("api_keys")
    if not isinstance(keys, list) or not keys:
        parser.problem(path, "must be a non-empty list", field="auth.api_keys")
        return None
    refs, names = [], []
    for i, entry in enumerate(keys):
        where = name_field = key_field = f"auth.api_keys[{i}]"
        name, value = f"key-{i + 1}", entry
        if isinstance(entry, Mapping):
            parser.unknown_keys(entry, {"name", "key"}, path, prefix=f"{where}.")
            name, value = entry.get("name"), entry.get("key")
            name_field, key_field = f"{where}.name", f"{where}.key"
            if not isinstance(name, str) or not NAME_RE.match(name):
                message = "required: a slug of lowercase letters, digits, '-' and '_' (max 63)"
                parser.problem(path, message, field=name_field)
                name = None
        if name is not None and name in names:
            parser.problem(path, f"duplicate client name '{name}'", field=name_field)
        refs.append(parser.secret(value, file=path, field=key_field, scope="auth"))
        names.append(name)
    if not all(refs) or None in names or len(set(names)) != len(names):
        return None
    return AuthConfig(tuple(refs), tuple(names))


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate the config file and its fragments. Raises ConfigError."""
    path = Path(path)
    parser = _Parser()
    data = _read_yaml(path, parser)
    if parser.problems:
        raise ConfigError(parser.problems)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([Problem(str(path), "the top level must be a mapping")])
    parser.unknown_keys(data, TOP_KEYS, path)
    base = path.parent
    files = [path]

    listen_host, listen_port = parse_listen(DEFAULT_LISTEN)
    if "listen" in data:
        try:
            listen_host, listen_port = parse_listen(data["listen"])
        except (ValueError, TypeError) as exc:
            parser.problem(path, f"{data['listen']!r}: {exc}", field="listen")

    seal_key_file = None
    if data.get("seal_key_file") is not None:
        if not isinstance(data["seal_key_file"], str):
            parser.problem(path, "must be a path", field="seal_key_file")
        else:
            seal_key_file = base / data["seal_key_file"]

    auth = None
    if data.get("auth") is not None:
        auth = _auth_config(parser, data["auth"], path)

    admin = None
    if data.get("admin") is not None:
        raw = data["admin"]
        if not isinstance(raw, Mapping):
            parser.problem(path, "must be a mapping with token", field="admin")
        else:
            parser.unknown_keys(raw, {"token", "writable", "env_prefixes"}, path, prefix="admin.")
            writable = raw.get("writable", True)
            if not isinstance(writable, bool):
                parser.problem(path, "must be true or false", field="admin.writable")
            prefixes = parser.env_prefixes(raw.get("env_prefixes", []), path)
            token = parser.secret(raw.get("token"), file=path, field="admin.token", scope="admin")
            if token:
                admin = AdminConfig(token, bool(writable), prefixes)

    limits = Limits()
    if data.get("limits") is not None:
        raw = data["limits"]
        if not isinstance(raw, Mapping):
            parser.problem(path, "must be a mapping", field="limits")
        else:
            # Sizes and counts are whole numbers; times are seconds (0.5 is fine).
            seconds = {"head_timeout", "body_idle_timeout", "keepalive_timeout"}
            allowed = {"max_body_bytes", "max_header_bytes", "max_connections", *seconds}
            parser.unknown_keys(raw, allowed, path, prefix="limits.")
            values = {}
            for key in (k for k in raw if k in allowed):
                v = parser.number(
                    raw[key], file=path, field=f"limits.{key}", integer=key not in seconds
                )
                if v is not None and not v < float("inf"):  # YAML's .inf and .nan
                    parser.problem(path, "must be a finite number", field=f"limits.{key}")
                elif v is not None:
                    values[key] = v
            limits = Limits(**values)

    access_log = AccessLog()
    if data.get("access_log") is not None:
        raw = data["access_log"]
        if isinstance(raw, bool):
            access_log = AccessLog(enabled=raw)
        elif not isinstance(raw, Mapping):
            parser.problem(path, "must be true, false or a mapping", field="access_log")
        else:
            parser.unknown_keys(raw, {"enabled", "sample_rate"}, path, prefix="access_log.")
            enabled = raw.get("enabled", True)
            rate = raw.get("sample_rate", 1.0)
            if not isinstance(enabled, bool):
                parser.problem(path, "must be true or false", field="access_log.enabled")
            elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
                parser.problem(path, "must be a number in (0, 1]", field="access_log.sample_rate")
            else:
                access_log = AccessLog(enabled=enabled, sample_rate=float(rate))

    models = ModelsSettings()
    if data.get("models") is not None:
        raw = data["models"]
        if not isinstance(raw, Mapping):
            parser.problem(path, "must be a mapping", field="models")
        else:
            parser.unknown_keys(raw, {"cache_ttl", "fetch_timeout"}, path, prefix="models.")
            values = {}
            for key in ("cache_ttl", "fetch_timeout"):
                if key in raw:
                    v = parser.number(raw[key], file=path, field=f"models.{key}", minimum=-1e-9)
                    if v is not None:
                        values[key] = float(v)
            models = ModelsSettings(**values)

    cors = parse_cors(parser, data.get("cors"), path)
    usage = parse_usage(parser, data.get("usage"), path)
    tracing = parse_tracing(parser, data.get("tracing"), path)

    providers: list[ProviderConfig] = []
    raw_providers = data.get("providers") or []
    if not isinstance(raw_providers, list):
        parser.problem(path, "must be a list of providers", field="providers")
        raw_providers = []
    for i, raw in enumerate(raw_providers):
        p = parser.provider(raw, path, "config", i)
        if p:
            providers.append(p)

    include = None
    if data.get("include") is not None:
        if not isinstance(data["include"], str):
            parser.problem(path, "must be a directory path", field="include")
        else:
            include = base / data["include"]
            if not include.is_dir():
                parser.problem(path, f"directory {include} does not exist", field="include")
            else:
                for frag in include_files(include):
                    files.append(frag)
                    raw = _read_yaml(frag, parser)
                    if raw is None:
                        continue
                    p = parser.provider(raw, frag, "store", 0)
                    if p is None:
                        continue
                    providers.append(p)

    aliases: dict[str, tuple[tuple[str, str], ...]] = {}
    raw_aliases = data.get("aliases") or {}
    if not isinstance(raw_aliases, Mapping):
        parser.problem(path, "must map an alias name to a list of PROVIDER/MODEL", field="aliases")
        raw_aliases = {}
    for alias, targets in raw_aliases.items():
        fname = f"aliases.{alias}"
        if not isinstance(alias, str) or not alias:
            parser.problem(path, "an alias name must be a non-empty string", field=fname)
            continue
        if alias.partition("/")[0] in parser.names:
            parser.problem(
                path, "an alias must not start with a provider name and '/'", field=fname
            )
            continue
        if not isinstance(targets, list) or not targets:
            parser.problem(path, "must be a non-empty list of PROVIDER/MODEL", field=fname)
            continue
        resolved = []
        for i, target in enumerate(targets):
            provider, _, model = target.partition("/") if isinstance(target, str) else ("", "", "")
            if not model:
                parser.problem(path, "must be PROVIDER/MODEL", field=f"{fname}[{i}]")
            elif provider not in parser.names:
                parser.problem(path, f"no provider named '{provider}'", field=f"{fname}[{i}]")
            else:
                resolved.append((provider, model))
        aliases[alias] = tuple(resolved)

    if parser.problems:
        raise ConfigError(parser.problems, tuple(parser.secrets), seal_key_file)
    return GatewayConfig(
        path=path,
        listen_host=listen_host,
        listen_port=listen_port,
        include=include,
        seal_key_file=seal_key_file,
        auth=auth,
        admin=admin,
        providers=tuple(providers),
        limits=limits,
        models=models,
        aliases=MappingProxyType(aliases),
        access_log=access_log,
        cors=cors,
        usage=usage,
        tracing=tracing,
        files=tuple(files),
        digest=parser.digest.hexdigest()[:16],
    )


def config_path_from_env(cli_value: str | None) -> Path:
    """--config wins, then GATEWAY_CONFIG, then the default."""
    return Path(cli_value or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH)


def parse_provider(
    raw: object, file: str | os.PathLike[str]
) -> tuple[ProviderConfig | None, list[Problem]]:
    """Validate one provider as an `include:` fragment, with the loader's own rules.

    Used by the admin API so that a provider it accepts is exactly one the
    config loader accepts.
    """
    parser = _Parser()
    provider = parser.provider(raw, Path(file), "store", 0)
    return provider, parser.problems
