"""The Vercel AI SDK and the OpenAI Node SDK's Responses API against the demo upstream.

`node/ai_sdk_check.mjs` makes the calls and prints what it saw as one JSON
object; this test runs it straight at the demo upstream (model `demo-chat`)
and judges every result. The script takes its base URL and model from the
environment, so the same script can later run through the gateway with
`demo/demo-chat`. A missing Node or npm install is a failure, never a skip.
"""

from __future__ import annotations

from tests.contract.node_runner import NODE_DIR, run_node_script

SCRIPT = NODE_DIR / "ai_sdk_check.mjs"
GREETING = "Hello from the gateway's demo upstream!"


async def run_ai_sdk_check(base_url: str, model: str, api_key: str = "sk-demo") -> dict:
    return await run_node_script(
        SCRIPT,
        ("ai", "@ai-sdk/openai", "openai"),
        GATEWAY_BASE_URL=base_url,
        GATEWAY_API_KEY=api_key,
        GATEWAY_MODEL=model,
    )


async def test_ai_sdk_and_node_responses_against_demo(demo_upstream):
    judge_ai_sdk_results(await run_ai_sdk_check(demo_upstream, "demo-chat"))


def judge_ai_sdk_results(r: dict) -> None:
    """What the script saw, as the demo upstream answers it (straight or through the gateway)."""
    # The AI SDK's default OpenAI model speaks the Responses API, streamed.
    said = f"{GREETING} You said: Hello from the AI SDK!"
    assert r["aiStream"] == {
        "text": said,
        "pieces": len(said.split()),
        "finishReason": "stop",
        "inputTokens": 5,
        "outputTokens": len(said.split()),
    }

    # Its tool loop: step one calls the tool, step two answers the result.
    assert r["aiTools"] == {
        "text": f"{GREETING} The tool returned: Sunny in demo",
        "steps": 2,
        "toolCalls": ["demo"],
        "finishReason": "stop",
    }

    node_said = f"{GREETING} You said: Hello from Node!"
    plain = r["responses"]
    assert plain["id"].startswith("resp_")
    assert plain["status"] == "completed"
    assert plain["text"] == node_said
    assert plain["inputTokens"] == 3
    assert plain["outputTokens"] == len(node_said.split())

    stream = r["responsesStream"]
    assert stream["text"] == node_said
    assert stream["completedText"] == node_said
    assert stream["sequence"] == list(range(len(stream["types"])))
    assert stream["types"][:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert stream["types"][-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert stream["types"].count("response.output_text.delta") == len(node_said.split())
    assert stream["completedUsage"]["output_tokens"] == len(node_said.split())
