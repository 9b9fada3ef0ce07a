"""Reload: build a whole new snapshot off to the side, then swap one reference.

A config that fails to parse, validate or unseal is rejected whole: the old
snapshot keeps serving, and the failure is kept for operators to see.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, GatewayConfig, load_config
from .secrets import SecretResolver
from .snapshot import Snapshot, SnapshotHolder, build_snapshot

log = logging.getLogger("gateway.reload")


def resolver_for(config: GatewayConfig) -> SecretResolver:
    """The secret resolver a config asks for (grows with sealing)."""
    return SecretResolver()


def load_snapshot(path: Path, previous: Snapshot | None = None) -> Snapshot:
    """Parse, validate and unseal everything. Raises ConfigError."""
    config = load_config(path)
    return build_snapshot(config, resolver_for(config), previous)


@dataclass
class ReloadStatus:
    successes: int = 0
    failures: int = 0
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


class Reloader:
    def __init__(self, path: Path, holder: SnapshotHolder):
        self.path = path
        self.holder = holder
        self.status = ReloadStatus(last_success=holder.current.loaded_at)

    def reload(self) -> bool:
        """Try to make the config on disk live. True when it was swapped in."""
        try:
            snapshot = load_snapshot(self.path, self.holder.current)
        except ConfigError as exc:
            self.status.failures += 1
            self.status.last_error = str(exc)
            self.status.last_error_at = time.time()
            log.error(
                "config reload rejected, still serving config %s: %s",
                self.holder.current.digest,
                "; ".join(str(p) for p in exc.problems),
            )
            return False
        old = self.holder.swap(snapshot)
        self.status.successes += 1
        self.status.last_success = snapshot.loaded_at
        if old.digest != snapshot.digest:
            log.info("config reloaded: %s -> %s", old.digest, snapshot.digest)
        return True
