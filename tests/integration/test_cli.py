"""The command line as a newcomer uses it, following README.md.

Every test runs the real CLI (`python -m gateway ...`) as a subprocess, with
real ports on 127.0.0.1, and makes sure the process is gone when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anthropic
import openai
import orjson
import pytest

from tests.support import REPO, free_ports

EXAMPLE_CONFIG = REPO / "config" / "gateway.yaml"
DEMO_URL_IN_EXAMPLE = "base_url: http://127.0.0.1:8081/v1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
RUN_TIMEOUT = 30.0
README_REPLY = "Hello from the gateway's demo upstream! You said: Hello!"


def cli_env(**extra: str) -> dict[str, str]:
    # A developer's own GATEWAY_* settings must not change what the CLI reads.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(extra)
    return env


def copy_example_config(directory: Path, demo_port: int | None = None) -> Path:
    """The shipped example config in `directory`, its demo upstream moved to `demo_port`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "providers.d").mkdir(exist_ok=True)
    text = EXAMPLE_CONFIG.read_text()
    if demo_port is not None:
        # Fails loudly if the example stops pointing at the default demo port.
        assert text.count(DEMO_URL_IN_EXAMPLE) == 1, "config/gateway.yaml changed its demo URL"
        text = text.replace(DEMO_URL_IN_EXAMPLE, f"base_url: http://127.0.0.1:{demo_port}/v1")
    path = directory / "gateway.yaml"
    path.write_text(text)
    return path


async def run_cli(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run one CLI command to its end; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=str(cwd),
        env=env if env is not None else cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"`gateway {' '.join(args)}` did not finish within {RUN_TIMEOUT:g}s")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@dataclass
class Background:
    proc: asyncio.subprocess.Process
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_ready(self, url: str, timeout: float = START_TIMEOUT) -> None:
        """Poll `url` until it answers 200; fail with the process output otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.returncode is not None:
                    pytest.fail(f"exited {self.proc.returncode} before serving:\n{self.output()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return
                if loop.time() > deadline:
                    pytest.fail(f"{url} did not answer within {timeout:g}s:\n{self.output()}")
                await asyncio.sleep(0.05)

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            pytest.fail(f"still running {timeout:g}s after SIGTERM:\n{self.output()}")


@contextlib.asynccontextmanager
async def background(tmp_path: Path, name: str, *args: str) -> AsyncIterator[Background]:
    """Start a long-running CLI command; it is killed on the way out, whatever happened."""
    log = tmp_path / f"{name}.log"
    # Output goes to a file, not a pipe: nobody reads a pipe while the test
    # runs, and a full pipe would block the server.
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            *args,
            cwd=str(REPO),
            env=cli_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Background(proc, log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --------------------------------------------------------------------------
# serve --demo and the README's quick start


def readme_sdk_snippet(base_url: str) -> tuple[str, list[str]]:
    """The README's Python SDK examples (chat, Responses, Anthropic), collecting
    instead of printing."""
    client = openai.OpenAI(base_url=base_url, api_key="unused")
    try:
        stream = client.chat.completions.create(
            model="demo/demo-chat",
            messages=[{"role": "user", "content": "Hello!"}],
            stream=True,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        ids = [m.id for m in client.models.list()]
        response = client.responses.create(model="demo/demo-chat", input="Hello!")
        assert response.output_text == README_REPLY
    finally:
        client.close()
    claude = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key="unused")
    try:
        message = claude.messages.create(
            model="demo/demo-chat",
            max_tokens=100,
            messages=[{"role": "user", "content": "Hello!"}],
        )
        assert message.content[0].text == README_REPLY
    finally:
        claude.close()
    return text, ids


async def readme_curl(base_url: str) -> list[bytes]:
    """The README's curl command: a streamed chat; returns the SSE `data:` payloads."""
    body = {
        "model": "demo/demo-chat",
        "stream": True,
        "messages": [{"role": "user", "content": "Hello!"}],
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url}/chat/completions",
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert all(e.startswith(b"data: ") for e in events), raw
    return [e[len(b"data: ") :] for e in events]


async def test_serve_demo_runs_the_readme_quick_start(tmp_path):
    port, demo_port = free_ports(2)
    config = copy_example_config(tmp_path / "cfg", demo_port)
    args = ("serve", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--demo")
    args += ("--demo-listen", f"127.0.0.1:{demo_port}")
    base_url = f"http://127.0.0.1:{port}/v1"

    async with background(tmp_path, "serve", *args) as gw:
        await gw.wait_ready(f"http://127.0.0.1:{port}/healthz")

        payloads = await readme_curl(base_url)
        assert payloads[-1] == b"[DONE]"
        chunks = [orjson.loads(p) for p in payloads[:-1]]
        assert len(chunks) > 3
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == README_REPLY

        text, ids = await asyncio.to_thread(readme_sdk_snippet, base_url)
        assert text == README_REPLY
        assert sorted(ids) == ["demo/demo-chat", "demo/demo-embed"]

        assert await gw.terminate() == 0
        output = gw.output()
    assert "Traceback" not in output, output


# --------------------------------------------------------------------------
# check


async def test_check_example_config_is_ok():
    code, out, err = await run_cli("check", "--config", "config/gateway.yaml")
    assert code == 0, err
    assert "OK (1 provider: demo)" in out
    assert "demo" in out


async def test_check_warns_on_no_providers_and_fails_with_strict(tmp_path):
    config = tmp_path / "empty.yaml"
    config.write_text("providers: []\n")
    code, out, err = await run_cli("check", "--config", str(config))
    assert code == 0, err
    assert "OK (0 providers: none)" in out
    assert "warning: no providers are configured" in err
    code, _, err = await run_cli("check", "--strict", "--config", str(config))
    assert code == 1
    assert "no providers are configured (--strict)" in err


BROKEN_MAIN = """
    listen: "127.0.0.1:http"
    include: providers.d
    providers:
      - name: alpha
        provider_type: azure
        base_url: http://127.0.0.1:9000/v1
      - name: beta
        provider_type: custom
      - name: alpha
        provider_type: custom
        base_url: http://127.0.0.1:9001/v1
      - name: gamma
        provider_type: custom
        base_url: http://127.0.0.1:9002/v1
        timeout: 5
    """
BROKEN_FRAGMENT = """
    name: delta
    provider_type: custom
    base_url: "http//127.0.0.1:9003/v1"
    """


def write_broken_config(directory: Path) -> tuple[Path, Path]:
    (directory / "providers.d").mkdir(parents=True)
    main = directory / "gateway.yaml"
    main.write_text(textwrap.dedent(BROKEN_MAIN))
    fragment = directory / "providers.d" / "delta.yaml"
    fragment.write_text(textwrap.dedent(BROKEN_FRAGMENT))
    return main, fragment


def expected_problems(main: Path, fragment: Path) -> list[tuple[Path, str | None, str]]:
    """(file, provider, field) of every mistake in the broken config."""
    return [
        (main, None, "listen"),
        (main, "alpha", "provider_type"),  # unknown type
        (main, "beta", "base_url"),  # missing for custom
        (main, "alpha", "name"),  # duplicate
        (main, "gamma", "timeout"),  # unknown key
        (fragment, "delta", "base_url"),  # malformed URL in an include fragment
    ]


def assert_lists_every_problem(stderr: str, main: Path, fragment: Path) -> None:
    lines = [line for line in stderr.splitlines() if line.lstrip().startswith("- ")]
    expected = expected_problems(main, fragment)
    for file, provider, field in expected:
        matching = [
            line
            for line in lines
            if str(file) in line
            and f"field '{field}'" in line
            and (provider is None or f"provider '{provider}'" in line)
        ]
        assert matching, f"no problem for {file.name} {provider} {field} in:\n{stderr}"
    assert len(lines) == len(expected), stderr


async def test_check_lists_every_problem_with_file_provider_and_field(tmp_path):
    main, fragment = write_broken_config(tmp_path / "broken")
    code, out, err = await run_cli("check", "--config", str(main))
    assert code == 1, (out, err)
    assert "OK" not in out
    assert f"{len(expected_problems(main, fragment))} problems" in err
    assert_lists_every_problem(err, main, fragment)
    assert "Traceback" not in err


async def test_check_honours_gateway_config_env(tmp_path):
    good = copy_example_config(tmp_path / "good")
    main, fragment = write_broken_config(tmp_path / "broken")
    empty = tmp_path / "empty"
    empty.mkdir()

    # From a directory without config/gateway.yaml, only the env var can find it.
    code, out, err = await run_cli("check", cwd=empty, env=cli_env(GATEWAY_CONFIG=str(good)))
    assert code == 0, err
    assert str(good) in out and "OK" in out

    # From the repo, where the default config is valid, the env var still wins.
    code, _, err = await run_cli("check", env=cli_env(GATEWAY_CONFIG=str(main)))
    assert code == 1
    assert_lists_every_problem(err, main, fragment)

    # And --config wins over the env var.
    code, out, err = await run_cli(
        "check", "--config", str(good), env=cli_env(GATEWAY_CONFIG=str(main))
    )
    assert code == 0, err


async def test_check_without_any_config_says_which_file_is_missing(tmp_path):
    code, _, err = await run_cli("check", cwd=tmp_path)
    assert code == 1
    assert "config/gateway.yaml" in err and "not found" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------
# serve on a broken config, demo-upstream


async def test_serve_on_broken_config_exits_nonzero_with_the_problems(tmp_path):
    main, fragment = write_broken_config(tmp_path / "broken")
    (port,) = free_ports(1)
    code, _, err = await run_cli("serve", "--config", str(main), "--listen", f"127.0.0.1:{port}")
    assert code != 0
    assert_lists_every_problem(err, main, fragment)
    assert "Traceback" not in err


async def test_demo_upstream_serves_models(tmp_path):
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}/v1/models"
    async with background(tmp_path, "demo", "demo-upstream", "--listen", f"127.0.0.1:{port}") as up:
        await up.wait_ready(url)
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["object"] == "list"
        assert sorted(m["id"] for m in body["data"]) == ["demo-chat", "demo-embed"]
        assert await up.terminate() == 0


async def test_console_script_is_the_same_program():
    # The README types `gateway ...`; the other tests run `python -m gateway`.
    script = Path(sysconfig.get_path("scripts")) / "gateway"
    assert script.is_file(), f"{script} missing: run `python3 -m pip install -e .`"
    proc = await asyncio.create_subprocess_exec(
        str(script),
        "check",
        "--config",
        "config/gateway.yaml",
        cwd=str(REPO),
        env=cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    assert b"OK" in out
