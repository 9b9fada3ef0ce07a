"""`gateway schema`: a JSON Schema (draft 2020-12) of the config, for editors.

GitOps users edit the YAML long before `gateway check` runs; with the
`# yaml-language-server: $schema=...` modeline an editor underlines a typo
as it is typed. The schema is generated from the config code, so that it
cannot drift from what the loader accepts:

- the keys come from the loader's own tables (`TOP_KEYS`, `PROVIDER_FIELDS`,
  `CORS_KEYS`) and, for the nested sections, from the dataclasses' fields
  (`Limits`, `Timeouts`, `AdminConfig`...), whose fields are the keys;
- the types come from those dataclasses' type hints; a field without a
  default is required;
- what a type hint cannot say (a YAML shape that differs from the parsed
  one, a pattern, a range) is in `SHAPES` below, one small table, built from
  the constants the loader enforces (`NAME_RE`, `PROVIDER_TYPES`,
  `ENDPOINTS`...).

A key the loader accepts but that nothing here describes (a new field whose
hint maps to no JSON type) still appears, unconstrained. A nested dataclass
is taken to have the section's keys as its fields; where a parser differs
(config/replicas.py folds four keys into one dataclass, `tracing.enabled`
is a key but no field), SHAPES says so, and the tables of good and bad
configs in the test catch a mismatch. tests/unit/test_schema.py checks that the
checked-in schema/*.schema.json equal this output, that every shipped config
passes, and that the schema rejects what `gateway check` rejects.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import config as cfg
from .config.cors import CORS_KEYS, MAX_MAX_AGE, CorsConfig
from .config.provider_api import _PATTERN, _QUERY_NAME, AUTH_HEADERS, ApiOptions
from .config.replicas import MAX_PREFIX_BYTES, MAX_REPLICAS
from .config.telemetry import EXPORTERS
from .headercheck import _TOKEN_RE
from .proxy.endpoints import ENDPOINTS

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"
SCHEMA_FILES = {"gateway": "gateway.schema.json", "provider": "provider.schema.json"}

_NULL = {"type": "null"}
_POSITIVE = {"exclusiveMinimum": 0}  # the loader's `number()` default: > 0
_ENV_NAME = cfg.ENV_NAME_RE.pattern.strip("^$")
# A secret: sealed:v1:..., env:NAME or (refused by `check --public-key`) plain text.
SECRET = {
    "type": "string",
    "minLength": 1,
    "pattern": f"^(?!env:)|^env:{_ENV_NAME}$",
    "description": "sealed:v1:... (gateway seal), env:VARIABLE, or plain text (not for git)",
}
_PAIRS = {"type": "object", "additionalProperties": {"type": ["string", "number"]}}

# What the type hints cannot say, by section.key: YAML shapes that differ
# from the parsed dataclass, and the patterns and ranges the loader checks.
SHAPES: dict[str, dict[str, Any]] = {
    "listen": {"type": "string", "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.:_-]*):\d{1,5}$"},
    "auth": {
        "type": ["object", "null"],
        "additionalProperties": False,
        "required": ["api_keys"],
        "properties": {
            "api_keys": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "anyOf": [
                        {"$ref": "#/$defs/secret"},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "key"],
                            "properties": {
                                "name": {"type": "string", "pattern": cfg.NAME_RE.pattern},
                                "key": {"$ref": "#/$defs/secret"},
                            },
                        },
                    ]
                },
            }
        },
    },
    "aliases": {
        "type": ["object", "null"],
        "additionalProperties": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "pattern": "^[^/]+/.+"},
        },
    },
    "providers": {"type": ["array", "null"], "items": {"$ref": "#/$defs/provider"}},
    "admin.env_prefixes": {
        "type": "array",
        "items": {"type": "string", "pattern": f"^{_ENV_NAME}$"},
    },
    # None drops what the type gave: these may be 0.
    "models.cache_ttl": {"minimum": 0, "exclusiveMinimum": None},
    "models.fetch_timeout": {"minimum": 0, "exclusiveMinimum": None},
    "access_log.sample_rate": {"exclusiveMinimum": 0, "maximum": 1},
    "cors.max_age": {"minimum": 0, "exclusiveMinimum": None, "maximum": MAX_MAX_AGE},
    "cors.allow_origins": {"minItems": 1},
    "provider.name": {
        "type": "string",
        "pattern": cfg.NAME_RE.pattern,
        "not": {"enum": sorted(cfg.RESERVED_NAMES)},
    },
    "provider.provider_type": {"enum": list(cfg.PROVIDER_TYPES), "default": "custom"},
    "provider.base_url": {
        "type": "string",
        "pattern": "^https?://[^/?#@]+[^?#]*$",
        "description": "required for provider_type custom, e.g. http://127.0.0.1:8000/v1",
    },
    "provider.models": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}},
    "provider.proxy": {"type": ["string", "null"], "pattern": "^http://[^/?#@]+/?$"},
    "provider.auth_header": {"enum": list(AUTH_HEADERS)},
    "provider.headers": {"propertyNames": {"pattern": _TOKEN_RE.pattern}},
    "provider.query": {"propertyNames": {"pattern": _QUERY_NAME.pattern}},
    "provider.passthrough": {"items": {"type": "string", "pattern": _PATTERN.pattern}},
    "provider.endpoints": {"type": ["array", "null"], "items": {"enum": list(ENDPOINTS)}},
    # gateway/config/telemetry.py: `enabled` is a key but not a field.
    "tracing.enabled": {"type": "boolean"},
    "tracing.endpoint": {"pattern": "^https?://"},
    "tracing.exporter": {"enum": list(EXPORTERS)},
    "tracing.service_name": {"minLength": 1, "maxLength": 200},
    "tracing.sample_ratio": {"minimum": 0, "exclusiveMinimum": None, "maximum": 1},
    # gateway/config/replicas.py: four keys parsed into one ReplicaOptions.
    "provider.replicas": {
        "type": ["array", "null"],
        "minItems": 2,
        "maxItems": MAX_REPLICAS,
        "items": {"type": "string", "pattern": "^https?://[^/?#@]+[^?#]*$"},
    },
    "provider.discovery": {
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {"dns": {"type": "boolean"}, "interval": {"type": "number", "minimum": 0.5}},
    },
    "provider.balancing": {
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {
            "affinity": {
                "type": ["object", "null"],
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "header": {"type": "string", "minLength": 1},
                    "field": {"const": "user"},
                    "prefix_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_PREFIX_BYTES},
                },
                "additionalProperties": False,
            },
            "eject_after": {"type": "integer", **_POSITIVE},
            "eject_seconds": {"type": "number", **_POSITIVE},
            "eject_max_seconds": {"type": "number", **_POSITIVE},
            "retry_after_max": {"type": "number", **_POSITIVE},
        },
    },
    "provider.health_check": {
        "type": ["object", "null"],
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "pattern": "^/[^ \\r\\n\\t?#]*$", "maxLength": 512},
            "interval": {"type": "number", "minimum": 0.1},
            "timeout": {"type": "number", **_POSITIVE},
        },
    },
}
# `provider_type: custom` (the default) needs a base_url (or replicas, whose
# first is the base_url); openai has one.
_BASE_URL_RULE = {
    "if": {
        "properties": {"provider_type": {"const": "openai"}},
        "required": ["provider_type"],
    },
    "else": {"anyOf": [{"required": ["base_url"]}, {"required": ["replicas"]}]},
}


def _hint_schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON shape of a config field from its type hint ({} when unknown)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _hint_schema(args[0], where) if len(args) == 1 else {}
        return _nullable(inner)
    if hint is cfg.SecretRef:
        return {"$ref": "#/$defs/secret"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer", **_POSITIVE}
    if hint is float:
        return {"type": "number", **_POSITIVE}
    if hint in (str, Path):
        return {"type": "string"}
    if dataclasses.is_dataclass(hint):
        return _nullable(_section(hint, where))
    if origin in (tuple, frozenset):
        args = typing.get_args(hint)
        if args and typing.get_origin(args[0]) is tuple:  # pairs: a YAML mapping
            return _nullable(_PAIRS)
        item = _hint_schema(args[0], where) if args else {}
        return _nullable({"type": "array", "items": item})
    if origin is not None and issubclass(origin, Mapping):
        return _nullable({"type": "object"})
    return {}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A section or an optional field may be left empty (`key:` reads as null)."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if "$ref" in schema:
        return {"anyOf": [schema, _NULL]}
    return schema


def _hints(*classes: type) -> dict[str, Any]:
    """Field name -> type hint over the classes, the first class winning."""
    hints: dict[str, Any] = {}
    for cls in reversed(classes):
        hints.update(typing.get_type_hints(cls))
    return hints


def _section(cls: type, name: str, keys: typing.Iterable[str] | None = None) -> dict[str, Any]:
    """An object with `cls`'s init fields (or `keys`) as properties, no others."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    hints = _hints(cls)
    if keys is None:  # the fields, and keys that SHAPES adds (parsed, but no field)
        extra = (k.removeprefix(f"{name}.") for k in SHAPES if k.startswith(f"{name}."))
        keys = [*fields, *(k for k in extra if "." not in k and k not in fields)]
    props = {}
    for key in keys:
        props[key] = _property(f"{name}.{key}", hints.get(key))
    required = [
        k
        for k, f in fields.items()
        if k in props
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if required:
        schema["required"] = required
    schema["properties"] = props
    return schema


def _property(where: str, hint: Any) -> dict[str, Any]:
    shape = SHAPES.get(where, {})
    if "type" in shape or "enum" in shape or "$ref" in shape:
        return dict(shape)  # a whole shape of its own
    merged = {**(_hint_schema(hint, where) if hint is not None else {}), **shape}
    return {k: v for k, v in merged.items() if v is not None}


def provider_schema() -> dict[str, Any]:
    """One provider: an item of `providers:` or an `include:` fragment."""
    hints = _hints(cfg.ProviderConfig, ApiOptions)
    props = {key: _property(f"provider.{key}", hints.get(key)) for key in cfg.PROVIDER_FIELDS}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": props,
        **_BASE_URL_RULE,
    }


def gateway_schema() -> dict[str, Any]:
    """The schema of the main config file (config/gateway.yaml)."""
    hints = _hints(cfg.GatewayConfig)
    props = {key: _property(key, hints.get(key)) for key in sorted(cfg.TOP_KEYS)}
    if "access_log" in props:  # `access_log: true` is short for enabled: true
        props["access_log"] = {"anyOf": [{"type": "boolean"}, props["access_log"]]}
    if "cors" in props:  # its keys are config/cors.py's own table
        props["cors"] = _nullable(_section(CorsConfig, "cors", CORS_KEYS))
    return {
        "$schema": DRAFT,
        "title": "gateway config (config/gateway.yaml)",
        "description": "Generated by `gateway schema`; see README.md (Configuration).",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "$defs": {"provider": provider_schema(), "secret": SECRET},
    }


def fragment_schema() -> dict[str, Any]:
    """The schema of one `include:` fragment file (providers.d/NAME.yaml)."""
    return {
        "$schema": DRAFT,
        "title": "gateway provider (one file of the include: directory)",
        "description": "Generated by `gateway schema --provider`; see README.md.",
        **provider_schema(),
        "$defs": {"secret": SECRET},
    }


def render(provider: bool = False) -> str:
    """The schema as `gateway schema` prints it (and schema/*.json hold it)."""
    schema = fragment_schema() if provider else gateway_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
