"""One provider entry -> a `ProviderConfig`, or None with its problems recorded.

Used for the entries of `providers:`, for `include:` fragments and, through
`load.parse_provider`, by the admin API, so that all three follow one set of
rules. Fields are checked in the order a person writes them (the order of
`PROVIDER_FIELDS`), and every bad field is reported, not just the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..headercheck import header_name_problem, header_value_problem, printable
from .provider_api import parse_api_options
from .replicas import default_base_url, parse_replica_options
from .schema import (
    NAME_RE,
    OPENAI_BASE_URL,
    PROVIDER_KEYS,
    PROVIDER_TYPES,
    RESERVED_HEADERS,
    RESERVED_NAMES,
    ProviderConfig,
    Timeouts,
)
from .validate import NumberSection, Parser

TIMEOUTS = NumberSection("timeouts", Timeouts)
_SLUG = "required: a slug of lowercase letters, digits, '-' and '_' (max 63)"


def parse_provider_entry(
    parser: Parser, raw: Any, file: Path, source: str, index: int
) -> ProviderConfig | None:
    """`raw` as the `index`th provider of `file`; `source` is "config" (the
    main file) or "store" (an include fragment)."""
    label = f"providers[{index}]" if source == "config" else None
    if not isinstance(raw, Mapping):
        parser.problem(file, "a provider must be a mapping", label)
        return None
    before = len(parser.problems)
    pname = _name(parser, raw.get("name"), file, label)
    parser.unknown_keys(raw, PROVIDER_KEYS, file, pname)
    ptype = raw.get("provider_type", "custom")
    if ptype not in PROVIDER_TYPES:
        known = ", ".join(PROVIDER_TYPES)
        message = f"unknown provider_type {ptype!r} (known: {known})"
        parser.problem(file, message, pname, "provider_type")
    base_url = _base_url(parser, raw, ptype, file, pname)
    # Keyword arguments are evaluated in order: problems come out field by field.
    fields = dict(
        api_key=_secret(parser, raw, "api_key", file, pname),
        headers=_headers(parser, raw.get("headers") or {}, file, pname),
        models=_models(parser, raw.get("models"), file, pname),
        timeouts=parser.numbers(raw.get("timeouts"), TIMEOUTS, file, pname),
        max_connections=parser.number(
            raw.get("max_connections", 100),
            file=file,
            field="max_connections",
            provider=pname,
            integer=True,
        ),
        ca_file=raw.get("ca_file"),
        ca_pem=None
        if raw.get("ca_file") is None
        else parser.ca_bundle(raw["ca_file"], file, pname, base_url),
        proxy=None if raw.get("proxy") is None else parser.proxy_url(raw["proxy"], file, pname),
        proxy_auth=_proxy_auth(parser, raw, file, pname),
        api=parse_api_options(parser, raw, file, pname),
        replicas=parse_replica_options(parser, raw, file, pname, base_url),
    )
    if len(parser.problems) > before:
        return None
    return ProviderConfig(
        name=pname, provider_type=ptype, base_url=base_url, source=source, file=str(file), **fields
    )


def _name(parser: Parser, name: object, file: Path, label: str | None) -> str:
    """The provider's name as its problems show it; checks the slug and duplicates."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        # Every line about this provider names it the same way: by the
        # name as written when there is one, by position only when not
        # (a fragment without a name is named by its file alone).
        shown = label if name is None or name == "" else printable(str(name))[:64]
        parser.problem(file, _SLUG, shown, "name")
        return shown or ""
    if name in RESERVED_NAMES:
        # These are the scopes of auth.api_keys and admin.token: a
        # provider by that name could be handed their sealed values and
        # send them to a base_url of anyone's choosing.
        parser.problem(file, f"'{name}' is reserved; choose another name", name, "name")
    elif name in parser.names:
        first = parser.names[name]
        parser.problem(file, f"duplicate provider name (first defined in {first})", name, "name")
    else:
        parser.names[name] = str(file)
    return name


def _base_url(parser: Parser, raw: Mapping, ptype: object, file: Path, pname: str) -> str | None:
    base_url = default_base_url(raw)  # the first of `replicas` if only they are given
    if base_url is None and ptype == "openai":
        base_url = OPENAI_BASE_URL
    if base_url is None:
        parser.problem(file, "required for provider_type custom", pname, "base_url")
        return None
    return parser.base_url(base_url, file, pname)


def _secret(parser: Parser, raw: Mapping, key: str, file: Path, pname: str) -> Any:
    if raw.get(key) is None:
        return None
    return parser.secret(raw[key], file=file, field=key, scope=pname, provider=pname)


def _proxy_auth(parser: Parser, raw: Mapping, file: Path, pname: str) -> Any:
    if raw.get("proxy_auth") is not None and raw.get("proxy") is None:
        parser.problem(file, "set only with proxy", pname, "proxy_auth")
    return _secret(parser, raw, "proxy_auth", file, pname)


def _headers(parser: Parser, raw: object, file: Path, pname: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping):
        parser.problem(file, "must be a mapping of header name to value", pname, "headers")
        return ()
    headers = []
    for hname, hvalue in raw.items():
        # The name may hold CR/LF itself: escaped, for a one-line error.
        fname = f"headers.{printable(str(hname))}"
        bad_name = header_name_problem(hname)
        if bad_name:
            parser.problem(file, bad_name, pname, fname)
        elif hname.lower() in RESERVED_HEADERS:
            parser.problem(file, "set by the gateway; cannot be configured", pname, fname)
        elif not isinstance(hvalue, (str, int, float)) or isinstance(hvalue, bool):
            parser.problem(file, "must be a string", pname, fname)
        elif bad_value := header_value_problem(str(hvalue)):
            parser.problem(file, bad_value, pname, fname)
        else:
            headers.append((hname, str(hvalue)))
    return tuple(headers)


def _models(parser: Parser, raw: object, file: Path, pname: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(m, str) and m for m in raw):
        parser.problem(file, "must be a list of model names", pname, "models")
        return None
    return tuple(dict.fromkeys(raw))
