"""Running a Node SDK script of tests/contract/node and reading its one JSON line.

A missing Node or npm install is a failure, never a skip, so that a CI
without Node cannot pass silently.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import orjson
import pytest

from tests.support import REPO

NODE_DIR = REPO / "tests" / "contract" / "node"
RUN_TIMEOUT = 60.0


def node_binary(packages: tuple[str, ...]) -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "`node` is not on PATH: the Node SDK contract tests need Node.js (see README.md)"
        )
    for package in packages:
        if not (NODE_DIR / "node_modules" / package).is_dir():
            pytest.fail(
                f"{NODE_DIR / 'node_modules'} is missing {package}: run `bash .ci/run` "
                "(it runs npm install) or `npm install --prefix tests/contract/node`"
            )
    return node


async def run_node_script(script: Path, packages: tuple[str, ...], **env_vars: str) -> dict:
    """Run `script` with `env_vars` added; its single stdout line, parsed."""
    env = dict(os.environ, **env_vars)
    # The SDKs read these; a developer's own settings must not leak into the run.
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        node_binary(packages),
        str(script),
        cwd=str(NODE_DIR),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"{script.name} did not finish within {RUN_TIMEOUT:g}s")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err_text = stderr.decode(errors="replace")
    assert proc.returncode == 0, f"{script.name} exited {proc.returncode}:\n{err_text}"
    lines = stdout.decode().strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got: {stdout!r}\nstderr: {err_text}"
    return orjson.loads(lines[0])
