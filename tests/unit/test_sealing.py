"""Sealing: X25519 + HKDF-SHA256 + AES-256-GCM envelopes bound to a scope and a key id."""

from __future__ import annotations

import base64
import stat
import textwrap
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.reload import resolver_for
from gateway.sealing import (
    PREFIX,
    Keyring,
    generate_keypair,
    load_public_key,
    parse_public_key,
    write_keypair,
)
from gateway.secrets import SecretError

SECRET = "sk-live-7f3a9c1e-unit-secret"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def keyring_and_pub(tmp_path: Path, name: str = "seal") -> tuple[Keyring, Path]:
    key_path, pub_path, _ = write_keypair(tmp_path, name)
    return Keyring.load(key_path), pub_path


@pytest.fixture
def ring(tmp_path) -> Keyring:
    return keyring_and_pub(tmp_path)[0]


def unseal_error(ring: Keyring, sealed: str, scope: str = "up") -> str:
    with pytest.raises(SecretError) as info:
        ring.unseal(sealed, scope)
    message = str(info.value)
    assert SECRET not in message and SECRET not in repr(info.value)
    return message


def test_round_trip_with_public_key_only(tmp_path):
    ring, pub_path = keyring_and_pub(tmp_path)
    public = load_public_key(pub_path)  # what `gateway seal` has: no private key
    for plain in (SECRET, "x", "ключ-密钥-🔑", "a" * 4096):
        sealed = public.seal(plain, "up")
        assert sealed.startswith(f"{PREFIX}{public.kid}:up:")
        assert len(plain) < 8 or plain not in sealed
        assert ring.unseal(sealed, "up") == plain
    # Fresh ephemeral key and nonce each time: equal secrets look unrelated.
    assert public.seal(SECRET, "up") != public.seal(SECRET, "up")


def test_envelope_shape(ring):
    sealed = ring.seal(SECRET, "my-provider_2")
    assert sealed.count(":") == 4
    _, version, kid, scope, payload = sealed.split(":")
    assert (version, kid, scope) == ("v1", ring.kids[0], "my-provider_2")
    assert len(kid) == 16 and int(kid, 16) >= 0
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    # ephemeral public key + nonce + ciphertext (as long as the text) + GCM tag
    assert len(data) == 32 + 12 + len(SECRET) + 16


def test_tampering_any_character_fails(ring):
    sealed = ring.seal(SECRET, "up")
    start = len("sealed:")  # the prefix decides whether a value is sealed at all
    for i in range(start, len(sealed)):
        for replacement in {B64URL[(B64URL.find(sealed[i]) + 1) % 64], "0", "~"} - {sealed[i]}:
            tampered = sealed[:i] + replacement + sealed[i + 1 :]
            unseal_error(ring, tampered)
    for cut in (sealed[:-1], sealed + "A", sealed[:-4], sealed + ":x"):
        unseal_error(ring, cut)


def test_tampering_any_payload_bit_fails_authentication(ring):
    sealed = ring.seal(SECRET, "up")
    head, _, payload = sealed.rpartition(":")
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            flipped = bytearray(data)
            flipped[i] ^= bit
            text = base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode()
            message = unseal_error(ring, f"{head}:{text}")
            assert "corrupt or was altered" in message


def test_non_canonical_base64_is_rejected(ring):
    # 32 + 12 + 4 + 16 = 64 bytes: the last base64 character carries 4 unused
    # bits; a lenient decoder would accept the same value spelt differently.
    sealed = ring.seal("abcd", "up")
    last = sealed[-1]
    index = B64URL.index(last)
    assert index % 16 == 0  # canonical: unused bits are zero
    for spare in range(1, 16):
        unseal_error(ring, sealed[:-1] + B64URL[index + spare])


def test_wrong_scope_names_both_scopes(ring):
    sealed = ring.seal(SECRET, "other")
    message = unseal_error(ring, sealed, "up")
    assert "sealed for scope 'other', not 'up'" in message
    assert "gateway seal --scope up" in message
    for scope in ("auth", "admin"):
        assert f"not '{scope}'" in unseal_error(ring, sealed, scope)


def test_scope_edited_to_match_fails_authentication(ring):
    sealed = ring.seal(SECRET, "other")
    moved = sealed.replace(":other:", ":up:")
    assert "corrupt or was altered" in unseal_error(ring, moved, "up")


def test_unknown_key_id_names_the_key_id(tmp_path):
    ring, _ = keyring_and_pub(tmp_path / "a")
    other, _ = keyring_and_pub(tmp_path / "b")
    sealed = other.seal(SECRET, "up")
    message = unseal_error(ring, sealed)
    assert f"key id '{other.kids[0]}'" in message
    assert ring.kids[0] in message  # and which keys are loaded


def test_key_id_edited_to_the_loaded_key_fails_authentication(tmp_path):
    ring, _ = keyring_and_pub(tmp_path / "a")
    other, _ = keyring_and_pub(tmp_path / "b")
    sealed = other.seal(SECRET, "up").replace(other.kids[0], ring.kids[0])
    assert "corrupt or was altered" in unseal_error(ring, sealed)


def test_malformed_values_fail_clearly(ring):
    cases = {
        "sealed:v2:abc": "version 'v2' is not supported",
        "sealed:v1:": "malformed",
        "sealed:v1:0123456789abcdef:up": "malformed",
        "sealed:v1:XYZ:up:AAAA": "bad key id",
        "sealed:v1:0123456789abcdef:Up!:AAAA": "bad scope",
        "sealed:": "not supported",
    }
    for text, expected in cases.items():
        assert expected in unseal_error(ring, text), text
    kid = ring.kids[0]
    assert "bad encoding" in unseal_error(ring, f"sealed:v1:{kid}:up:not*base64")
    assert "bad encoding" in unseal_error(ring, f"sealed:v1:{kid}:up:AAAA")


def test_rotation_two_keys_in_a_directory(tmp_path):
    keys = tmp_path / "keys"
    _, old_pub, old_kid = write_keypair(keys, "seal-2024-01")
    _, new_pub, new_kid = write_keypair(keys, "seal-2025-07")
    (keys / "README.txt").write_text("not a key")
    (keys / ".hidden.key").write_text("ignored: Kubernetes keeps its internals hidden")
    ring = Keyring.load(keys)
    assert set(ring.kids) == {old_kid, new_kid}
    # The name that sorts last seals: date-named keys make the newest primary.
    assert ring.kids[0] == new_kid and ring.public_key_text == new_pub.read_text().strip()
    for pub in (old_pub, new_pub):
        sealed = load_public_key(pub).seal(SECRET, "up")
        assert ring.unseal(sealed, "up") == SECRET
    assert ring.seal(SECRET, "up").split(":")[2] == new_kid
    # Once the old key is removed, its values name the missing key.
    (keys / "seal-2024-01.key").unlink()
    sealed_old = load_public_key(old_pub).seal(SECRET, "up")
    assert f"key id '{old_kid}'" in unseal_error(Keyring.load(keys), sealed_old)


def test_same_key_twice_is_one_key(tmp_path):
    private, _ = generate_keypair()
    ring = Keyring.from_private_texts([("a", private), ("b", private)])
    assert len(ring.kids) == 1


def test_keyring_load_errors_never_show_key_material(tmp_path):
    private, public = generate_keypair()
    body = private.strip().split(":")[-1]
    (tmp_path / "empty").mkdir()
    (tmp_path / "pub-as-private.key").write_text(public)
    (tmp_path / "mangled.key").write_text(private.replace(":v1:", ":v1:x"))
    (tmp_path / "short.key").write_text(private[:-5] + "\n")
    cases = {
        tmp_path / "missing.key": "not found",
        tmp_path / "empty": "holds no *.key file",
        tmp_path / "pub-as-private.key": "this is a public key",
        tmp_path / "mangled.key": "not a gateway private key",
        tmp_path / "short.key": "not a gateway private key",
    }
    for path, expected in cases.items():
        with pytest.raises(SecretError) as info:
            Keyring.load(path)
        assert expected in str(info.value) and str(path) in str(info.value)
        assert body not in str(info.value) and body[:20] not in repr(info.value)
    ring = Keyring.from_private_texts([("k", private)])
    assert body not in repr(ring)


def test_public_key_errors(tmp_path):
    private, public = generate_keypair()
    with pytest.raises(SecretError, match="PRIVATE key") as info:
        parse_public_key(private, "x.pub")
    assert private.strip().split(":")[-1] not in str(info.value)
    with pytest.raises(SecretError, match="not a gateway public key"):
        parse_public_key("-----BEGIN PUBLIC KEY-----", "x.pub")
    with pytest.raises(SecretError, match="not found"):
        load_public_key(tmp_path / "nope.pub")
    assert parse_public_key(public).text == public.strip()


def test_seal_refuses_bad_input(ring):
    for plain, expected in (
        ("", "empty"),
        ("two\nlines", "line break"),
        ("sealed:v1:abc", "already a sealed value"),
    ):
        with pytest.raises(SecretError, match=expected):
            ring.seal(plain, "up")
    for scope in ("", "Up", "a:b", "x y"):
        with pytest.raises(SecretError, match="invalid scope"):
            ring.seal(SECRET, scope)


def test_write_keypair_modes_and_no_overwrite(tmp_path):
    key_path, pub_path, kid = write_keypair(tmp_path / "new" / "dir")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert Keyring.load(key_path).kids == (kid,) == (load_public_key(pub_path).kid,)
    before = key_path.read_bytes(), pub_path.read_bytes()
    with pytest.raises(FileExistsError):
        write_keypair(key_path.parent)
    pub_path.unlink()  # even one file of the pair present blocks a new pair
    (tmp_path / "new" / "dir" / "seal.pub").symlink_to("/nonexistent")
    with pytest.raises(FileExistsError):
        write_keypair(key_path.parent)
    assert key_path.read_bytes() == before[0]
    assert sorted(p.name for p in key_path.parent.iterdir()) == ["seal.key", "seal.pub"]


# -- resolver_for: which key a config gets ----------------------------------


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_resolver_for_uses_seal_key_file_relative_to_config(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_SEAL_KEY_FILE", raising=False)
    ring, _ = keyring_and_pub(tmp_path / "keys")
    sealed = ring.seal(SECRET, "up")
    path = config(
        tmp_path,
        f"""
        seal_key_file: keys/seal.key
        providers:
          - {{name: up, base_url: "http://127.0.0.1:9/v1", api_key: {sealed}}}
        """,
    )
    cfg = load_config(path)
    assert resolver_for(cfg).resolve(cfg.providers[0].api_key).reveal() == SECRET


def test_env_key_file_wins_over_config(tmp_path, monkeypatch):
    ring, _ = keyring_and_pub(tmp_path / "envkeys")
    sealed = ring.seal(SECRET, "up")
    path = config(
        tmp_path,
        f"""
        seal_key_file: does-not-exist.key
        providers:
          - {{name: up, base_url: "http://127.0.0.1:9/v1", api_key: {sealed}}}
        """,
    )
    monkeypatch.setenv("GATEWAY_SEAL_KEY_FILE", str(tmp_path / "envkeys"))  # a directory
    cfg = load_config(path)
    assert resolver_for(cfg).resolve(cfg.providers[0].api_key).reveal() == SECRET


def test_missing_key_file_is_a_problem_on_seal_key_file(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_SEAL_KEY_FILE", raising=False)
    monkeypatch.delenv("UNIT_MISSING_VAR", raising=False)
    path = config(
        tmp_path,
        """
        seal_key_file: keys/seal.key
        providers:
          - {name: up, base_url: "http://127.0.0.1:9/v1", api_key: "env:UNIT_MISSING_VAR"}
        """,
    )
    with pytest.raises(ConfigError) as info:
        resolver_for(load_config(path))
    key_problem, env_problem = info.value.problems
    assert (key_problem.file, key_problem.field) == (str(path), "seal_key_file")
    assert "not found" in key_problem.message
    assert str(tmp_path / "keys" / "seal.key") in key_problem.message
    # The other secrets were still checked: one run reports everything.
    assert (env_problem.provider, env_problem.field) == ("up", "api_key")
    assert "UNIT_MISSING_VAR is not set" in env_problem.message

    monkeypatch.setenv("GATEWAY_SEAL_KEY_FILE", str(tmp_path / "env.key"))
    with pytest.raises(ConfigError) as info:
        resolver_for(load_config(path))
    assert "GATEWAY_SEAL_KEY_FILE" in info.value.problems[0].message


def test_no_key_configured_leaves_sealed_values_to_fail_each(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_SEAL_KEY_FILE", raising=False)
    ring, _ = keyring_and_pub(tmp_path / "keys")
    path = config(
        tmp_path,
        f"""
        providers:
          - {{name: up, base_url: "http://127.0.0.1:9/v1", api_key: {ring.seal(SECRET, "up")}}}
        """,
    )
    cfg = load_config(path)
    with pytest.raises(SecretError, match="no private key is loaded"):
        resolver_for(cfg).resolve(cfg.providers[0].api_key)
