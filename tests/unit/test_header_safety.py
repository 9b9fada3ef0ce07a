"""Nothing from config reaches a request head unless a header can carry it.

Secrets (whatever their form: plain, env:, sealed) and `headers:` are
checked at load; a CR/LF would otherwise be written raw into the upstream
request head (request smuggling). Errors name the file, provider and field,
never the value.
"""

from __future__ import annotations

import base64
import logging
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigError, load_config
from gateway.redact import provider_redactor
from gateway.reload import load_snapshot
from gateway.sealing import Keyring, write_keypair
from gateway.secrets import Secret

SECRET = "sk-live-0123456789abcdef"


def write(tmp_path, text: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def rejected(path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_snapshot(path)
    return info.value


def assert_never_shown(text: str, value: str) -> None:
    # Neither the whole value nor its parts around the bad bytes.
    for piece in [value, *value.replace("\r", "\n").split("\n")]:
        if len(piece) >= 6:
            assert piece not in text


@pytest.mark.parametrize(
    "value",
    [
        f"{SECRET}\r\nX-Injected: evil",  # a break in the middle
        f"{SECRET}\n\n",  # two newlines: not one line end any more
        f"{SECRET}\r\n\r\n",
        f"{SECRET}\rmore",
        f"{SECRET}\x01tail",  # (an environment cannot hold a NUL)
        f"{SECRET}\x0btail",
        f"{SECRET}\x7ftail",
        f"\n{SECRET}",
    ],
)
def test_env_key_that_cannot_go_into_a_header_rejects_the_config(
    tmp_path, monkeypatch, caplog, capsys, value
):
    monkeypatch.setenv("HS_TEST_KEY", value)
    path = write(
        tmp_path,
        """
        providers:
          - {name: up, base_url: "http://127.0.0.1:9/v1", api_key: "env:HS_TEST_KEY"}
        """,
    )
    with caplog.at_level(logging.DEBUG):
        error = rejected(path)
    (problem,) = error.problems
    assert problem.file == str(path) and problem.provider == "up" and problem.field == "api_key"
    message = str(error)
    assert str(path) in message and "'up'" in message and "'api_key'" in message
    assert "HS_TEST_KEY" in message  # which variable, but not what it holds
    out = capsys.readouterr()
    for text in (message, caplog.text, out.out, out.err):
        assert_never_shown(text, value)


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_one_trailing_newline_of_an_env_value_is_trimmed(tmp_path, monkeypatch, ending):
    """A Kubernetes Secret made from a file ends in a newline: the key is the line."""
    monkeypatch.setenv("HS_TEST_KEY", SECRET + ending)
    path = write(
        tmp_path,
        """
        providers:
          - {name: up, base_url: "http://127.0.0.1:9/v1", api_key: "env:HS_TEST_KEY"}
        """,
    )
    runtime = load_snapshot(path).providers["up"]
    assert runtime.api_key.reveal() == SECRET
    assert runtime.upstream_headers["Authorization"] == f"Bearer {SECRET}"
    assert f"Authorization: Bearer {SECRET}\r\n".encode() in runtime.upstream_header_block


def test_an_env_value_that_is_only_a_newline_is_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("HS_TEST_KEY", "\n")
    path = write(
        tmp_path,
        """
        providers:
          - {name: up, base_url: "http://127.0.0.1:9/v1", api_key: "env:HS_TEST_KEY"}
        """,
    )
    assert "HS_TEST_KEY is empty" in str(rejected(path))


@pytest.mark.parametrize(
    ("field", "yaml_value"),
    [
        ("api_key", '"sk-plain\\r\\nX-Injected: 1"'),
        ("api_key", '"sk-plain\\x00nul"'),
        ("api_key", '"sk-plain\\tTAB"'),
        ("api_key", '"sk-\\u20ac-euro"'),  # outside Latin-1: a clean error, not a crash
        ("proxy_auth", '"user:pass\\nword"'),
    ],
)
def test_plain_yaml_secret_that_cannot_go_into_a_header_is_refused(
    tmp_path, caplog, field, yaml_value
):
    path = write(
        tmp_path,
        f"""
        providers:
          - name: up
            base_url: http://127.0.0.1:9/v1
            proxy: http://127.0.0.1:3128
            {field}: {yaml_value}
        """,
    )
    with caplog.at_level(logging.DEBUG):
        error = rejected(path)
    (problem,) = error.problems
    assert (problem.provider, problem.field) == ("up", field)
    assert "sk-plain" not in str(error) and "pass" not in str(error)
    # Refused before the plain-text warning: nothing about the value is logged.
    assert "sk-plain" not in caplog.text


def test_every_secret_field_is_checked(tmp_path, monkeypatch):
    """Inbound keys and the admin token go through the same check."""
    monkeypatch.setenv("HS_CLIENT", "client\r\nkey")
    monkeypatch.setenv("HS_ADMIN", "admin\x1btoken")
    path = write(
        tmp_path,
        """
        auth: {api_keys: ["env:HS_CLIENT"]}
        admin: {token: "env:HS_ADMIN"}
        providers: []
        """,
    )
    fields = {p.field for p in rejected(path).problems}
    assert fields == {"auth.api_keys[0]", "admin.token"}


def test_sealed_value_with_a_control_byte_is_refused_when_unsealed(tmp_path):
    """`gateway seal` refuses CR/LF/NUL, but a value sealed by other means
    (or with a VT/DEL) must still not reach a header."""
    write_keypair(tmp_path / "keys")
    keyring = Keyring.load(tmp_path / "keys" / "seal.key")
    sealed = keyring.seal("sk-sealed\x0bvt", "up")
    path = write(
        tmp_path,
        f"""
        seal_key_file: keys/seal.key
        providers:
          - {{name: up, base_url: "http://127.0.0.1:9/v1", api_key: "{sealed}"}}
        """,
    )
    (problem,) = rejected(path).problems
    assert problem.field == "api_key" and "unsealed value" in problem.message


@pytest.mark.parametrize(
    "value",
    ['"a\\x00b"', '"a\\vb"', '"a\\x7fb"', '"a\\rb"', '"a\\nb"', '"a\\x1bb"', '"\\u20ac"'],
)
def test_header_values_with_control_bytes_are_refused(tmp_path, value):
    path = write(
        tmp_path,
        f"""
        providers:
          - name: up
            base_url: http://127.0.0.1:9/v1
            headers: {{X-Title: {value}}}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert (problem.provider, problem.field) == ("up", "headers.X-Title")
    # While HTAB and Latin-1 (obs-text) are fine in a value.
    path.write_text(path.read_text().replace(value, '"a\\tb caf\\u00e9"'))
    assert load_config(path).providers[0].headers == (("X-Title", "a\tb café"),)


@pytest.mark.parametrize("name", ['"X-A\\r\\nX-Evil"', '"X A"', '"X:A"', '"X-\\u00e9"', "123"])
def test_bad_header_names_are_refused_in_a_one_line_error(tmp_path, name):
    path = write(
        tmp_path,
        f"""
        providers:
          - name: up
            base_url: http://127.0.0.1:9/v1
            headers: {{{name}: v}}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.field.startswith("headers.") and "header name" in problem.message
    # The name is escaped: a CR/LF in it cannot forge a second log line.
    assert "\r" not in str(problem) and "\n" not in str(problem)


@pytest.mark.parametrize("value", ['"GATEWAY_"', "[1]", '["A-B"]', '[""]'])
def test_admin_env_prefixes_are_validated_and_loaded(tmp_path, value):
    path = write(tmp_path, f'admin: {{token: "t0ken-123", env_prefixes: {value}}}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.field == "admin.env_prefixes" and "prefixes" in problem.message
    path = write(tmp_path, 'admin: {token: "t0ken-123", env_prefixes: [GATEWAY_PROVIDER_]}\n')
    assert load_config(path).admin.env_prefixes == ("GATEWAY_PROVIDER_",)
    path = write(tmp_path, 'admin: {token: "t0ken-123"}\n')
    assert load_config(path).admin.env_prefixes == ()


def test_inbound_token_that_is_not_utf8_compares_without_raising():
    # aiohttp hands such header bytes over as surrogate escapes.
    assert Secret("key").matches(b"\xff\xfe".decode("utf-8", "surrogateescape")) is False
    assert Secret("key").matches("key") is True


def test_redactor_hides_every_form_a_secret_is_sent_in():
    redact = provider_redactor(
        'sk-"quoted"-key', "egress:hunter22", [("X-Api-Key", "hdr-secret"), ("X-Title", "demo")]
    )
    basic = base64.b64encode(b"egress:hunter22").decode()
    echoed = (
        'Authorization: Bearer sk-"quoted"-key {"auth": "Bearer sk-\\"quoted\\"-key"} '
        f"Proxy-Authorization: Basic {basic} pw=hunter22 x-api-key: hdr-secret title=demo"
    )
    out = redact(echoed)
    for secret in ('sk-"quoted"-key', 'sk-\\"quoted\\"-key', basic, "hunter22", "hdr-secret"):
        assert secret not in out
    assert "title=demo" in out and "***" in out
    assert provider_redactor(None, None)("nothing to hide") == "nothing to hide"


@given(
    before=st.binary(max_size=40),
    between=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_stream_redaction_finds_a_secret_however_the_body_is_cut(before, between, cuts):
    """A relayed error body in any number of chunks gives the same bytes as
    redacting it whole (a secret split between chunks included)."""
    from gateway.redact import StreamRedaction, provider_redactor

    redactor = provider_redactor("sk-split-9f8e7d6c", None)
    body = before + b"sk-split-9f8e7d6c" + between + b'"sk-split-9f8e7d6c"'
    points = sorted({min(c, len(body)) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    edit = StreamRedaction(redactor)
    out = b"".join(edit(p) for p in pieces if p) + edit(b"")
    assert out == redactor.redact_bytes(body)
    assert b"sk-split-9f8e7d6c" not in out
