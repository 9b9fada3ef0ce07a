"""Watch the config file, its `include:` fragments and the seal key file(s).

GitOps changes arrive in three shapes, and all must be seen:

- an in-place write (same inode, new bytes);
- an editor's temp file renamed over the original (new inode);
- the Kubernetes ConfigMap/Secret swap: files are symlinks into `..data`,
  itself a symlink to a timestamped directory that kubelet replaces with one
  atomic rename. The file's own path never changes.

So this polls instead of using inotify (no new dependency, and an inotify
watch on a file follows the old inode and misses the symlink swap): every
`interval` seconds it fingerprints every watched path *through* its symlinks
(content digest, plus the listing of each watched directory) and compares.

Cost when nothing changes: each file is `stat`ed (following symlinks) and
re-read only when its (device, inode, size, mtime, ctime) changed. Timestamps
are coarse (the kernel stamps files from a clock that ticks every few ms;
some filesystems have 1-2 s resolution), so two same-size writes within one
tick look identical to `stat`. Like git's "racily clean" check, a file whose
mtime/ctime is within `racy_window` seconds of now is therefore always
re-hashed; after that no write can share its timestamp. ctime is in the
signature because tools can set mtime back (`cp -p`, `touch -d`) but never
ctime. The result is hashing only recently touched files, which keeps a
store of hundreds of fragments cheap to poll while never missing a write.

A change is acted on only once the fingerprint is the same on two polls in a
row (debounce: a burst of writes, or a non-atomic write seen half-done,
gives one reload of the final state), or after `max_delay` of continuous
change. Then `Reloader.reload()` validates the whole new config before it
goes live.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import time
from pathlib import Path

from .config import include_files
from .reload import Reloader

log = logging.getLogger("gateway.watcher")

SEAL_KEY_ENV = "GATEWAY_SEAL_KEY_FILE"

# path (or "DIR/" for a directory's listing) -> content digest, listing, or
# a marker for a path that is missing or unreadable.
Fingerprint = dict[str, object]

_MISSING = "missing"


class FileHasher:
    """Content digests of files, re-read only when `stat` says they may have changed."""

    def __init__(self, racy_window: float = 2.0):
        self.racy_ns = int(racy_window * 1e9)
        self.reads = 0  # files actually read and hashed (for tests and debugging)
        self._cache: dict[str, tuple[tuple[int, ...], str]] = {}
        self._used: set[str] = set()

    def digest(self, path: Path) -> str:
        key = str(path)
        self._used.add(key)
        try:
            st = os.stat(path)  # follows symlinks: a swapped target is a new inode
        except FileNotFoundError:
            return _MISSING
        except OSError as exc:
            return f"error {exc.errno}"
        if not stat.S_ISREG(st.st_mode):
            return f"not a file ({stat.filemode(st.st_mode)})"
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._cache.get(key)
        if (
            cached is not None
            and cached[0] == sig
            and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > self.racy_ns
        ):
            return cached[1]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return _MISSING
        except OSError as exc:
            return f"error {exc.errno}"
        self.reads += 1
        # The bytes were read after the stat: if they changed in between,
        # the next stat differs (or is racy) and they are read again.
        digest = hashlib.sha256(data).hexdigest()
        self._cache[key] = (sig, digest)
        return digest

    def prune(self) -> None:
        """Forget files not asked about since the last prune (removed, unwatched)."""
        self._cache = {k: v for k, v in self._cache.items() if k in self._used}
        self._used = set()


def _key_dir_files(directory: Path) -> list[Path]:
    # Skip dot entries: kubelet's `..data` and `..2026_...` bookkeeping.
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


class ConfigWatcher:
    """An asyncio task that reloads when a watched file changes. `start()`, `stop()`."""

    def __init__(
        self,
        reloader: Reloader,
        interval: float = 0.5,
        max_delay: float = 5.0,
        racy_window: float = 2.0,
    ):
        self.reloader = reloader
        self.interval = interval
        self.max_delay = max_delay
        self.hasher = FileHasher(racy_window)
        self.polls = 0  # completed polls, so tests can wait for "a few polls later"
        self.changes = 0  # settled changes handed to the reloader
        self._task: asyncio.Task | None = None

    def watched(self) -> tuple[list[Path], list[Path]]:
        """(files, directories) to watch, from the live config.

        The live config, not the one on disk: a rejected config may not even
        parse. Watching what serves now is enough to see the fix arrive.
        """
        config = self.reloader.holder.current.config
        files = [self.reloader.path]
        dirs: list[Path] = []
        if config.include is not None:
            dirs.append(config.include)
        for key in self.key_paths():
            (dirs if key.is_dir() else files).append(key)
        files += config.ca_files()
        return files, dirs

    def key_paths(self) -> list[Path]:
        """The private key file or directory (config, or the env override)."""
        config = self.reloader.holder.current.config
        keys = [config.seal_key_file] if config.seal_key_file is not None else []
        env_key = os.environ.get(SEAL_KEY_ENV)
        if env_key:
            keys.append(Path(env_key))
        return keys

    def fingerprint(self) -> Fingerprint:
        files, dirs = self.watched()
        fp: Fingerprint = {}
        for path in files:
            fp[str(path)] = self.hasher.digest(path)
        include = self.reloader.holder.current.config.include
        for directory in dirs:
            try:
                # The include dir lists what the loader reads (*.yaml, no
                # dot files), so an editor's swap file there is no change.
                if directory == include:
                    members = include_files(directory)
                else:
                    members = _key_dir_files(directory)
            except FileNotFoundError:
                fp[f"{directory}/"] = _MISSING
                continue
            except OSError as exc:
                fp[f"{directory}/"] = f"error {exc.errno}"
                continue
            fp[f"{directory}/"] = tuple(p.name for p in members)
            for path in members:
                fp[str(path)] = self.hasher.digest(path)
        self.hasher.prune()
        return fp

    def start(self) -> asyncio.Task:
        """Start polling. The baseline is taken now, so any later change is seen."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self.run(self.fingerprint()), name="gateway-config-watcher"
            )
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self, baseline: Fingerprint | None = None) -> None:
        if baseline is None:
            baseline = self.fingerprint()
        log.info("watching %d path(s) for config changes every %gs", len(baseline), self.interval)
        while True:
            await asyncio.sleep(self.interval)
            try:
                seen = self.fingerprint()
                self.polls += 1
                if seen == baseline:
                    continue
                seen = await self._settle(seen)
                changed = sorted(
                    k for k in seen.keys() | baseline.keys() if seen.get(k) != baseline.get(k)
                )
                self.changes += 1
                # Often the change is already live: the admin API writes a
                # fragment and reloads at once, and that is no second reload.
                # The config digest covers every file but the keys, so a key
                # change (rotation: a new key seals) always reloads.
                keys = tuple(str(k) for k in self.key_paths())
                key_changed = bool(keys) and any(c.startswith(keys) for c in changed)
                self.reloader.reload(
                    "changed: " + ", ".join(changed), only_if_changed=not key_changed
                )
                # The state just loaded (or rejected) is the new baseline: a
                # rejected config is not retried until something changes
                # again. If the reload changed what is watched (a new
                # include dir), the next poll differs and reloads once more,
                # harmlessly: unchanged providers keep their runtimes.
                baseline = seen
            except Exception:
                # The watcher must outlive any surprise; the next poll retries.
                log.exception("config watcher: poll failed")

    async def _settle(self, seen: Fingerprint) -> Fingerprint:
        """Wait until two polls agree (or max_delay passes); return the settled state."""
        deadline = time.monotonic() + self.max_delay
        while True:
            await asyncio.sleep(self.interval)
            again = self.fingerprint()
            self.polls += 1
            if again == seen or time.monotonic() >= deadline:
                return again
            seen = again
