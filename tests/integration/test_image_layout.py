"""The gateway run from the container image's filesystem layout, as the image's user.

No Docker engine runs here, so this builds what the image holds under a temp
root (`/etc/gateway/gateway.yaml`, `providers.d/`, `keys/seal.key`, from the
sidecar example in deploy/kubernetes), points the example provider at a real
upstream on 127.0.0.1, and runs the installed `gateway serve` from it as the
Dockerfile's non-root uid. Then a real OpenAI SDK client gets a chat
completion through it, the upstream must have received the unsealed example
key, the image's health probe must pass, a Kubernetes-style config update
must hot-reload without a restart, and SIGTERM must stop it cleanly.

Dropping to another user: `setpriv` (util-linux). Where the Python
interpreter sits under a directory other users cannot enter (pyenv in a 0700
/root), the process also gets a private mount namespace in which that
directory is replaced by a tmpfs showing only the interpreter's subtree, so
the server still runs with no privilege at all. If none of that is possible
the test runs as the current user and says so (printed and as a warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.support import REPO, Upstream, free_port, readyz

K8S = REPO / "deploy" / "kubernetes"
CONFIG_SRC = K8S / "config"
KEY_SRC = K8S / "example-keys" / "seal.key"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"
IMAGE_UID = IMAGE_GID = 10001  # the Dockerfile's USER (tests/unit/test_deploy.py checks it)
UPSTREAM_KEY = "example-upstream-key"  # what the example provider's sealed key holds
PROVIDER_FILE = "custom-llm.yaml"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
RELOAD_TIMEOUT = 15.0
PROBE_TIMEOUT = 20.0
SETUP_TIMEOUT = 30.0


# --------------------------------------------------------------------------
# Running as another user


@dataclass
class RunAs:
    prefix: list[str]  # put before the command
    uid: int
    gid: int
    how: str


def _blocked_ancestor(path: Path) -> Path | None:
    """The first directory above `path` that other users may not enter, if any."""
    for parent in reversed(path.parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def _setpriv(uid: int, gid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def _candidates(stash: Path) -> Iterator[RunAs]:
    if shutil.which("setpriv"):
        yield RunAs(_setpriv(IMAGE_UID, IMAGE_GID), IMAGE_UID, IMAGE_GID, "setpriv")
        prefix = Path(sys.prefix).resolve()
        blocked = _blocked_ancestor(prefix / "x")
        if blocked is not None and shutil.which("unshare"):
            # Replace `blocked` by a tmpfs holding only the subtree the interpreter
            # needs (bind-mounted back from a stash of the original), in a mount
            # namespace of this process alone: nothing changes for anyone else.
            child = prefix.relative_to(blocked).parts[0]
            script = (
                'set -e; mount --bind "$1" "$2"; '
                'mount -t tmpfs -o mode=0755,size=1m tmpfs "$1"; '
                'mkdir "$1/$3"; mount --bind "$2/$3" "$1/$3"; shift 3; exec "$@"'
            )
            yield RunAs(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    "sh",
                    str(blocked),
                    str(stash),
                    child,
                    *_setpriv(IMAGE_UID, IMAGE_GID),
                ],
                IMAGE_UID,
                IMAGE_GID,
                f"setpriv in a mount namespace that opens {blocked}/{child}",
            )
    if shutil.which("runuser"):
        yield RunAs(["runuser", "-u", "nobody", "--"], 65534, 65534, "runuser -u nobody")


def choose_user(stash: Path, cwd: Path) -> RunAs:
    """The first way to run this Python as a non-root user that imports the gateway."""
    me = RunAs([], os.getuid(), os.getgid(), "the current user")
    if os.getuid() != 0:
        return me  # already unprivileged
    probe = (
        "import os, sys, aiohttp, cryptography, orjson, yaml, gateway; "
        f"assert sys.prefix == {sys.prefix!r}, sys.prefix; print(os.getuid())"
    )
    failures = []
    for run_as in _candidates(stash):
        try:
            proc = subprocess.run(
                [*run_as.prefix, sys.executable, "-c", probe],
                cwd=cwd,
                env=server_env(),
                capture_output=True,
                text=True,
                timeout=SETUP_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            failures.append(f"{run_as.how}: {exc}")
            continue
        if proc.returncode == 0 and proc.stdout.strip() == str(run_as.uid):
            return run_as
        failures.append(f"{run_as.how}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    message = (
        "test_image_layout: could not drop to a non-root user "
        f"({'; '.join(failures) or 'no setpriv/runuser'}): running the gateway as "
        f"uid {os.getuid()} instead"
    )
    print(message)
    warnings.warn(message, stacklevel=2)
    return me


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["HOME"] = "/nonexistent"  # as the image's user has
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # as the image: nothing to write
    env.update(extra)
    return env


# --------------------------------------------------------------------------
# The image's layout


def write_volume(directory: Path, files: dict[str, str], kubelet: bool, generation: int) -> None:
    """Files as a bind mount shows them (plain) or as a kubelet volume (`..data` symlinks)."""
    directory.mkdir(parents=True, exist_ok=True)
    if not kubelet:
        for name, text in files.items():
            tmp = directory / f".{name}.tmp"
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.replace(directory / name)  # atomic, as an editor or `kubectl cp` would
        return
    stamped = directory / f"..2025_01_01_00_00_{generation:02d}.000000001"
    stamped.mkdir(mode=0o755)
    for name, text in files.items():
        (stamped / name).write_text(text)
        (stamped / name).chmod(0o644)
    # The kubelet's update: a new ..data link renamed over the old one.
    (directory / "..data_tmp").symlink_to(stamped.name)
    (directory / "..data_tmp").replace(directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


def provider_text(base_url: str, title: str) -> str:
    text = (CONFIG_SRC / "providers.d" / PROVIDER_FILE).read_text()
    text, n = re.subn(r"(?m)^base_url: .*$", f"base_url: {base_url}", text)
    assert n == 1, "the example provider no longer has one base_url line"
    text, n = re.subn(r"(?m)^  X-Title: .*$", f"  X-Title: {title}", text)
    assert n == 1, "the example provider no longer sends an X-Title header"
    return text


def build_layout(root: Path, upstream: Upstream, port: int, gid: int, kubelet: bool) -> Path:
    """root/etc/gateway as the image has it, with the sidecar example's config."""
    etc = root / "etc" / "gateway"
    config = (CONFIG_SRC / "gateway.yaml").read_text()
    config, n = re.subn(r"(?m)^listen: .*$", f"listen: 127.0.0.1:{port}", config)
    assert n == 1, "the example config no longer has one listen line"
    write_volume(etc, {"gateway.yaml": config}, kubelet, 1)
    write_volume(
        etc / "providers.d", {PROVIDER_FILE: provider_text(upstream.base_url, "v1")}, kubelet, 1
    )
    keys = etc / "keys"
    write_volume(keys, {"seal.key": KEY_SRC.read_text()}, kubelet, 1)
    key = (keys / "seal.key").resolve()
    # As a Secret volume with defaultMode 0440 and fsGroup: the gateway reads
    # it through its group, other users cannot.
    os.chown(key, 0, gid)
    key.chmod(0o440)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        d.chmod(0o755)
    return etc / "gateway.yaml"


# --------------------------------------------------------------------------
# The process


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    log: Path
    url: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_ready(self) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.returncode is not None:
                    pytest.fail(f"exited {self.proc.returncode} before serving:\n{self.output()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        if r.status == 200:
                            return await r.json()
                if loop.time() > deadline:
                    pytest.fail(f"not ready within {START_TIMEOUT:g}s:\n{self.output()}")
                await asyncio.sleep(0.05)


def gateway_script() -> str:
    script = Path(sysconfig.get_path("scripts")) / "gateway"
    assert script.is_file(), f"{script} missing: run `python3 -m pip install -e .`"
    return str(script)


@contextlib.asynccontextmanager
async def serve(run_as: RunAs, config: Path, log: Path, port: int) -> AsyncIterator[Server]:
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *run_as.prefix,
            gateway_script(),  # what the image's ENTRYPOINT runs: `gateway serve`
            "serve",
            "--config",
            str(config),
            "--shutdown-grace",
            "5",
            cwd=str(config.parent),  # the image's WORKDIR
            env=server_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Server(proc, log, f"http://127.0.0.1:{port}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def uid_of(pid: int) -> int:
    """Real uid of `pid`, or of its only descendant chain's last process (runuser forks)."""
    while True:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if not children:
            break
        pid = int(children[0])
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


async def run_healthcheck(run_as: RunAs, config: Path, path: str) -> tuple[int, str]:
    """The image's HEALTHCHECK / the sidecar's exec probe, with the image's GATEWAY_CONFIG."""
    proc = await asyncio.create_subprocess_exec(
        *run_as.prefix,
        sys.executable,
        str(HEALTHCHECK),
        path,
        cwd=str(config.parent),
        env=server_env(GATEWAY_CONFIG=str(config)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def wait_for_hash_change(url: str, old: str) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RELOAD_TIMEOUT
    while True:
        body = await readyz(url)
        if body["config_hash"] != old:
            return body
        if loop.time() > deadline:
            pytest.fail(f"config not reloaded within {RELOAD_TIMEOUT:g}s: {body}")
        await asyncio.sleep(0.1)


@pytest.fixture
def image_root() -> Iterator[Path]:
    # Not pytest's tmp_path: that lives under a 0700 directory the image's user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="gateway-image-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("layout", ["bind-mount", "kubelet"])
async def test_gateway_serves_from_the_image_layout_as_the_image_user(
    upstream: Upstream, image_root: Path, tmp_path: Path, layout: str
):
    stash = image_root / "stash"
    stash.mkdir(mode=0o755)
    run_as = choose_user(stash, image_root)
    print(f"gateway runs as uid {run_as.uid} ({run_as.how})")
    port = free_port()
    config = build_layout(image_root / "rootfs", upstream, port, run_as.gid, layout == "kubelet")
    key = config.parent / "keys" / "seal.key"
    assert not key.resolve().stat().st_mode & stat.S_IROTH, "the key must not be world-readable"

    async with serve(run_as, config, tmp_path / "gateway.log", port) as server:
        first = await server.wait_ready()
        assert first["providers"] == 1
        assert uid_of(server.proc.pid) == run_as.uid

        code, out = await run_healthcheck(run_as, config, "/readyz")
        assert code == 0, out
        code, out = await run_healthcheck(run_as, config, "/healthz")
        assert code == 0, out

        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        async with client:
            reply = await client.chat.completions.create(
                model="custom-llm/m1", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content == "ok"
            sent = upstream.requests[-1]
            assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
            assert sent.json()["model"] == "m1"
            assert sent.headers["X-Title"] == "v1"

            # A GitOps change lands as the kubelet (or an editor) writes it:
            # the same process picks it up, no restart.
            write_volume(
                config.parent / "providers.d",
                {PROVIDER_FILE: provider_text(upstream.base_url, "v2")},
                layout == "kubelet",
                2,
            )
            second = await wait_for_hash_change(server.url, first["config_hash"])
            assert second["reload"]["last_reload_ok"] is True
            await client.chat.completions.create(
                model="custom-llm/m1", messages=[{"role": "user", "content": "again"}]
            )
            assert upstream.requests[-1].headers["X-Title"] == "v2"
            assert upstream.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert server.proc.returncode is None

        server.proc.terminate()
        try:
            code = await asyncio.wait_for(server.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            pytest.fail(f"still running {STOP_TIMEOUT:g}s after SIGTERM:\n{server.output()}")
        assert code == 0, server.output()

    code, out = await run_healthcheck(run_as, config, "/healthz")
    assert code == 1 and "unhealthy" in out
    assert UPSTREAM_KEY not in server.output()
