"""A provider as several replicas of one backend: the config fields and their rules.

```yaml
- name: vllm
  replicas: [http://10.0.0.1:8000/v1, http://10.0.0.2:8000/v1]   # same path, scheme, key
  balancing: {affinity: {header: X-Session-Id}, eject_after: 3}
  health_check: {path: /health, interval: 10}
- name: vllm-k8s
  base_url: http://vllm.models.svc.cluster.local:8000/v1         # a headless Service
  discovery: {dns: true, interval: 10}                           # every address a replica
```

`base_url` stays what the provider is known by (model listing, the admin
API): with `replicas` it may be left out (the first one) or must be one of
them. Replicas that differ in scheme or path would need different request
lines, so they are an error, as are duplicates. `gateway check` reports
these as ordinary config problems naming the file, provider and field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from yarl import URL

from ..headercheck import header_name_problem

if TYPE_CHECKING:  # validate.py imports these modules (through schema.py)
    from .validate import Parser

MAX_REPLICAS = 256  # listed URLs, and addresses kept from one DNS answer
MAX_PREFIX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Affinity:
    """What keeps a conversation on one replica: a header, `user`, or a prompt prefix."""

    kind: str  # "header" | "user" | "prefix"
    header: str = ""  # the header's name, for "header"
    prefix_bytes: int = 0  # for "prefix"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str  # GET on each replica's server, e.g. /health or /v1/models
    interval: float = 10.0
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    urls: tuple[str, ...] = ()  # listed replicas (base URLs), or () with one base_url
    dns: bool = False  # resolve base_url's host on a period; every address is a replica
    dns_interval: float = 10.0
    affinity: Affinity | None = None
    eject_after: int = 3  # consecutive connect failures or 5xx
    eject_seconds: float = 5.0  # the first ejection; doubles on each one in a row
    eject_max_seconds: float = 300.0
    retry_after_max: float = 300.0  # a 429's Retry-After is capped at this
    health_check: HealthCheck | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.urls) or self.dns


NO_REPLICAS = ReplicaOptions()
REPLICA_FIELDS = ("replicas", "discovery", "balancing", "health_check")


def default_base_url(raw: Mapping) -> object:
    """`base_url` as written, or the first replica when only `replicas` is given."""
    base_url = raw.get("base_url")
    replicas = raw.get("replicas")
    if base_url is None and isinstance(replicas, list) and replicas:
        return replicas[0]
    return base_url


def parse_replica_options(
    p: Parser, raw: Mapping, file: Any, pname: str, base_url: str | None
) -> ReplicaOptions:
    """The replica fields of one provider; problems go to `p`."""
    if not any(raw.get(f) is not None for f in REPLICA_FIELDS):
        return NO_REPLICAS
    urls = _urls(p, raw.get("replicas"), file, pname, base_url)
    dns, interval = _discovery(p, raw.get("discovery"), file, pname, base_url)
    if urls and dns:
        p.problem(file, "give either replicas or discovery, not both", pname, "discovery")
    if not urls and not dns:
        for f in ("balancing", "health_check"):
            if raw.get(f) is not None:
                p.problem(file, "applies only with replicas or discovery", pname, f)
        return NO_REPLICAS
    if raw.get("proxy") is not None and URL(base_url or "http://x").scheme == "http":
        # Through a proxy a plain-http request line names the host itself.
        p.problem(file, "replicas through a proxy must be https://", pname, "proxy")
    balancing = _balancing(p, raw.get("balancing"), file, pname)
    return ReplicaOptions(
        urls=urls,
        dns=dns,
        dns_interval=interval,
        health_check=_health_check(p, raw.get("health_check"), file, pname),
        **balancing,
    )


def _urls(p: Parser, value, file, pname: str, base_url: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_REPLICAS:
        p.problem(file, f"must be a list of 2 to {MAX_REPLICAS} URLs", pname, "replicas")
        return ()
    seen: dict[str, int] = {}
    first: URL | None = None
    out = []
    for i, item in enumerate(value):
        field = f"replicas[{i}]"
        url = _url(p, item, file, pname, field)
        if url is None:
            continue
        text = str(item).rstrip("/")
        if text in seen:
            p.problem(file, f"duplicate of replicas[{seen[text]}]", pname, field)
            continue
        seen[text] = i
        if first is None:
            first = url
        elif url.scheme != first.scheme or url.raw_path.rstrip("/") != first.raw_path.rstrip("/"):
            p.problem(
                file,
                f"every replica must have the same scheme and path as replicas[0] "
                f"({first.scheme}://...{first.raw_path.rstrip('/') or '/'})",
                pname,
                field,
            )
            continue
        out.append(text)
    if base_url is not None and out and base_url not in out:
        p.problem(file, "with replicas, must be one of them (or left out)", pname, "base_url")
    return tuple(out)


def _url(p: Parser, item, file, pname: str, field: str) -> URL | None:
    try:
        url = URL(item) if isinstance(item, str) and item else None
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        p.problem(file, "must be an http:// or https:// URL with a host", pname, field)
        return None
    if url.user or url.password or url.query_string or url.fragment:
        p.problem(file, "must have no credentials, query or fragment", pname, field)
        return None
    if url.explicit_port == 0:
        p.problem(file, "port 0 can never be reached", pname, field)
        return None
    return url


def _discovery(p: Parser, value, file, pname: str, base_url: str | None) -> tuple[bool, float]:
    if value is None:
        return False, 10.0
    if not isinstance(value, Mapping):
        p.problem(file, "must be a mapping, e.g. {dns: true, interval: 10}", pname, "discovery")
        return False, 10.0
    p.unknown_keys(value, {"dns", "interval"}, file, pname, "discovery.")
    dns = value.get("dns", False)
    if not isinstance(dns, bool):
        p.problem(file, "must be true or false", pname, "discovery.dns")
        dns = False
    interval = _number(p, value.get("interval", 10.0), file, pname, "discovery.interval", 0.5)
    if dns and base_url is not None and _is_address(URL(base_url).host or ""):
        # An address resolves to itself: there is nothing to discover.
        p.problem(file, "base_url must name a DNS host to discover", pname, "discovery.dns")
    return dns, interval or 10.0


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _balancing(p: Parser, value, file, pname: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        p.problem(file, "must be a mapping", pname, "balancing")
        return {}
    allowed = {"affinity", "eject_after", "eject_seconds", "eject_max_seconds", "retry_after_max"}
    p.unknown_keys(value, allowed, file, pname, "balancing.")
    out: dict[str, Any] = {}
    for key in allowed - {"affinity"}:
        if key in value:
            integer = key == "eject_after"
            n = _number(p, value[key], file, pname, f"balancing.{key}", 0, integer)
            if n is not None:
                out[key] = n if integer else float(n)
    if value.get("affinity") is not None:
        out["affinity"] = _affinity(p, value["affinity"], file, pname)
    return out


def _affinity(p: Parser, value, file, pname: str) -> Affinity | None:
    field = "balancing.affinity"
    example = "must be one of {header: X-Session-Id}, {field: user} or {prefix_bytes: 1024}"
    if not isinstance(value, Mapping) or len(value) != 1:
        p.problem(file, example, pname, field)
        return None
    ((key, v),) = value.items()
    if key == "header":
        bad = header_name_problem(v)
        if bad:
            p.problem(file, bad, pname, f"{field}.header")
            return None
        return Affinity("header", header=v)
    if key == "field" and v == "user":
        return Affinity("user")
    if key == "prefix_bytes":
        n = _number(p, v, file, pname, f"{field}.prefix_bytes", 0, True)
        if n is not None and n > MAX_PREFIX_BYTES:
            p.problem(file, f"at most {MAX_PREFIX_BYTES}", pname, f"{field}.prefix_bytes")
            return None
        return Affinity("prefix", prefix_bytes=n) if n else None
    p.problem(file, example, pname, field)
    return None


def _health_check(p: Parser, value, file, pname: str) -> HealthCheck | None:
    if value is None:
        return None
    field = "health_check"
    if not isinstance(value, Mapping) or not isinstance(value.get("path"), str):
        p.problem(file, "must be a mapping with a path, e.g. {path: /health}", pname, field)
        return None
    p.unknown_keys(value, {"path", "interval", "timeout"}, file, pname, "health_check.")
    path = value["path"]
    if not path.startswith("/") or any(c in path for c in " \r\n\t?#") or len(path) > 512:
        p.problem(file, "must be an absolute path such as /health", pname, f"{field}.path")
        return None
    interval = _number(p, value.get("interval", 10.0), file, pname, f"{field}.interval", 0.1)
    timeout = _number(p, value.get("timeout", 2.0), file, pname, f"{field}.timeout", 0)
    return HealthCheck(path, float(interval or 10.0), float(timeout or 2.0))


def _number(p: Parser, value, file, pname: str, field: str, minimum: float, integer=False):
    ok = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok) or value < minimum or value <= 0:
        kind = "an integer" if integer else "a number"
        p.problem(file, f"must be {kind} greater than {minimum:g}", pname, field)
        return None
    return value


def as_record(options: ReplicaOptions) -> dict[str, object]:
    """The replica fields as the admin API shows (and takes back) them."""
    if not options.enabled:
        return {f: None for f in REPLICA_FIELDS}
    a = options.affinity
    affinity = None
    if a is not None:
        affinity = (
            {"header": a.header}
            if a.kind == "header"
            else {"field": "user"}
            if a.kind == "user"
            else {"prefix_bytes": a.prefix_bytes}
        )
    h = options.health_check
    return {
        "replicas": list(options.urls) or None,
        "discovery": {"dns": True, "interval": options.dns_interval} if options.dns else None,
        # Only what differs from the defaults, as a person would write it.
        "balancing": {
            k: v
            for k, v in (
                ("affinity", affinity),
                ("eject_after", options.eject_after),
                ("eject_seconds", options.eject_seconds),
                ("eject_max_seconds", options.eject_max_seconds),
                ("retry_after_max", options.retry_after_max),
            )
            if v != getattr(NO_REPLICAS, k)
        }
        or None,
        "health_check": None
        if h is None
        else {"path": h.path, "interval": h.interval, "timeout": h.timeout},
    }
