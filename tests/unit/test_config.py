"""Config parsing: every mistake names the file, the provider and the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import (
    OPENAI_BASE_URL,
    ConfigError,
    config_path_from_env,
    load_config,
    parse_listen,
)
from tests.support import self_signed

UP = "http://127.0.0.1:9/v1"


def write(tmp_path: Path, text: str, fragments: dict[str, str] | None = None) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    for name, body in (fragments or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(body))
    return path


def problems(path: Path) -> list[tuple[str, str | None, str | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [(Path(p.file).name, p.provider, p.field, p.message) for p in info.value.problems]


def test_minimal_config_and_defaults(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            """
            providers:
              - name: local-vllm
                provider_type: custom
                base_url: http://127.0.0.1:8000/v1/
                api_key: env:VLLM_KEY
                headers: {X-Title: demo}
                models: [llama-3.1-8b, llama-3.1-8b, qwen]
              - name: oai
                provider_type: openai
            """,
        )
    )
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 8080)
    vllm, oai = cfg.providers
    assert vllm.base_url == "http://127.0.0.1:8000/v1"  # trailing slash normalised
    assert vllm.headers == (("X-Title", "demo"),)
    assert vllm.models == ("llama-3.1-8b", "qwen")
    assert vllm.api_key.kind == "env" and vllm.api_key.scope == "local-vllm"
    assert oai.base_url == OPENAI_BASE_URL and oai.models is None
    assert vllm.timeouts.first_byte >= 300  # LLMs think for minutes


def test_empty_file_is_a_valid_config_with_no_providers(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.providers == ()


def test_every_mistake_is_reported_with_file_provider_field(tmp_path):
    path = write(
        tmp_path,
        """
        listen: localhost
        colour: blue
        include: providers.d
        providers:
          - name: a
            provider_type: azure
            base_url: http://x/v1
          - name: b
            provider_type: custom
          - name: c
            base_url: ftp://example.com/v1
            api_kee: x
          - name: a
            base_url: http://y/v1
          - name: Bad Name
            base_url: http://z/v1
        """,
        {"providers.d/frag.yaml": "name: d\nbase_url: not a url\n"},
    )
    found = problems(path)
    by_field = {(f, prov, field) for f, prov, field, _ in found}
    assert ("gateway.yaml", None, "listen") in by_field
    assert ("gateway.yaml", None, "colour") in by_field
    assert ("gateway.yaml", "a", "provider_type") in by_field
    assert ("gateway.yaml", "b", "base_url") in by_field
    assert ("gateway.yaml", "c", "base_url") in by_field
    assert ("gateway.yaml", "c", "api_kee") in by_field
    assert ("gateway.yaml", "a", "name") in by_field  # duplicate
    assert ("gateway.yaml", "Bad Name", "name") in by_field
    assert ("frag.yaml", "d", "base_url") in by_field
    assert len(found) == 9
    messages = {field: msg for _, _, field, msg in found}
    assert "unknown provider_type 'azure'" in messages["provider_type"]
    assert "unknown key" in messages["colour"]


def test_error_text_reads_file_provider_field(tmp_path):
    path = write(tmp_path, "providers:\n  - name: x\n    base_url: ftp://h/v1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: provider 'x': field 'base_url': ")


def test_duplicate_between_main_file_and_fragment_names_both(tmp_path):
    path = write(
        tmp_path,
        """
        include: providers.d
        providers:
          - name: dup
            base_url: http://a/v1
        """,
        {"providers.d/dup.yaml": "name: dup\nbase_url: http://b/v1\n"},
    )
    [(file, provider, field, message)] = problems(path)
    assert (file, provider, field) == ("dup.yaml", "dup", "name")
    assert "gateway.yaml" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("base_url: http://user:pw@h/v1", "base_url"),
        ("base_url: http://h/v1?x=1", "base_url"),
        ("base_url: 42", "base_url"),
        ("base_url: http://h/v1\n    headers: {Authorization: x}", "headers.Authorization"),
        ("base_url: http://h/v1\n    headers: {'bad name': x}", "headers.bad name"),
        ("base_url: http://h/v1\n    models: [1, 2]", "models"),
        ("base_url: http://h/v1\n    timeouts: {connect: -1}", "timeouts.connect"),
        ("base_url: http://h/v1\n    timeouts: {conect: 1}", "timeouts.conect"),
        ("base_url: http://h/v1\n    api_key: ''", "api_key"),
        ("base_url: http://h/v1\n    api_key: 'env:'", "api_key"),
        ("base_url: http://h/v1\n    max_connections: 0", "max_connections"),
    ],
)
def test_provider_field_errors(tmp_path, text, field):
    path = write(tmp_path, f"providers:\n  - name: p\n    {text}\n")
    found = problems(path)
    assert [(prov, fld) for _, prov, fld, _ in found] == [("p", field)]


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "providers:\n  - name: [unclosed\n")
    [(file, _, _, message)] = problems(path)
    assert file == "gateway.yaml" and "line" in message


def test_missing_file(tmp_path):
    [(_, _, _, message)] = problems(tmp_path / "nope.yaml")
    assert message == "file not found"


def test_missing_include_dir(tmp_path):
    path = write(tmp_path, "include: nowhere\n")
    [(_, _, field, message)] = problems(path)
    assert field == "include" and "does not exist" in message


def test_relative_paths_are_relative_to_the_file(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "frags").mkdir()
    path = write(sub, "include: frags\nseal_key_file: keys/seal.key\n")
    cfg = load_config(path)
    assert cfg.include == sub / "frags"
    assert cfg.seal_key_file == sub / "keys" / "seal.key"


def test_fragments_are_store_sourced_and_listed_as_files(tmp_path):
    path = write(
        tmp_path,
        "include: p.d\n",
        {"p.d/one.yaml": "name: one\nbase_url: http://a/v1\n", "p.d/notes.txt": "ignored"},
    )
    cfg = load_config(path)
    assert [(p.name, p.source) for p in cfg.providers] == [("one", "store")]
    assert {f.name for f in cfg.files} == {"gateway.yaml", "one.yaml"}


def test_auth_and_admin(tmp_path):
    path = write(
        tmp_path,
        """
        auth: {api_keys: [env:K1, plain-key]}
        admin: {token: env:ADMIN, writable: false}
        """,
    )
    cfg = load_config(path)
    assert [k.scope for k in cfg.auth.api_keys] == ["auth", "auth"]
    assert cfg.admin.token.scope == "admin" and cfg.admin.writable is False


def test_secret_ref_repr_never_shows_text(tmp_path):
    path = write(
        tmp_path,
        "providers:\n  - name: p\n    base_url: http://h/v1\n    api_key: sk-plain-value\n",
    )
    cfg = load_config(path)
    assert "sk-plain-value" not in repr(cfg)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        (":9000", ("0.0.0.0", 9000)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8080", "host:port", "h:70000", "[zz]:1", "a b:1", 8080])
def test_parse_listen_rejects(value):
    with pytest.raises((ValueError, TypeError)):
        parse_listen(value)


def test_config_path_precedence(monkeypatch):
    monkeypatch.setenv("GATEWAY_CONFIG", "/env.yaml")
    assert str(config_path_from_env("/cli.yaml")) == "/cli.yaml"
    assert str(config_path_from_env(None)) == "/env.yaml"
    monkeypatch.delenv("GATEWAY_CONFIG")
    assert str(config_path_from_env(None)) == "config/gateway.yaml"


@pytest.mark.parametrize("name", ["auth", "admin"])
def test_reserved_provider_names(tmp_path, name):
    """auth/admin are secret scopes: a provider by that name could receive their sealed values."""
    path = write(tmp_path, f"providers:\n  - name: {name}\n    base_url: http://h/v1\n")
    [(_, provider, field, message)] = problems(path)
    assert (provider, field) == (name, "name") and "reserved" in message


def test_ca_file_is_loaded_relative_to_its_file_and_hashed(tmp_path):
    cert, _ = self_signed(tmp_path)
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "lab.pem").write_text(Path(cert).read_text())
    path = write(
        tmp_path,
        """
        providers:
          - name: lab
            base_url: https://lab.internal/v1
            ca_file: certs/lab.pem
        """,
    )
    cfg = load_config(path)
    lab = cfg.provider("lab")
    assert lab.ca_file == "certs/lab.pem"
    assert lab.ca_pem == Path(cert).read_text()
    assert cfg.ca_files() == [tmp_path / "certs" / "lab.pem"]
    assert "BEGIN" not in repr(lab)  # the bundle is not dumped into logs
    # Another CA in the same file: another config (digest and provider).
    other, _ = self_signed(tmp_path / "certs")
    (tmp_path / "certs" / "lab.pem").write_text(Path(other).read_text())
    again = load_config(path)
    assert again.digest != cfg.digest
    assert again.provider("lab") != lab


@pytest.mark.parametrize(
    ("base_url", "ca_file", "content", "message"),
    [
        ("https://h/v1", "missing.pem", None, "cannot read"),
        ("https://h/v1", "ca.pem", "not a certificate\n", "no usable PEM CA certificate"),
        (
            "https://h/v1",
            "ca.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "no usable PEM CA certificate",
        ),
        ("http://h/v1", "ca.pem", None, "only applies to an https:// base_url"),
        ("https://h/v1", "", None, "must be a path"),
    ],
)
def test_ca_file_problems_name_the_field(tmp_path, base_url, ca_file, content, message):
    if content is not None:
        (tmp_path / "ca.pem").write_text(content)
    path = write(
        tmp_path,
        f"""
        providers:
          - name: lab
            base_url: {base_url}
            ca_file: "{ca_file}"
        """,
    )
    [(file, provider, field, text)] = problems(path)
    assert (file, provider, field) == ("gateway.yaml", "lab", "ca_file")
    assert message in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://10.0.0.1:3128", "http://10.0.0.1:3128"),
        ("http://proxy.internal", "http://proxy.internal:80"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
    ],
)
def test_proxy_is_normalised(tmp_path, value, expected):
    path = write(tmp_path, f"providers:\n  - name: up\n    base_url: {UP}\n    proxy: '{value}'\n")
    assert load_config(path).provider("up").proxy == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://proxy:3128", "must be http://HOST:PORT"),
        ("socks5://proxy:1080", "must be http://HOST:PORT"),
        ("proxy:3128", "must be http://HOST:PORT"),
        ("http://proxy:3128/path", "must be http://HOST:PORT"),
        ("http://user:secret@proxy:3128", "credentials are not supported"),
        ("42", "must be http://HOST:PORT"),
    ],
)
def test_proxy_problems_name_the_field(tmp_path, value, message):
    path = write(tmp_path, f"providers:\n  - name: up\n    base_url: {UP}\n    proxy: '{value}'\n")
    [(file, provider, field, text)] = problems(path)
    assert (file, provider, field) == ("gateway.yaml", "up", "proxy")
    assert message in text
    assert "secret" not in text  # the message never repeats what was written
