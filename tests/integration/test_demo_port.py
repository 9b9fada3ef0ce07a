"""`gateway serve --demo` when port 8081 is taken, and `--demo-port` moving it.

Real subprocesses, real ports. The shipped config is used as shipped (its
demo provider at 127.0.0.1:8081): with the port moved, the provider follows.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from tests.integration.test_cli import (
    DEMO_URL_IN_EXAMPLE,
    README_REPLY,
    background,
    copy_example_config,
    free_ports,
    readme_curl,
    run_cli,
)

DEFAULT_DEMO_PORT = 8081


@contextlib.contextmanager
def demo_port_taken() -> Iterator[None]:
    """Port 8081 taken for the block: by this test, or already by someone else
    (another developer's demo), which is as good."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", DEFAULT_DEMO_PORT))
        sock.listen()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    try:
        yield
    finally:
        sock.close()


async def test_taken_demo_port_says_which_port_and_how_to_move_it(tmp_path):
    config = copy_example_config(tmp_path / "cfg")
    (port,) = free_ports(1)
    with demo_port_taken():
        code, out, err = await run_cli(
            "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--demo"
        )
    assert code == 1, (out, err)
    assert "port 8081 is in use" in err
    assert "127.0.0.1:8081" in err
    assert "--demo-port N (0 = any free port)" in err
    assert "Traceback" not in err and "Errno" not in err


async def test_demo_upstream_command_says_the_same(tmp_path):
    with demo_port_taken():
        code, _, err = await run_cli("demo-upstream")
    assert code == 1
    assert "port 8081 is in use" in err and "--listen HOST:PORT" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("choice", ["fixed", "any"])
async def test_demo_port_moves_the_demo_and_the_example_provider_follows(tmp_path, choice):
    config = copy_example_config(tmp_path / "cfg")  # as shipped: demo at :8081
    assert DEMO_URL_IN_EXAMPLE in config.read_text()
    port, demo_port = free_ports(2)
    flag = str(demo_port) if choice == "fixed" else "0"
    args = ("serve", "--config", str(config), "--listen", f"127.0.0.1:{port}")
    base_url = f"http://127.0.0.1:{port}/v1"
    # 8081 held throughout: an answer can only come from the moved demo.
    with demo_port_taken():
        async with background(tmp_path, "serve", *args, "--demo", "--demo-port", flag) as gw:
            await gw.wait_ready(f"http://127.0.0.1:{port}/healthz")
            payloads = await readme_curl(base_url)
            chunks = [orjson.loads(p) for p in payloads[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            assert text == README_REPLY
            if choice == "fixed":
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{demo_port}/v1/models") as resp,
                ):
                    assert resp.status == 200
            assert await gw.terminate() == 0
            output = gw.output()
    assert "Traceback" not in output, output
