"""`gateway check` lists every problem in one run: structure and secrets together.

Before, the sealed-value and `env:` problems appeared only once the
structural ones were fixed: an operator ran the check two or three times.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError
from gateway.reload import Reloader, load_snapshot
from gateway.sealing import load_public_key, write_keypair
from gateway.snapshot import SnapshotHolder

UP = "http://127.0.0.1:9/v1"


@pytest.fixture
def keys(tmp_path, monkeypatch):
    """A key pair in tmp_path/keys; no GATEWAY_* setting of the developer's applies."""
    for name in ("GATEWAY_SEAL_KEY_FILE", "GATEWAY_CONFIG", "UNSET_FOR_CHECK_TEST"):
        monkeypatch.delenv(name, raising=False)
    key_path, pub_path, _ = write_keypair(tmp_path / "keys", "seal")
    return key_path, load_public_key(pub_path), pub_path


def broken_config(tmp_path: Path, public, key_line: str = "seal_key_file: keys") -> Path:
    wrong_scope = public.seal("upstream-key", "other")
    right = public.seal("upstream-key", "gamma")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(f"""
        {key_line}
        listen: "127.0.0.1:http"
        providers:
          - name: alpha
            provider_type: azure
            base_url: {UP}
            api_key: env:UNSET_FOR_CHECK_TEST
          - name: beta
            base_url: {UP}
            api_key: {wrong_scope}
          - name: gamma
            base_url: {UP}
            api_key: {right}
            timeout: 5
        """)
    )
    return path


def run_check(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["check", *args])
    err = capsys.readouterr().err
    return code, [line.strip()[2:] for line in err.splitlines() if line.strip().startswith("- ")]


def has(lines: list[str], provider: str | None, field: str, text: str) -> bool:
    who = f"provider '{provider}': " if provider else ""
    return any(f"{who}field '{field}': " in line and text in line for line in lines)


def test_check_lists_structure_and_secrets_together(tmp_path, keys, capsys):
    path = broken_config(tmp_path, keys[1])
    code, lines = run_check(capsys, "--config", str(path))
    assert code == 1
    assert has(lines, None, "listen", "not a number")
    assert has(lines, "alpha", "provider_type", "unknown provider_type")
    assert has(lines, "gamma", "timeout", "unknown key")
    assert has(lines, "alpha", "api_key", "UNSET_FOR_CHECK_TEST is not set")
    assert has(lines, "beta", "api_key", "sealed for scope 'other'")
    assert len(lines) == 5, lines  # gamma's key unseals: nothing about it
    assert "upstream-key" not in "\n".join(lines)


def test_public_key_check_lists_structure_and_secrets_together(tmp_path, keys, capsys):
    path = broken_config(tmp_path, keys[1])
    text = path.read_text().replace("api_key: env:UNSET_FOR_CHECK_TEST", "api_key: plain-key")
    path.write_text(text)
    code, lines = run_check(capsys, "--config", str(path), "--public-key", str(keys[2]))
    assert code == 1
    assert has(lines, "alpha", "provider_type", "unknown provider_type")
    assert has(lines, "alpha", "api_key", "plain-text secret")
    assert has(lines, "beta", "api_key", "sealed for scope 'other'")
    assert len(lines) == 5, lines
    assert "plain-key" not in "\n".join(lines)


def test_unloadable_key_is_listed_with_structure_and_env_problems(tmp_path, keys, capsys):
    path = broken_config(tmp_path, keys[1], key_line="seal_key_file: no-such-keys")
    code, lines = run_check(capsys, "--config", str(path))
    assert code == 1
    assert has(lines, None, "seal_key_file", "not found")
    assert has(lines, "alpha", "provider_type", "unknown provider_type")
    assert has(lines, "alpha", "api_key", "is not set")
    # Sealed values cannot be checked without the key: its problem says why.
    assert not any("field 'api_key'" in line and "beta" in line for line in lines)


def test_every_line_names_a_provider_the_same_way(tmp_path, keys, capsys):
    sealed = keys[1].seal("k", "bad-name")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(f"""
        seal_key_file: keys
        providers:
          - name: Bad Name
            base_url: {UP}
            api_key: {sealed}
            timeout: 5
          - provider_type: custom
            bogus: 1
        """)
    )
    code, lines = run_check(capsys, "--config", str(path))
    assert code == 1
    first = [line for line in lines if "Bad Name" in line]
    second = [line for line in lines if "providers[1]" in line]
    assert {line.split(": field ")[1].split("'")[1] for line in first} == {"name", "timeout"}
    assert {line.split(": field ")[1].split("'")[1] for line in second} == {
        "name",
        "bogus",
        "base_url",
    }
    # Nothing names them otherwise, and the broken name's key is not
    # checked against a scope it cannot have.
    assert len(lines) == len(first) + len(second), lines


def test_a_broken_config_is_still_rejected_whole_at_run_time(tmp_path, keys):
    broken = broken_config(tmp_path, keys[1])
    good = tmp_path / "good.yaml"
    good.write_text(f"providers:\n  - name: up\n    base_url: {UP}\n")
    holder = SnapshotHolder(load_snapshot(good))
    live = holder.current
    with pytest.raises(ConfigError) as info:
        load_snapshot(broken)
    fields = {(p.provider, p.field) for p in info.value.problems}
    assert {("alpha", "provider_type"), ("alpha", "api_key"), ("beta", "api_key")} <= fields

    reloader = Reloader(broken, holder)
    assert reloader.reload("test") is False
    assert holder.current is live
    assert "UNSET_FOR_CHECK_TEST is not set" in reloader.status.last_error
