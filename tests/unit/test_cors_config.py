"""The `cors:` section: parsed by gateway/config/cors.py from load_config; every
mistake names the file and the field, as the other sections do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.cors import DEFAULT_EXPOSE_HEADERS, normalize_origin


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[tuple[str, str | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [(Path(p.file).name, p.field, p.message) for p in info.value.problems]


def test_absent_section_means_cors_off(tmp_path):
    assert load_config(write(tmp_path, "providers: []\n")).cors is None
    assert load_config(write(tmp_path, "cors:\n")).cors is None  # null, like other sections


def test_defaults_and_normalised_origins(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            """
            cors:
              allow_origins:
                - https://App.Example.com:443
                - http://localhost:5173
                - http://[0:0:0:0:0:0:0:1]:8080
                - https://app.example.com
                - chrome-extension://abcdefghijklmnop
            """,
        )
    )
    cors = cfg.cors
    assert cors is not None
    # As browsers send Origin: lower case, default port dropped, IPv6 compressed;
    # the duplicate is gone.
    assert cors.allow_origins == (
        "https://app.example.com",
        "http://localhost:5173",
        "http://[::1]:8080",
        "chrome-extension://abcdefghijklmnop",
    )
    assert cors.allows("https://app.example.com") and not cors.allows("https://evil.example")
    assert cors.allow_headers is None  # reflect the preflight's request
    assert cors.expose_headers == DEFAULT_EXPOSE_HEADERS
    assert "X-Request-Id" in cors.expose_headers
    assert "x-ratelimit-remaining-tokens" in cors.expose_headers
    assert (cors.max_age, cors.allow_credentials) == (600, False)


def test_every_key_set(tmp_path):
    cors = load_config(
        write(
            tmp_path,
            """
            cors:
              allow_origins: ["https://a.example"]
              allow_headers: [Authorization, Content-Type]
              expose_headers: []
              max_age: 0
              allow_credentials: true
            """,
        )
    ).cors
    assert cors.allow_headers == ("Authorization", "Content-Type")
    assert cors.expose_headers == ()
    assert (cors.max_age, cors.allow_credentials) == (0, True)


def test_star_allows_any_origin(tmp_path):
    cors = load_config(write(tmp_path, "cors: {allow_origins: ['*']}\n")).cors
    assert cors.allow_origins == ("*",)
    assert cors.allows("https://anything.example") and cors.allows("http://localhost:1")


def test_star_with_credentials_is_rejected(tmp_path):
    found = problems(
        write(tmp_path, "cors: {allow_origins: ['*'], allow_credentials: true}\n"),
    )
    assert len(found) == 1
    file, field, message = found[0]
    assert (file, field) == ("gateway.yaml", "cors.allow_credentials")
    assert "allow_origins ['*']" in message


@pytest.mark.parametrize(
    ("origins", "field", "message"),
    [
        ("[https://app.example.com/]", "cors.allow_origins[0]", "no path"),
        ("[https://app.example.com/app]", "cors.allow_origins[0]", "no path"),
        ("[app.example.com]", "cors.allow_origins[0]", "must start with a scheme"),
        ("['null']", "cors.allow_origins[0]", "'null' origin"),
        ("['https://*.example.com']", "cors.allow_origins[0]", "wildcards"),
        ("[http://user@host]", "cors.allow_origins[0]", "user name"),
        ("['http://host:99999']", "cors.allow_origins[0]", "not between 1 and 65535"),
        ("['https://bücher.de']", "cors.allow_origins[0]", "xn--"),
        ("['http://[1::2::3]']", "cors.allow_origins[0]", "not an IPv6 address"),
        ("[http://ok.example, 7]", "cors.allow_origins[1]", "must be an origin string"),
        ("['*', https://a.example]", "cors.allow_origins", "must be the only entry"),
        ("[]", "cors.allow_origins", "non-empty list"),
        ("https://a.example", "cors.allow_origins", "non-empty list"),
    ],
)
def test_bad_origins_name_file_and_field(tmp_path, origins, field, message):
    found = problems(write(tmp_path, f"cors:\n  allow_origins: {origins}\n"))
    assert [(f, fld) for f, fld, _ in found] == [("gateway.yaml", field)]
    assert message in found[0][2]


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ("max_age: -1", "cors.max_age", "0 to 86400"),
        ("max_age: 86401", "cors.max_age", "0 to 86400"),
        ("max_age: 1.5", "cors.max_age", "whole number"),
        ("max_age: true", "cors.max_age", "whole number"),
        ("allow_credentials: 'yes'", "cors.allow_credentials", "true or false"),
        ("allow_headers: Authorization", "cors.allow_headers", "list of header names"),
        ("allow_headers: ['bad name']", "cors.allow_headers[0]", "not a valid HTTP header name"),
        ("expose_headers: [X-Ok, 'X:Bad']", "cors.expose_headers[1]", "not a valid HTTP header"),
        ("allowed_origins: []", "cors.allowed_origins", "unknown key"),
    ],
)
def test_bad_fields_name_file_and_field(tmp_path, extra, field, message):
    path = write(tmp_path, f"cors:\n  allow_origins: [https://a.example]\n  {extra}\n")
    found = problems(path)
    assert [(f, fld) for f, fld, _ in found] == [("gateway.yaml", field)]
    assert message in found[0][2]


def test_section_must_be_a_mapping_and_is_a_known_top_key(tmp_path):
    found = problems(write(tmp_path, "cors: [https://a.example]\n"))
    assert found == [("gateway.yaml", "cors", "must be a mapping with allow_origins")]
    [(_, field, message)] = problems(write(tmp_path, "corz: {}\n"))
    assert field == "corz" and "cors" in message  # listed among the known keys


def test_error_text_reads_file_and_field(tmp_path):
    path = write(tmp_path, "cors: {allow_origins: [https://a.example/]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: field 'cors.allow_origins[0]': ")


def test_normalize_origin_keeps_explicit_non_default_ports():
    assert normalize_origin("HTTPS://A.example:8443") == "https://a.example:8443"
    assert normalize_origin("http://a.example:443") == "http://a.example:443"
    assert normalize_origin("https://a.example:443") == "https://a.example"
