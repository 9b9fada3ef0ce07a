"""`gateway schema`: the JSON Schema editors use agrees with the loader.

The schema is generated from the config code (gateway/schema.py); these
tests hold it to `gateway check`: every shipped config passes it, and a
table of broken configs is rejected by both, each naming the same field.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway import config as cfg
from gateway.config import ConfigError, load_config
from gateway.schema import SCHEMA_DIR, SCHEMA_FILES, fragment_schema, gateway_schema, render
from tests.support import REPO

MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.M)
SHIPPED_MAIN = [
    REPO / "config" / "gateway.yaml",
    REPO / "deploy" / "docker" / "gateway.yaml",
    *sorted((REPO / "deploy").glob("**/config/gateway.yaml")),
]
SHIPPED_FRAGMENTS = sorted((REPO / "deploy").glob("**/providers.d/*.yaml")) + sorted(
    (REPO / "config").glob("providers.d/*.yaml")
)


class _JsonLikeLoader(yaml.SafeLoader):
    """YAML as an editor's language server reads it: `2024-10-21` stays a
    string (YAML 1.2 has no timestamps; PyYAML's 1.1 would make a date)."""


_JsonLikeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def schema_errors(text: str, schema: dict) -> list[str]:
    data = yaml.load(text, Loader=_JsonLikeLoader)
    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(data if data is not None else {})]


@pytest.mark.parametrize("provider", [False, True], ids=["gateway", "provider"])
def test_checked_in_schema_is_what_gateway_schema_prints(provider):
    name = SCHEMA_FILES["provider" if provider else "gateway"]
    flag = " --provider" if provider else ""
    assert (SCHEMA_DIR / name).read_text() == render(provider=provider), (
        f"schema/{name} is stale: run `gateway schema{flag} > schema/{name}`"
    )


def test_schemas_are_valid_draft_2020_12():
    for schema in (gateway_schema(), fragment_schema()):
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_key_the_loader_knows_is_in_the_schema():
    """Fields added to the loader's tables appear without editing schema.py."""
    top = gateway_schema()["properties"]
    assert set(top) == set(cfg.TOP_KEYS)
    provider = fragment_schema()["properties"]
    assert list(provider) == list(cfg.PROVIDER_FIELDS)
    assert set(top["limits"]["properties"]) == {f for f in cfg.Limits.__dataclass_fields__}


@pytest.mark.parametrize(
    "path", SHIPPED_MAIN + SHIPPED_FRAGMENTS, ids=lambda p: str(p.relative_to(REPO))
)
def test_shipped_configs_point_editors_at_the_schema_and_pass_it(path):
    text = path.read_text()
    modeline = MODELINE.search(text)
    assert modeline, f"{path} has no `# yaml-language-server: $schema=...` line"
    schema_path = (path.parent / modeline.group(1)).resolve()
    is_fragment = path.parent.name == "providers.d"
    expected = SCHEMA_DIR / SCHEMA_FILES["provider" if is_fragment else "gateway"]
    assert schema_path == expected.resolve()
    assert schema_errors(text, json.loads(schema_path.read_text())) == []


def test_shipped_config_list_is_not_empty():
    assert len(SHIPPED_MAIN) >= 4 and len(SHIPPED_FRAGMENTS) >= 2


def test_readme_points_editors_at_the_schema():
    readme = (REPO / "README.md").read_text()
    assert "gateway schema" in readme
    assert "# yaml-language-server: $schema=" in readme


P = "providers:\n  - name: a\n    base_url: http://127.0.0.1:9/v1\n"
R = "providers:\n  - name: r\n    replicas: [http://10.0.0.1:8000/v1, http://10.0.0.2:8000/v1]\n"
# (YAML of a main file, the field `gateway check` names): both must reject it.
BAD = [
    ("listen: 8080\n", "listen"),
    ("bogus: 1\n", "bogus"),
    ("seal_key_file: 3\n", "seal_key_file"),
    ("include: [a]\n", "include"),
    ("providers: {name: a}\n", "providers"),
    ("providers:\n  - name: a\n", "base_url"),
    ("providers:\n  - base_url: http://127.0.0.1:9/v1\n", "name"),
    ("providers:\n  - name: A b\n    base_url: http://x/v1\n", "name"),
    ("providers:\n  - name: auth\n    base_url: http://x/v1\n", "name"),
    (
        "providers:\n  - name: a\n    provider_type: azure\n    base_url: http://x/v1\n",
        "provider_type",
    ),
    ("providers:\n  - name: a\n    base_url: ftp://x/v1\n", "base_url"),
    ("providers:\n  - name: a\n    base_url: 42\n", "base_url"),
    (P + "    timeout: 5\n", "timeout"),
    (P + "    max_connections: '10'\n", "max_connections"),
    (P + "    max_connections: 0\n", "max_connections"),
    (P + "    timeouts: {connect: 0}\n", "timeouts.connect"),
    (P + "    timeouts: {conect: 1}\n", "timeouts.conect"),
    (P + "    timeouts: 5\n", "timeouts"),
    (P + "    api_key: ''\n", "api_key"),
    (P + "    api_key: env:1BAD\n", "api_key"),
    (P + "    api_key: [a]\n", "api_key"),
    (P + "    models: gpt\n", "models"),
    (P + "    headers: [a, b]\n", "headers"),
    (P + "    auth_header: basic\n", "auth_header"),
    (P + "    endpoints: [chat]\n", "endpoints"),
    (P + "    proxy: https://10.0.0.1:3128\n", "proxy"),
    (P + "    headers: {X Title: demo}\n", "headers.X Title"),
    (P + "    query: {a b: 1}\n", "query.a b"),
    (P + "    passthrough: [v1/models]\n", "passthrough"),
    ("limits: {max_body_bytes: -1}\n", "limits.max_body_bytes"),
    ("limits: {max_body: 1}\n", "limits.max_body"),
    ("limits: {head_timeout: fast}\n", "limits.head_timeout"),
    ("limits: 5\n", "limits"),
    ("models: {cache_ttl: -1}\n", "models.cache_ttl"),
    ("models: {ttl: 1}\n", "models.ttl"),
    ("access_log: {sample_rate: 2}\n", "access_log.sample_rate"),
    ("access_log: 'yes'\n", "access_log"),
    ("access_log: {enabled: true, level: info}\n", "access_log.level"),
    ("admin: {writable: true}\n", "admin.token"),
    ("admin: {token: env:T, writeable: true}\n", "admin.writeable"),
    ("admin: {token: env:T, writable: 'no'}\n", "admin.writable"),
    ("admin: {token: env:T, env_prefixes: [1X]}\n", "admin.env_prefixes"),
    ("auth: {api_keys: []}\n", "auth.api_keys"),
    ("auth: {keys: [env:K]}\n", "auth.keys"),
    ("auth: {api_keys: [{name: team-a}]}\n", "auth.api_keys[0].key"),
    ("auth: {api_keys: [{name: Team A, key: env:K}]}\n", "auth.api_keys[0].name"),
    ("cors: {}\n", "cors.allow_origins"),
    ("cors: {allow_origins: ['*'], max_age: 100000}\n", "cors.max_age"),
    ("cors: {allow_origins: ['*'], origins: []}\n", "cors.origins"),
    (P + "aliases: {fast: []}\n", "aliases.fast"),
    (P + "aliases: {fast: [nomodel]}\n", "aliases.fast[0]"),
    # Fields of other modules (usage, tracing, replicas): picked up too.
    (P + "    stream_usage: 'yes'\n", "stream_usage"),
    ("usage: {enable: true}\n", "usage.enable"),
    ("tracing: {enabled: false, level: 1}\n", "tracing.level"),
    (P + "    replicas: [http://10.0.0.1:8000/v1]\n", "replicas"),
    (R + "    balancing: {eject: 1}\n", "balancing.eject"),
    (R + "    health_check: {interval: 5}\n", "health_check"),
    (R + "    discovery: {dns: true, every: 5}\n", "discovery.every"),
]
# Valid configs, some with the shorthands a schema could wrongly refuse.
GOOD = [
    "",
    "providers: []\n",
    "providers:\n  - name: oai\n    provider_type: openai\n",
    "limits:\nmodels:\naccess_log:\ncors:\nauth:\nadmin:\n",
    "access_log: true\nlimits: {head_timeout: 0.5, max_connections: 10}\n",
    "models: {cache_ttl: 0, fetch_timeout: 2.5}\n",
    "auth:\n  api_keys: [env:K1, {name: team-b, key: 'sealed:v1:0123456789abcdef:auth:x'}]\n",
    "admin: {token: env:T, writable: false, env_prefixes: [GATEWAY_P_]}\n",
    "cors: {allow_origins: ['https://app.example.com'], max_age: 0}\n",
    P + "    api_key: plain-text-key\n    headers: {X-Title: demo, X-Num: 3}\n"
    "    query: {api-version: 2024-10-21, n: 1}\n    auth_header: api-key\n"
    "    timeouts: {connect: 1, first_byte: 2.5}\n    models: [m1]\n"
    "    endpoints: [chat/completions, embeddings]\n    passthrough: [/v1/*]\n"
    "    proxy: http://10.0.0.1:3128\n"
    "aliases: {fast: [a/m1]}\n",
    P + "    stream_usage: true\nusage: {enabled: false}\ntracing: {enabled: false}\n",
    R + "    balancing: {affinity: {header: X-Session-Id}, eject_after: 3}\n"
    "    health_check: {path: /health, interval: 10}\n",
    "providers:\n  - name: k\n    base_url: http://vllm.models.svc:8000/v1\n"
    "    discovery: {dns: true, interval: 10}\n    balancing: {affinity: {field: user}}\n",
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(("text", "field"), BAD, ids=[f for _, f in BAD])
def test_schema_rejects_what_check_rejects(tmp_path, text, field):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    fields = [p.field for p in info.value.problems]
    assert field in fields, fields
    assert schema_errors(text, gateway_schema()), f"the schema accepts:\n{text}"


@pytest.mark.parametrize("text", GOOD)
def test_schema_accepts_what_check_accepts(tmp_path, text):
    load_config(write(tmp_path, text))
    assert schema_errors(text, gateway_schema()) == []


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: a\n", "base_url"),
        ("name: a\nbase_url: http://x/v1\nmodel: [m]\n", "model"),
        ("base_url: http://x/v1\n", "name"),
    ],
)
def test_fragment_schema_rejects_what_check_rejects(tmp_path, text, field):
    (tmp_path / "providers.d").mkdir()
    (tmp_path / "providers.d" / "a.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "include: providers.d\n"))
    assert field in [p.field for p in info.value.problems]
    assert schema_errors(text, fragment_schema())


@pytest.mark.parametrize("provider", [False, True], ids=["gateway", "provider"])
def test_gateway_schema_command_prints_it(capsys, provider):
    from gateway.cli import main

    assert main(["schema", *(["--provider"] if provider else [])]) == 0
    out = capsys.readouterr().out
    assert out == render(provider=provider)
    assert json.loads(out)["$schema"].endswith("/2020-12/schema")
