"""Reload: build a whole new snapshot off to the side, then swap one reference.

A config that fails to parse, validate or unseal is rejected whole: the old
snapshot keeps serving, and the failure is kept for operators to see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, GatewayConfig
from .config.check_all import load_config, load_resolver
from .demo_port import moved_demo
from .secrets import SecretResolver
from .snapshot import Snapshot, SnapshotHolder, build_snapshot

log = logging.getLogger("gateway.reload")


def resolver_for(config: GatewayConfig) -> SecretResolver:
    """The secret resolver a config asks for, with the private keys it names.

    GATEWAY_SEAL_KEY_FILE (a key file or a directory of `*.key` files) wins
    over `seal_key_file`. A key that is named but does not load is a
    ConfigError on `seal_key_file`; the env: and plain secrets are still
    resolved so that `gateway check` reports every failure in one run.
    With no key named, each sealed value fails on its own field.
    """
    from .secrets import config_secret_refs

    resolver, key_problem = load_resolver(config.seal_key_file, config.path)
    if key_problem is not None:
        others = [r for r in config_secret_refs(config) if r.kind != "sealed"]
        raise ConfigError([key_problem, *resolver.resolve_all(others)[1]]) from None
    return resolver


def load_snapshot(path: Path, previous: Snapshot | None = None) -> Snapshot:
    """Parse, validate and unseal everything. Raises ConfigError listing every
    problem, the secrets' included even when the structure is broken."""
    config = moved_demo(load_config(path))  # unchanged without `serve --demo-port`
    return build_snapshot(config, resolver_for(config), previous)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class ReloadStatus:
    """What operators see about reloads: /readyz shows it, /metrics exports the counters."""

    successes: int = 0
    failures: int = 0
    last_success: float | None = None  # wall time; the initial load counts
    # The most recent rejection. Kept after a later success (compare the
    # times, or read last_reload_ok) so that a flapping config stays visible.
    last_error: str | None = None
    last_error_at: float | None = None
    last_reload_ok: bool = True
    config_hash: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "config_hash": self.config_hash,
            "last_reload_ok": self.last_reload_ok,
            "last_success": _iso(self.last_success),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "successes": self.successes,
            "failures": self.failures,
        }


class Reloader:
    """Makes the config on disk live, whole or not at all, one reload at a time.

    `reload()` is synchronous and every caller (the SIGHUP handler, the
    watcher, the admin API) runs it on the event loop thread, so no two
    reloads can overlap and no request code runs between reading the old
    snapshot and swapping in the new one. Parsing and unsealing is short
    enough for that: about 30 ms for 200 providers with sealed keys (half of
    it unsealing), a few ms for the usual dozen; not worth a thread and a
    lock. Call it only from the loop thread: the swap schedules pool closes
    on the running loop.
    """

    def __init__(self, path: Path, holder: SnapshotHolder):
        self.path = path
        self.holder = holder
        self.status = ReloadStatus(
            last_success=holder.current.loaded_at, config_hash=holder.current.digest
        )
        # Called with each snapshot swapped in (model_warmup.ModelWarmer.warm).
        self.on_swap: list[Callable[[Snapshot], None]] = []

    def reload(self, reason: str = "requested", only_if_changed: bool = False) -> bool:
        """Try to make the config on disk live. True when it is live.

        `reason` (e.g. "SIGHUP", "file change") only goes into the log line.
        With `only_if_changed`, a config identical to the live one (same
        digest) is not swapped in nor counted as a reload.
        """
        current = self.holder.current
        try:
            snapshot = load_snapshot(self.path, current)
        except ConfigError as exc:
            return self._reject(reason, "; ".join(str(p) for p in exc.problems))
        except Exception as exc:
            # A bug must not take the watcher or the SIGHUP handler down, nor
            # leave a half-built config live: reject like any bad config.
            log.debug("reload failed unexpectedly", exc_info=True)
            return self._reject(reason, f"unexpected {type(exc).__name__}: {exc}")
        if only_if_changed and snapshot.digest == current.digest:
            # What is on disk is what serves: any earlier rejection is over.
            self.status.last_reload_ok = True
            log.debug("config unchanged (%s): %s stays live", reason, current.digest)
            return True
        old = self.holder.swap(snapshot)
        for listener in self.on_swap:
            listener(snapshot)
        status = self.status
        status.successes += 1
        status.last_success = snapshot.loaded_at
        status.last_reload_ok = True
        status.config_hash = snapshot.digest
        new, prev = snapshot.providers, old.providers
        added = sorted(n for n in new if n not in prev)
        removed = sorted(n for n in prev if n not in new)
        changed = sorted(n for n in new if n in prev and new[n] is not prev[n])
        if old.digest != snapshot.digest or added or removed or changed:
            log.info(
                "config reloaded (%s): %s -> %s; providers added %s, removed %s, changed %s",
                reason,
                old.digest,
                snapshot.digest,
                ", ".join(added) or "-",
                ", ".join(removed) or "-",
                ", ".join(changed) or "-",
            )
        return True

    def _reject(self, reason: str, message: str) -> bool:
        status = self.status
        status.failures += 1
        status.last_error = message
        status.last_error_at = time.time()
        status.last_reload_ok = False
        log.error(
            "config reload (%s) rejected, still serving config %s: %s",
            reason,
            self.holder.current.digest,
            message,
        )
        return False
