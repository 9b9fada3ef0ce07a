"""The config watcher: what it fingerprints, when it re-reads, how it debounces.

Real files in a temp dir, a real Reloader and SnapshotHolder; no HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import textwrap
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.reload import Reloader, load_snapshot
from gateway.sealing import parse_public_key, write_keypair
from gateway.secrets import SecretResolver
from gateway.snapshot import SnapshotHolder, build_snapshot
from gateway.watcher import ConfigWatcher, FileHasher
from tests.support import self_signed

UP = "http://127.0.0.1:9/v1"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def reloader_for(path: Path) -> Reloader:
    # build_snapshot with a plain resolver: these tests watch files; whatever
    # the key file holds must not matter to them.
    config = load_config(path)
    return Reloader(path, SnapshotHolder(build_snapshot(config, SecretResolver())))


async def eventually(probe, timeout: float = 2.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        assert loop.time() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def watching(reloader: Reloader, interval: float = 0.02):
    """A running watcher that has polled once (its baseline is taken); stopped on exit."""
    watcher = ConfigWatcher(reloader, interval=interval)
    watcher.start()
    try:
        await eventually(lambda: watcher.polls >= 1, what="first poll")
        yield watcher
    finally:
        await watcher.stop()


def test_unchanged_file_is_not_reread_once_its_timestamps_are_old(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("one")
    hasher = FileHasher(racy_window=0.0)
    first = hasher.digest(f)
    assert hasher.reads == 1
    for _ in range(5):
        assert hasher.digest(f) == first
    assert hasher.reads == 1, "stat unchanged: the file must not be read again"
    f.write_text("three")  # different size: stat differs
    assert hasher.digest(f) != first
    assert hasher.reads == 2


def test_same_size_rewrites_right_after_a_read_are_seen(tmp_path):
    f = tmp_path / "a.yaml"
    hasher = FileHasher()
    for i in range(50):
        f.write_text(f"value: {i % 2}")
        before = hasher.digest(f)
        f.write_text(f"value: {(i + 1) % 2}")
        assert hasher.digest(f) != before, f"rewrite {i} missed"


def _sig(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@pytest.mark.parametrize("racy_window", [2.0, 0.0])
def test_recently_touched_file_is_reread_even_when_stat_looks_unchanged(tmp_path, racy_window):
    """On a filesystem with coarse timestamps, a same-size rewrite within one
    tick leaves stat identical. This kernel stamps files finely, so the test
    builds that state: the cache holds the new stat with the old digest.
    Within the racy window the file is re-read anyway; outside it (window 0)
    stat is trusted, which is exactly the miss the window exists to prevent.
    """
    f = tmp_path / "a.yaml"
    f.write_text("value: 0")
    hasher = FileHasher(racy_window=racy_window)
    old = hasher.digest(f)
    f.write_text("value: 1")
    hasher._cache[str(f)] = (_sig(f), old)  # what a same-tick rewrite looks like
    if racy_window:
        assert hasher.digest(f) != old
    else:
        assert hasher.digest(f) == old


def test_missing_and_unreadable_paths_are_states_not_errors(tmp_path):
    hasher = FileHasher()
    assert hasher.digest(tmp_path / "nope") == "missing"
    assert hasher.digest(tmp_path).startswith("not a file")


def kubelet_publish(directory: Path, files: dict[str, str], n: int) -> None:
    """What kubelet's AtomicWriter does: new timestamped dir, swap `..data` by rename."""
    stamp = directory / f"..2026_01_01_00_00_{n:02d}.{1000 + n}"
    stamp.mkdir(parents=True)
    for name, text in files.items():
        (stamp / name).write_text(text)
    old = directory / "..data"
    previous = os.readlink(old) if old.is_symlink() else None
    os.symlink(stamp.name, directory / "..data_tmp")
    os.replace(directory / "..data_tmp", old)
    for name in files:
        if not os.path.lexists(directory / name):
            os.symlink(f"..data/{name}", directory / name)
    if previous:
        for p in (directory / previous).iterdir():
            p.unlink()
        (directory / previous).rmdir()


def test_fingerprint_follows_the_kubernetes_symlink_swap(tmp_path):
    mount = tmp_path / "cm"
    kubelet_publish(mount, {"gateway.yaml": f"providers: [{{name: a, base_url: {UP}}}]\n"}, 1)
    path = mount / "gateway.yaml"
    watcher = ConfigWatcher(reloader_for(path))
    before = watcher.fingerprint()
    kubelet_publish(mount, {"gateway.yaml": f"providers: [{{name: b, base_url: {UP}}}]\n"}, 2)
    assert path.is_symlink() and os.readlink(path) == "..data/gateway.yaml"
    assert watcher.fingerprint() != before


def test_include_dir_listing_and_contents_are_watched_but_not_other_files(tmp_path):
    path = tmp_path / "gateway.yaml"
    write(path, "include: providers.d\n")
    write(tmp_path / "providers.d" / "a.yaml", f"name: a\nbase_url: {UP}\n")
    watcher = ConfigWatcher(reloader_for(path))
    fp = watcher.fingerprint()
    # Files the loader does not read are not changes (an editor's swap file).
    (tmp_path / "providers.d" / ".a.yaml.swp").write_text("junk")
    (tmp_path / "providers.d" / "README.txt").write_text("notes")
    assert watcher.fingerprint() == fp
    write(tmp_path / "providers.d" / "b.yml", f"name: b\nbase_url: {UP}\n")
    fp2 = watcher.fingerprint()
    assert fp2 != fp
    write(tmp_path / "providers.d" / "a.yaml", f"name: a\nbase_url: {UP}/x\n")
    fp3 = watcher.fingerprint()
    assert fp3 != fp2
    (tmp_path / "providers.d" / "b.yml").unlink()
    assert watcher.fingerprint() != fp3


@pytest.mark.parametrize("as_dir", [False, True])
def test_seal_key_file_or_key_dir_is_watched(tmp_path, as_dir):
    key = tmp_path / "keys"
    if as_dir:
        write(key / "k1.key", "key one")
    else:
        write(key, "key one")
    path = tmp_path / "gateway.yaml"
    write(path, "seal_key_file: keys\n")
    watcher = ConfigWatcher(reloader_for(path))
    fp = watcher.fingerprint()
    if as_dir:
        write(key / "k2.key", "key two")  # a second key added for rotation
        fp2 = watcher.fingerprint()
        assert fp2 != fp
        write(key / "k1.key", "key ONE")
        assert watcher.fingerprint() != fp2
    else:
        write(key, "key two")
        assert watcher.fingerprint() != fp
    assert all("key one" not in str(v) for v in fp.values()), "digests only, never key bytes"


def test_key_file_from_environment_is_watched(tmp_path, monkeypatch):
    key = tmp_path / "env.key"
    write(key, "key one")
    path = tmp_path / "gateway.yaml"
    write(path, "{}\n")
    monkeypatch.setenv("GATEWAY_SEAL_KEY_FILE", str(key))
    watcher = ConfigWatcher(reloader_for(path))
    fp = watcher.fingerprint()
    write(key, "key two")
    assert watcher.fingerprint() != fp


def config_with_header(value: str) -> str:
    return f"providers:\n  - name: a\n    base_url: {UP}\n    headers: {{X-Gen: '{value}'}}\n"


def live_gen(reloader: Reloader) -> str:
    return dict(reloader.holder.current.providers["a"].config.headers)["X-Gen"]


async def test_a_burst_of_writes_gives_one_reload_of_the_final_state(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(config_with_header("0"))
    reloader = reloader_for(path)
    async with watching(reloader, interval=0.05):
        # A write every 10 ms: every poll (50 ms apart, same loop) sees a new
        # state, so nothing settles until the burst is over.
        for i in range(1, 31):
            path.write_text(config_with_header(str(i)))
            await asyncio.sleep(0.01)
        await eventually(lambda: live_gen(reloader) == "30", what="final state live")
        assert reloader.status.successes == 1
        assert reloader.status.failures == 0


async def test_a_rejected_config_is_not_retried_until_something_changes(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(config_with_header("0"))
    reloader = reloader_for(path)
    async with watching(reloader) as watcher:
        path.write_text("providers:\n  - name: a\n    base_url: nope\n")
        await eventually(lambda: reloader.status.failures == 1, what="rejection")
        polls = watcher.polls
        await eventually(lambda: watcher.polls >= polls + 5, what="five more polls")
        assert reloader.status.failures == 1
        assert live_gen(reloader) == "0"
        path.write_text(config_with_header("1"))
        await eventually(lambda: live_gen(reloader) == "1", what="fixed config live")
        assert (reloader.status.successes, reloader.status.failures) == (1, 1)


async def test_stop_cancels_the_task_and_is_idempotent(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(config_with_header("0"))
    watcher = ConfigWatcher(reloader_for(path), interval=0.02)
    task = watcher.start()
    assert watcher.start() is task, "start twice: one task"
    await eventually(lambda: watcher.polls >= 1, what="first poll")
    await watcher.stop()
    assert task.cancelled()
    await watcher.stop()


async def test_a_changed_ca_file_reloads(tmp_path):
    """A provider's CA bundle is watched like the config: rotating the CA
    needs no config edit."""
    first, _ = self_signed(tmp_path / "a")
    second, _ = self_signed(tmp_path / "b")
    ca = tmp_path / "lab-ca.pem"
    ca.write_text(Path(first).read_text())
    path = tmp_path / "gateway.yaml"
    write(path, "providers:\n  - name: lab\n    base_url: https://h/v1\n    ca_file: lab-ca.pem\n")
    reloader = reloader_for(path)
    assert ca in ConfigWatcher(reloader).watched()[0]
    async with watching(reloader):
        ca.write_text(Path(second).read_text())
        await eventually(lambda: reloader.status.successes == 1, what="reload on CA change")
        pem = reloader.holder.current.config.provider("lab").ca_pem
        assert pem == Path(second).read_text()


async def test_a_change_already_made_live_is_not_reloaded_again(tmp_path):
    """The admin API writes a fragment and reloads at once; the watcher then
    sees the same change. That must not count as a second reload."""
    path = tmp_path / "gateway.yaml"
    path.write_text(config_with_header("0"))
    reloader = reloader_for(path)
    async with watching(reloader) as watcher:
        path.write_text(config_with_header("1"))
        assert reloader.reload("admin write") is True
        await eventually(lambda: watcher.changes == 1, what="the watcher seeing the change")
        assert live_gen(reloader) == "1"
        assert (reloader.status.successes, reloader.status.failures) == (1, 0)
        # A real change after that is still reloaded.
        path.write_text(config_with_header("2"))
        await eventually(lambda: live_gen(reloader) == "2", what="next change live")
        assert reloader.status.successes == 2


async def test_a_new_key_reloads_even_though_the_config_is_the_same(tmp_path):
    """The config digest does not cover the private keys: a key added for
    rotation must still make a new snapshot, whose sealer uses it."""
    keys = tmp_path / "keys"
    write_keypair(keys, "seal-2026-01")
    path = tmp_path / "gateway.yaml"
    write(path, f"seal_key_file: keys\nproviders:\n  - name: a\n    base_url: {UP}\n")
    reloader = Reloader(path, SnapshotHolder(load_snapshot(path)))
    async with watching(reloader):
        _, pub, new_kid = write_keypair(keys, "seal-2026-07")
        await eventually(lambda: reloader.status.successes == 1, what="reload on the new key")
        sealed = reloader.holder.current.seal("sk-rotated", "a")
        assert sealed.split(":")[2] == new_kid == parse_public_key(pub.read_text()).kid
