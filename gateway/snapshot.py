"""The immutable snapshot a request runs on, and the one reference that swaps.

A `Snapshot` is built from a validated `GatewayConfig` with every secret
resolved. Each provider gets a `ProviderRuntime` (gateway/runtime.py): its upstream request
pieces computed once, the hot path's keep-alive pool (`gateway.proxy.upstream`)
and an aiohttp `ClientSession` for model listing and the admin API, both
created on first use.
A reload builds a new snapshot, reusing the runtimes of providers whose
config and key did not change (no reconnect storm), and then swaps
`SnapshotHolder.current` in one assignment.

Pools are closed by reference counting, so that no request ever loses its
pool under it: a handler leases the snapshot it reads (`holder.acquire()` /
`holder.release()`), each runtime counts the snapshots that hold it (the
current one plus superseded ones still leased), and a runtime is closed when
that count reaches zero: every request using it holds such a lease, so none
is left by then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .config import ConfigError, GatewayConfig, Problem
from .runtime import ProviderRuntime
from .secrets import Secret, SecretResolver, config_secret_refs

log = logging.getLogger("gateway.snapshot")


class SnapshotLease:
    """A snapshot's mutable bookkeeping: requests using it, and whether it was superseded."""

    __slots__ = ("superseded", "users")

    def __init__(self) -> None:
        self.users = 0
        self.superseded = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: GatewayConfig
    providers: Mapping[str, ProviderRuntime]
    # model id -> provider, from static `models:` lists, for unprefixed models
    static_models: Mapping[str, ProviderRuntime]
    auth_keys: tuple[Secret, ...] | None
    admin_token: Secret | None
    digest: str
    loaded_at: float
    # (plain text, scope) -> sealed text with the gateway's public key, or None
    seal: Callable[[str, str], str] | None = None
    lease: SnapshotLease = field(default_factory=SnapshotLease, compare=False, repr=False)


def build_snapshot(
    config: GatewayConfig,
    resolver: SecretResolver,
    previous: Snapshot | None = None,
) -> Snapshot:
    """Resolve every secret and build runtimes. Raises ConfigError listing all failures."""
    secrets, problems = resolver.resolve_all(config_secret_refs(config))
    for pc in config.providers:
        auth = secrets.get(pc.proxy_auth) if pc.proxy_auth else None
        if auth is not None and ":" not in auth.reveal():
            problems.append(
                Problem(pc.file, "must be USER:PASSWORD once unsealed", pc.name, "proxy_auth")
            )
    if problems:
        raise ConfigError(problems)

    old = previous.providers if previous else {}
    providers: dict[str, ProviderRuntime] = {}
    for pc in config.providers:
        runtime = ProviderRuntime(
            pc,
            secrets.get(pc.api_key) if pc.api_key else None,
            secrets.get(pc.proxy_auth) if pc.proxy_auth else None,
        )
        prior = old.get(pc.name)
        if prior is not None and prior.same_as(runtime):
            runtime = prior  # keep its pool and model cache
        providers[pc.name] = runtime

    static: dict[str, ProviderRuntime] = {}
    for runtime in providers.values():
        for model in runtime.config.models or ():
            static.setdefault(model, runtime)

    return Snapshot(
        config=config,
        providers=MappingProxyType(providers),
        static_models=MappingProxyType(static),
        auth_keys=tuple(secrets[r] for r in config.auth.api_keys) if config.auth else None,
        admin_token=secrets[config.admin.token] if config.admin else None,
        digest=config.digest,
        loaded_at=time.time(),
        seal=resolver.seal,
    )


class SnapshotHolder:
    """Holds the live snapshot: the gateway's only mutable reference.

    Every handler that uses a runtime leases the snapshot for the whole
    request (`acquire` at the start, `release` in `finally`). A superseded
    snapshot lets go of its runtimes when its last lease ends; a runtime that
    no snapshot holds any more is retired (its pool closes after its last
    request). All of this runs on the event loop thread.
    """

    def __init__(self, snapshot: Snapshot):
        self.current = snapshot
        # Superseded snapshots that still have requests, by id (Snapshot
        # holds mappings, so it is not hashable).
        self._draining: dict[int, Snapshot] = {}
        _hold(snapshot)

    def acquire(self) -> Snapshot:
        """The current snapshot, leased until `release(snapshot)`."""
        snapshot = self.current
        snapshot.lease.users += 1
        return snapshot

    def release(self, snapshot: Snapshot) -> None:
        lease = snapshot.lease
        lease.users -= 1
        if lease.superseded and lease.users == 0:
            self._let_go(snapshot)

    def swap(self, new: Snapshot) -> Snapshot:
        """Make `new` live in one assignment; return the snapshot it replaced."""
        old = self.current
        if new is old:
            return old
        # Hold the new snapshot's runtimes before letting go of the old one,
        # so that a runtime both share never drops to zero.
        _hold(new)
        self.current = new
        old.lease.superseded = True
        if old.lease.users == 0:
            self._let_go(old)
        else:
            self._draining[id(old)] = old
        return old

    def _let_go(self, snapshot: Snapshot) -> None:
        self._draining.pop(id(snapshot), None)
        for runtime in snapshot.providers.values():
            runtime.refs -= 1
            if runtime.refs == 0:
                runtime.retire()

    async def close(self) -> None:
        """Close every pool (at shutdown, once requests are over)."""
        runtimes = {id(r): r for r in self.current.providers.values()}
        for snapshot in self._draining.values():
            runtimes.update((id(r), r) for r in snapshot.providers.values())
        await asyncio.gather(*(r.close() for r in runtimes.values()))


def _hold(snapshot: Snapshot) -> None:
    for runtime in snapshot.providers.values():
        runtime.refs += 1
        if runtime.replicas is not None:
            runtime.replicas.start()  # DNS and health tasks; no-op without a loop
