"""Sealed secrets end to end: keygen and seal as commands, a real gateway that
unseals, a real upstream that sees the key, and every failure reported
without the secret's plain text anywhere."""

from __future__ import annotations

import logging
import os
import pty
import select
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.config import ConfigError
from gateway.reload import load_snapshot
from gateway.sealing import Keyring, load_public_key, write_keypair
from tests.support import REPO

# Distinct, unmistakable plain texts: a leak of any of them is a failure.
UPSTREAM_KEY = "sk-sealed-upstream-9d41c7"
CLIENT_KEY = "gw-client-key-5e02aa"
ADMIN_TOKEN = "gw-admin-token-b7730f"
PLAIN_KEY = "sk-plaintext-in-yaml-31f9"
TAMPERED_KEY = "sk-tampered-value-8c12"
WRONG_SCOPE_KEY = "sk-wrong-scope-value-40de"
WRONG_KEY_KEY = "sk-other-keypair-value-77a0"
ALL_SECRETS = (
    UPSTREAM_KEY,
    CLIENT_KEY,
    ADMIN_TOKEN,
    PLAIN_KEY,
    TAMPERED_KEY,
    WRONG_SCOPE_KEY,
    WRONG_KEY_KEY,
)
CHAT = {"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]}


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        for secret in ALL_SECRETS:
            assert secret not in text, f"plain text of a secret leaked: {secret}"


def gateway_cmd(*args: str, stdin: bytes | None = None, env: dict | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        cwd=REPO,
        env={**base, **(env or {})},
        timeout=60,
    )


def tamper(sealed: str) -> str:
    """Change one character in the middle of the payload (still valid base64url)."""
    head, _, payload = sealed.rpartition(":")
    i = len(payload) // 2
    swapped = "A" if payload[i] != "A" else "B"
    return f"{head}:{payload[:i]}{swapped}{payload[i + 1 :]}"


# -- the commands --------------------------------------------------------------


def test_keygen_then_seal_from_stdin_with_only_the_public_key(tmp_path):
    keys = tmp_path / "keys"
    done = gateway_cmd("keygen", "--out", str(keys))
    assert done.returncode == 0, done.stderr
    key_path, pub_path = keys / "seal.key", keys / "seal.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    kid = load_public_key(pub_path).kid
    assert kid in done.stdout.decode()
    assert key_path.read_text() not in done.stdout.decode() + done.stderr.decode()

    # A second keygen must not replace the key every sealed value depends on.
    before = key_path.read_bytes()
    again = gateway_cmd("keygen", "--out", str(keys))
    assert again.returncode == 1 and b"refusing to overwrite" in again.stderr
    assert key_path.read_bytes() == before

    # Sealing needs only the public key: copy it where no private key is.
    public_only = tmp_path / "repo" / "seal.pub"
    public_only.parent.mkdir()
    public_only.write_bytes(pub_path.read_bytes())
    done = gateway_cmd(
        "seal",
        "--public-key",
        str(public_only),
        "--scope",
        "up",
        stdin=UPSTREAM_KEY.encode() + b"\n",
    )
    assert done.returncode == 0, done.stderr
    sealed = done.stdout.decode().strip()
    assert sealed.startswith(f"sealed:v1:{kid}:up:")
    assert_no_secret(done.stdout, done.stderr)
    # One trailing newline (from `echo` or a file) is not part of the key.
    assert Keyring.load(key_path).unseal(sealed, "up") == UPSTREAM_KEY

    crlf = gateway_cmd("seal", "--public-key", str(public_only), "--scope", "up", stdin=b"k-1\r\n")
    assert Keyring.load(key_path).unseal(crlf.stdout.decode().strip(), "up") == "k-1"


def test_seal_refuses_without_echoing_the_secret(tmp_path):
    key_path, pub_path, _ = write_keypair(tmp_path)
    # On the command line: refused, and not repeated back.
    done = gateway_cmd("seal", "--public-key", str(pub_path), "--scope", "up", UPSTREAM_KEY)
    assert done.returncode == 2 and b"standard input" in done.stderr
    assert_no_secret(done.stdout, done.stderr)
    cases = [
        (["--public-key", str(key_path), "--scope", "up"], UPSTREAM_KEY, b"PRIVATE key"),
        (["--public-key", str(pub_path), "--scope", "Not A Scope"], UPSTREAM_KEY, b"scope"),
        (["--public-key", str(tmp_path / "none.pub"), "--scope", "up"], UPSTREAM_KEY, b"not found"),
        (["--public-key", str(pub_path), "--scope", "up"], "", b"empty"),
        (["--public-key", str(pub_path), "--scope", "up"], "\n", b"empty"),
        (["--public-key", str(pub_path), "--scope", "up"], f"{UPSTREAM_KEY}\nx", b"line break"),
    ]
    for args, stdin, expected in cases:
        done = gateway_cmd("seal", *args, stdin=stdin.encode())
        assert done.returncode == 1, (args, done.stderr)
        assert expected in done.stderr and not done.stdout
        assert_no_secret(done.stdout, done.stderr)
    assert (
        key_path.read_text()
        not in gateway_cmd("seal", "--public-key", str(key_path), "--scope", "up").stderr.decode()
    )


def test_seal_hides_a_secret_typed_at_a_terminal(tmp_path):
    key_path, pub_path, _ = write_keypair(tmp_path)
    master, slave = pty.openpty()
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    # A new session has no controlling terminal, so getpass works on stdin,
    # the pty: the terminal echo it turns off is the one we read from.
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "seal", "--public-key", str(pub_path), "--scope", "up"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=REPO,
        env=base,
        start_new_session=True,
    )
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while b"(input hidden)" not in screen:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no prompt within 30 s; terminal shows {screen!r}"
            screen += os.read(master, 4096)
        os.write(master, UPSTREAM_KEY.encode() + b"\n")
        out, _ = proc.communicate(timeout=30)
        while True:  # the rest of the screen, until the child's side is closed
            ready, _, _ = select.select([master], [], [], 5)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every slave fd is closed
                break
            if not chunk:
                break
            screen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    assert proc.returncode == 0
    assert UPSTREAM_KEY.encode() not in screen  # not echoed
    assert Keyring.load(key_path).unseal(out.decode().strip(), "up") == UPSTREAM_KEY


# -- a running gateway ---------------------------------------------------------


def sealed_config(tmp_path: Path, base_url: str) -> tuple[str, Keyring]:
    key_path, _, _ = write_keypair(tmp_path / "keys")
    ring = Keyring.load(key_path)
    config = f"""
        seal_key_file: ../keys/seal.key
        auth:
          api_keys: [{ring.seal(CLIENT_KEY, "auth")}]
        admin:
          token: {ring.seal(ADMIN_TOKEN, "admin")}
        providers:
          - name: up
            provider_type: custom
            base_url: {base_url}
            api_key: {ring.seal(UPSTREAM_KEY, "up")}
        """
    return config, ring


async def test_upstream_sees_unsealed_key_and_client_never_does(
    gateway_factory, upstream, tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("GATEWAY_SEAL_KEY_FILE", raising=False)
    caplog.set_level(logging.DEBUG)
    config, _ = sealed_config(tmp_path, upstream.base_url)
    gw = await gateway_factory(config)
    seen: list[bytes] = []
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=headers) as r:
            assert r.status == 200
            seen += [await r.read(), str(r.headers).encode()]
        assert upstream.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert upstream.requests[-1].json()["model"] == "m1"

        # The upstream's error comes back verbatim, and still not the key.
        upstream.models = None
        upstream.handler = None
        async with s.post(
            f"{gw.base_url}/chat/completions",
            json=dict(CHAT, model="nope/x"),
            headers=headers,
        ) as r:
            assert r.status == 404
            seen.append(await r.read())
        for wrong in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": UPSTREAM_KEY}):
            async with s.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=wrong) as r:
                assert r.status == 401
                body = await r.read()
                assert orjson.loads(body)["error"]["code"] in ("missing_api_key", "invalid_api_key")
                seen += [body, str(r.headers).encode()]
        for path in ("/v1/models", "/v1/models/up/m1", "/healthz", "/readyz", "/metrics", "/x"):
            async with s.get(f"{gw.url}{path}", headers=headers) as r:
                seen += [await r.read(), str(r.headers).encode()]
    snapshot = gw.holder.current
    assert snapshot.admin_token.matches(ADMIN_TOKEN)
    assert snapshot.auth_keys[0].matches(CLIENT_KEY)
    assert_no_secret(*seen, caplog.text, repr(snapshot.providers["up"].api_key))


def bad_config(tmp_path: Path, key_file: str = "../keys/seal.key") -> Path:
    """One config holding every kind of failure, plus values that are fine."""
    key_path, _, _ = write_keypair(tmp_path / "keys")
    ring = Keyring.load(key_path)
    _, other_pub, other_kid = write_keypair(tmp_path / "other-keys")
    other = load_public_key(other_pub)
    cfg = tmp_path / "cfg" / "gateway.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    url = "http://127.0.0.1:9/v1"
    cfg.write_text(
        textwrap.dedent(
            f"""
            seal_key_file: {key_file}
            auth:
              api_keys:
                - {ring.seal(CLIENT_KEY, "auth")}
                - {ring.seal(ADMIN_TOKEN, "admin")}
            admin:
              token: {ring.seal(ADMIN_TOKEN, "good")}
            providers:
              - {{name: good, base_url: "{url}", api_key: {ring.seal(UPSTREAM_KEY, "good")}}}
              - {{name: plain, base_url: "{url}", api_key: {PLAIN_KEY}}}
              - {{name: wrong-key, base_url: "{url}", api_key: {other.seal(WRONG_KEY_KEY, "wrong-key")}}}
              - {{name: tampered, base_url: "{url}", api_key: {tamper(ring.seal(TAMPERED_KEY, "tampered"))}}}
              - {{name: wrong-scope, base_url: "{url}", api_key: {ring.seal(WRONG_SCOPE_KEY, "other")}}}
              - {{name: from-env, base_url: "{url}", api_key: "env:SEALED_TEST_UNSET_VAR"}}
            """
        )
    )
    (tmp_path / "other_kid").write_text(other_kid)
    return cfg


EXPECTED_PROBLEMS = [
    (None, "auth.api_keys[1]", "sealed for scope 'admin', not 'auth'"),
    (None, "admin.token", "sealed for scope 'good', not 'admin'"),
    ("wrong-key", "api_key", "key id '{other_kid}'"),
    ("tampered", "api_key", "corrupt or was altered"),
    ("wrong-scope", "api_key", "sealed for scope 'other', not 'wrong-scope'"),
    ("from-env", "api_key", "environment variable SEALED_TEST_UNSET_VAR is not set"),
]


def test_every_failure_reported_in_process_without_plain_text(
    tmp_path, monkeypatch, caplog, capsys
):
    monkeypatch.delenv("GATEWAY_SEAL_KEY_FILE", raising=False)
    monkeypatch.delenv("SEALED_TEST_UNSET_VAR", raising=False)
    caplog.set_level(logging.DEBUG)
    cfg = bad_config(tmp_path)
    other_kid = (tmp_path / "other_kid").read_text()
    with pytest.raises(ConfigError) as info:
        load_snapshot(cfg)
    problems = info.value.problems
    assert len(problems) == len(EXPECTED_PROBLEMS), [str(p) for p in problems]
    found = {(p.file, p.provider, p.field): p.message for p in problems}
    for provider, field, message in EXPECTED_PROBLEMS:
        assert message.format(other_kid=other_kid) in found[(str(cfg), provider, field)]
    assert "PLAIN-TEXT" in caplog.text  # the loud warning, naming the field only
    captured = capsys.readouterr()
    assert_no_secret(
        caplog.text, str(info.value), repr(info.value), repr(problems), captured.out, captured.err
    )


def test_check_command_reports_every_failure_without_plain_text(tmp_path):
    cfg = bad_config(tmp_path)
    other_kid = (tmp_path / "other_kid").read_text()
    done = gateway_cmd("check", "--config", str(cfg))
    assert done.returncode == 1
    err = done.stderr.decode()
    assert f"{len(EXPECTED_PROBLEMS)} problems" in err
    for provider, field, message in EXPECTED_PROBLEMS:
        where = f"{cfg}: provider '{provider}': " if provider else f"{cfg}: "
        line = next(li for li in err.splitlines() if f"{where}field '{field}': " in li)
        assert message.format(other_kid=other_kid) in line
    assert "PLAIN-TEXT" in err
    assert_no_secret(done.stdout, done.stderr)


def test_check_reports_missing_key_file_and_other_failures(tmp_path):
    cfg = bad_config(tmp_path, key_file="../keys/missing.key")
    done = gateway_cmd("check", "--config", str(cfg))
    assert done.returncode == 1
    err = done.stderr.decode()
    missing = cfg.parent / "../keys/missing.key"  # as config.py resolves it
    assert f"{cfg}: field 'seal_key_file': key file {missing} not found" in err, err
    assert "SEALED_TEST_UNSET_VAR is not set" in err  # still checked in the same run
    assert_no_secret(done.stdout, done.stderr)

    # GATEWAY_SEAL_KEY_FILE wins over the config, and its failure says so.
    done = gateway_cmd(
        "check", "--config", str(cfg), env={"GATEWAY_SEAL_KEY_FILE": str(tmp_path / "nope")}
    )
    assert done.returncode == 1 and b"GATEWAY_SEAL_KEY_FILE" in done.stderr
    # ...and with the right key from there, only the value problems remain.
    done = gateway_cmd(
        "check", "--config", str(cfg), env={"GATEWAY_SEAL_KEY_FILE": str(tmp_path / "keys")}
    )
    assert done.returncode == 1
    assert f"{len(EXPECTED_PROBLEMS)} problems" in done.stderr.decode()
    assert_no_secret(done.stdout, done.stderr)


def test_check_passes_on_sealed_config(tmp_path):
    config, _ = sealed_config(tmp_path, "http://127.0.0.1:9/v1")
    cfg = tmp_path / "cfg" / "gateway.yaml"
    cfg.parent.mkdir()
    cfg.write_text(textwrap.dedent(config))
    done = gateway_cmd("check", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert b"OK" in done.stdout
    assert_no_secret(done.stdout, done.stderr)


async def test_rejected_reload_keeps_the_old_key_and_leaks_nothing(
    gateway_factory, upstream, tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("GATEWAY_SEAL_KEY_FILE", raising=False)
    monkeypatch.delenv("SEALED_TEST_UNSET_VAR", raising=False)
    caplog.set_level(logging.DEBUG)
    config, ring = sealed_config(tmp_path, upstream.base_url)
    gw = await gateway_factory(config)
    # The same config, but the provider's key sealed for another scope and
    # the admin token altered: both must fail, and the old config serve on.
    bad = textwrap.dedent(config).splitlines()
    for i, line in enumerate(bad):
        if "api_key: sealed:" in line:
            bad[i] = f"    api_key: {ring.seal(WRONG_SCOPE_KEY, 'other')}"
        if "token: sealed:" in line:
            bad[i] = f"  token: {tamper(ring.seal(ADMIN_TOKEN, 'admin'))}"
    gw.config_path.write_text("\n".join(bad) + "\n")
    assert gw.reloader.reload() is False
    last_error = gw.reloader.status.last_error or ""
    assert "sealed for scope 'other', not 'up'" in last_error
    assert "corrupt or was altered" in last_error
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=headers) as r:
            assert r.status == 200
            body = await r.read()
        async with s.get(f"{gw.url}/readyz") as r:
            ready = await r.read()
    # The old config still serves, with the old key.
    assert upstream.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert_no_secret(body, ready, last_error, caplog.text)
