"""The main file's sections besides `providers:` and `include:`, one parser each.

`SECTIONS` is the table `load_config` runs: each entry is a `GatewayConfig`
field, filled from the top-level key of the same name by a function of
`(parser, value, path)`, called in this order (the order problems are
listed in). A key left out or written empty (`limits:`) gets the field's
default; `cors`, `usage` and `tracing` also read the environment, so they
are called even then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .cors import parse_cors
from .schema import (
    DEFAULT_LISTEN,
    ENV_NAME_RE,
    NAME_RE,
    AccessLog,
    AdminConfig,
    AuthConfig,
    Limits,
    ModelsSettings,
)
from .telemetry import parse_tracing, parse_usage
from .validate import NumberSection, Parser, parse_listen

Section = Callable[[Parser, Any, Path], Any]

# Sizes and counts are whole numbers; times are seconds (0.5 is fine).
LIMITS = NumberSection(
    "limits",
    Limits,
    integers=frozenset({"max_body_bytes", "max_header_bytes", "max_connections"}),
    finite=True,
)
# 0 is allowed: no cache, or (fetch_timeout) no wait.
MODELS = NumberSection("models", ModelsSettings, minimum=-1e-9)


# Client names the gateway gives requests itself: a key named so would merge
# its figures with theirs (forwarder.ANONYMOUS, status.PLAYGROUND_CLIENT).
RESERVED_CLIENTS = {
    "anonymous": "requests without a client key",
    "playground": "the admin UI's playground",
}


def listen(parser: Parser, data: Mapping, path: Path) -> tuple[str, int]:
    """`listen` as (host, port). Unlike the sections, `listen:` left empty
    is a mistake, not the default."""
    if "listen" not in data:
        return parse_listen(DEFAULT_LISTEN)
    try:
        return parse_listen(data["listen"])
    except (ValueError, TypeError) as exc:
        parser.problem(path, f"{data['listen']!r}: {exc}", field="listen")
        return parse_listen(DEFAULT_LISTEN)


def _set(parse: Section, default: Any = None) -> Section:
    """`parse` for a set value; `default` for a missing or empty one."""

    def section(parser: Parser, raw: Any, path: Path) -> Any:
        return default if raw is None else parse(parser, raw, path)

    return section


def _numbers(spec: NumberSection) -> Section:
    return lambda parser, raw, path: parser.numbers(raw, spec, path)


def _seal_key_file(parser: Parser, raw: Any, path: Path) -> Path | None:
    if not isinstance(raw, str):
        parser.problem(path, "must be a path", field="seal_key_file")
        return None
    return path.parent / raw


def _auth(parser: Parser, raw: Any, path: Path) -> AuthConfig | None:
    """`auth.api_keys`: plain secrets (named key-1, key-2... by position) or
    `{name: team-a, key: <secret>}` mappings."""
    if not isinstance(raw, Mapping):
        parser.problem(path, "must be a mapping with api_keys", field="auth")
        return None
    parser.unknown_keys(raw, {"api_keys"}, path, prefix="auth.")
    keys = raw.get("api_keys")
    if not isinstance(keys, list) or not keys:
        parser.problem(path, "must be a non-empty list", field="auth.api_keys")
        return None
    refs, names = [], []
    for i, entry in enumerate(keys):
        where = name_field = key_field = f"auth.api_keys[{i}]"
        name, value = f"key-{i + 1}", entry
        if isinstance(entry, Mapping):
            parser.unknown_keys(entry, {"name", "key"}, path, prefix=f"{where}.")
            name, value = entry.get("name"), entry.get("key")
            name_field, key_field = f"{where}.name", f"{where}.key"
            if not isinstance(name, str) or not NAME_RE.match(name):
                message = "required: a slug of lowercase letters, digits, '-' and '_' (max 63)"
                parser.problem(path, message, field=name_field)
                name = None
            elif name in RESERVED_CLIENTS:
                message = f"'{name}' is the gateway's own client name ({RESERVED_CLIENTS[name]}): choose another"
                parser.problem(path, message, field=name_field)
                name = None
        if name is not None and name in names:
            parser.problem(path, f"duplicate client name '{name}'", field=name_field)
        refs.append(parser.secret(value, file=path, field=key_field, scope="auth"))
        names.append(name)
    if not all(refs) or None in names or len(set(names)) != len(names):
        return None
    return AuthConfig(tuple(refs), tuple(names))


def _admin(parser: Parser, raw: Any, path: Path) -> AdminConfig | None:
    if not isinstance(raw, Mapping):
        parser.problem(path, "must be a mapping with token", field="admin")
        return None
    parser.unknown_keys(raw, {"token", "writable", "env_prefixes"}, path, prefix="admin.")
    writable = raw.get("writable", True)
    if not isinstance(writable, bool):
        parser.problem(path, "must be true or false", field="admin.writable")
    prefixes = _env_prefixes(parser, raw.get("env_prefixes", []), path)
    token = parser.secret(raw.get("token"), file=path, field="admin.token", scope="admin")
    return AdminConfig(token, bool(writable), prefixes) if token else None


def _env_prefixes(parser: Parser, value: Any, path: Path) -> tuple[str, ...]:
    """`admin.env_prefixes`: variable name prefixes the admin API may use."""
    if isinstance(value, list) and all(isinstance(p, str) and ENV_NAME_RE.match(p) for p in value):
        return tuple(value)
    example = "must be a list of environment variable name prefixes, e.g. [GATEWAY_PROVIDER_]"
    parser.problem(path, example, field="admin.env_prefixes")
    return ()


def _access_log(parser: Parser, raw: Any, path: Path) -> AccessLog:
    if isinstance(raw, bool):  # `access_log: true` is short for enabled: true
        return AccessLog(enabled=raw)
    if not isinstance(raw, Mapping):
        parser.problem(path, "must be true, false or a mapping", field="access_log")
        return AccessLog()
    parser.unknown_keys(raw, {"enabled", "sample_rate"}, path, prefix="access_log.")
    enabled = raw.get("enabled", True)
    rate = raw.get("sample_rate", 1.0)
    if not isinstance(enabled, bool):
        parser.problem(path, "must be true or false", field="access_log.enabled")
    elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        parser.problem(path, "must be a number in (0, 1]", field="access_log.sample_rate")
    else:
        return AccessLog(enabled=enabled, sample_rate=float(rate))
    return AccessLog()


SECTIONS: tuple[tuple[str, Section], ...] = (
    ("seal_key_file", _set(_seal_key_file)),
    ("auth", _set(_auth)),
    ("admin", _set(_admin)),
    ("limits", _numbers(LIMITS)),
    ("access_log", _set(_access_log, AccessLog())),
    ("models", _numbers(MODELS)),
    ("cors", parse_cors),
    ("usage", parse_usage),
    ("tracing", parse_tracing),
)


def aliases(parser: Parser, raw: Any, path: Path) -> dict[str, tuple[tuple[str, str], ...]]:
    """`aliases:`, checked against the providers already parsed (`parser.names`)."""
    if not isinstance(raw, Mapping):
        parser.problem(path, "must map an alias name to a list of PROVIDER/MODEL", field="aliases")
        return {}
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for alias, targets in raw.items():
        fname = f"aliases.{alias}"
        if not isinstance(alias, str) or not alias:
            parser.problem(path, "an alias name must be a non-empty string", field=fname)
        elif alias.partition("/")[0] in parser.names:
            message = "an alias must not start with a provider name and '/'"
            parser.problem(path, message, field=fname)
        elif not isinstance(targets, list) or not targets:
            parser.problem(path, "must be a non-empty list of PROVIDER/MODEL", field=fname)
        else:
            out[alias] = _targets(parser, targets, path, fname)
    return out


def _targets(parser: Parser, targets: list, path: Path, fname: str) -> tuple[tuple[str, str], ...]:
    resolved = []
    for i, target in enumerate(targets):
        provider, _, model = target.partition("/") if isinstance(target, str) else ("", "", "")
        if not model:
            parser.problem(path, "must be PROVIDER/MODEL", field=f"{fname}[{i}]")
        elif provider not in parser.names:
            parser.problem(path, f"no provider named '{provider}'", field=f"{fname}[{i}]")
        else:
            resolved.append((provider, model))
    return tuple(resolved)
