"""`gateway check --probe`: can this machine reach every upstream the config names?

The plain check reads files only, so that a CI job without network access
can run it. With `--probe` it also opens a TCP connection to each upstream
(each listed replica, or the `base_url`; through `proxy:` the proxy), sends
nothing and closes it, and resolves each `discovery: {dns: true}` name. A
refused, unresolvable or silent address is a problem naming the provider and
the field, as the structural ones do. Connections are opened at most
_PARALLEL at a time, each bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from yarl import URL

from .config import GatewayConfig, ProviderConfig

_PARALLEL = 32


@dataclass(frozen=True)
class Target:
    provider: str
    field: str
    url: str  # what the config says, for the message
    host: str
    port: int
    dns: bool = False  # resolve only (a headless Service name): every address is a replica


def targets(config: GatewayConfig) -> list[Target]:
    out: list[Target] = []
    for p in config.providers:
        out += _provider_targets(p)
    return out


def _provider_targets(p: ProviderConfig) -> list[Target]:
    if p.proxy:
        proxy = URL(p.proxy)
        return [Target(p.name, "proxy", p.proxy, proxy.host or "", proxy.port or 80)]
    if p.replicas.urls:
        pairs = [(f"replicas[{i}]", u) for i, u in enumerate(p.replicas.urls)]
    else:
        pairs = [("base_url", p.base_url)]
    out = []
    for field, raw in pairs:
        url = URL(raw)
        out.append(Target(p.name, field, raw, url.host or "", url.port or 80, dns=p.replicas.dns))
    return out


async def _reach(t: Target, timeout: float) -> str | None:
    """Why `t` cannot be reached, or None."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if t.dns:
                found = await loop.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
                return None if found else f"{t.host} resolves to no address"
            _, writer = await asyncio.open_connection(t.host, t.port)
    except TimeoutError:
        return f"no answer from {t.host}:{t.port} within {timeout:g}s"
    except OSError as exc:
        return f"{t.host}:{t.port}: {exc.strerror or exc}"
    writer.close()
    return None


async def probe(config: GatewayConfig, where: str, timeout: float = 3.0) -> list[str]:
    """One line per upstream this machine cannot reach."""
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(t: Target) -> str | None:
        async with gate:
            why = await _reach(t, timeout)
        if why is None:
            return None
        return f"{where}: provider '{t.provider}': field '{t.field}': unreachable ({t.url}): {why}"

    found = await asyncio.gather(*(one(t) for t in targets(config)))
    return [line for line in found if line is not None]
