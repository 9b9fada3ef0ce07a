"""The official OpenAI Node SDK against the real gateway.

`node/sdk_check.mjs` makes the calls and prints what it saw as one JSON
object; this test starts the demo upstream and the gateway, runs the script
and judges every result. Its npm dependencies come from `bash .ci/run`
(npm install); a missing install is a failure, never a skip, so that a CI
without Node cannot pass silently.
"""

from __future__ import annotations

import asyncio
import os
import shutil

import orjson
import pytest

from tests.support import REPO, GatewayUnderTest

NODE_DIR = REPO / "tests" / "contract" / "node"
SCRIPT = NODE_DIR / "sdk_check.mjs"
CLIENT_KEY = "gw-node-client-key-8d21e0"
DEMO_REPLY = "Hello from the gateway's demo upstream! You said: Hello from Node!"
RUN_TIMEOUT = 60.0


@pytest.fixture
async def gw(gateway_factory, demo_upstream) -> GatewayUnderTest:
    # A plain-text client key: auth must be on for the script's 401 check.
    return await gateway_factory(
        f"""
        auth:
          api_keys: [{CLIENT_KEY}]
        providers:
          - name: demo
            provider_type: custom
            base_url: {demo_upstream}
        """
    )


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "`node` is not on PATH: the Node SDK contract test needs Node.js (see README.md)"
        )
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.fail(
            f"{NODE_DIR / 'node_modules'} is missing the openai package: "
            "run `bash .ci/run` (it runs npm install) or "
            "`npm install --prefix tests/contract/node`"
        )
    return node


async def run_sdk_check(base_url: str, api_key: str) -> dict:
    env = dict(os.environ, GATEWAY_BASE_URL=base_url, GATEWAY_API_KEY=api_key)
    # The SDK reads these; a developer's own settings must not leak into the run.
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        str(SCRIPT),
        cwd=str(NODE_DIR),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"sdk_check.mjs did not finish within {RUN_TIMEOUT:g}s")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err_text = stderr.decode(errors="replace")
    assert proc.returncode == 0, f"sdk_check.mjs exited {proc.returncode}:\n{err_text}"
    lines = stdout.decode().strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got: {stdout!r}\nstderr: {err_text}"
    return orjson.loads(lines[0])


async def test_node_sdk_against_gateway(gw):
    r = await run_sdk_check(gw.base_url, CLIENT_KEY)

    assert r["chat"] == {"model": "demo-chat", "content": DEMO_REPLY, "finishReason": "stop"}

    # The demo streams one word per event: text equal to the whole answer,
    # arriving in many chunks, proves the SDK parsed the gateway's SSE.
    assert r["stream"]["text"] == DEMO_REPLY
    assert r["stream"]["chunks"] > len(DEMO_REPLY.split())
    assert r["stream"]["finishReason"] == "stop"

    assert sorted(r["models"]) == ["demo/demo-chat", "demo/demo-embed"]
    assert r["retrieve"] == {"id": "demo/demo-chat", "object": "model"}

    wrong = r["wrongKey"]
    assert wrong["class"] == "AuthenticationError"
    assert wrong["status"] == 401
    assert wrong["code"] == "invalid_api_key"
    assert "sk-wrong-key-from-node" not in orjson.dumps(wrong).decode()
    assert CLIENT_KEY not in orjson.dumps(r).decode()

    unknown = r["unknownModel"]
    assert unknown["class"] == "NotFoundError"
    assert unknown["status"] == 404
    assert unknown["code"] == "model_not_found"
    assert "no-such-provider/demo-chat" in unknown["message"]
