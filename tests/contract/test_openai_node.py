"""The official OpenAI Node SDK against the real gateway.

`node/sdk_check.mjs` makes the calls and prints what it saw as one JSON
object; this test starts the demo upstream and the gateway, runs the script
and judges every result. Its npm dependencies come from `bash .ci/run`
(npm install); a missing install is a failure, never a skip, so that a CI
without Node cannot pass silently.
"""

from __future__ import annotations

import orjson
import pytest

from tests.contract.node_runner import NODE_DIR, run_node_script
from tests.support import GatewayUnderTest

SCRIPT = NODE_DIR / "sdk_check.mjs"
CLIENT_KEY = "gw-node-client-key-8d21e0"
DEMO_REPLY = "Hello from the gateway's demo upstream! You said: Hello from Node!"


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


async def run_sdk_check(base_url: str, api_key: str) -> dict:
    return await run_node_script(
        SCRIPT, ("openai",), GATEWAY_BASE_URL=base_url, GATEWAY_API_KEY=api_key
    )


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
