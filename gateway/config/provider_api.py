"""How a provider is spoken to: key header, fixed query, endpoints served, passthrough paths.

These are the provider fields that describe the upstream's API rather than
where it is: `auth_header`, `query`, `endpoints`, `passthrough` and
`stream_usage`. They
are parsed here, beside the rules they follow, and stored on
`ProviderConfig`.

The passthrough default allows the inference endpoints only. A gateway is
often shared by several teams in front of one vLLM: `/v1/load_lora_adapter`,
llama.cpp's `POST /props` or `/slots` change the server for everyone, so an
operator opens them on purpose (`passthrough: [...]` replaces the default).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from ..headercheck import header_value_problem
from ..proxy.endpoints import ENDPOINTS

if TYPE_CHECKING:  # validate.py imports these modules (through schema.py)
    from .validate import Parser

AUTH_HEADERS = {
    "bearer": "Authorization",  # OpenAI and nearly every compatible server
    "x-api-key": "x-api-key",  # Anthropic
    "api-key": "api-key",  # Azure OpenAI
}


def _default_passthrough() -> tuple[str, ...]:
    paths = [f"/v1/{name}" for name in ENDPOINTS]
    paths += [f"/{e.name}" for e in ENDPOINTS.values() if e.root or e.name in ("rerank", "score")]
    paths += ["/v1/responses/*", "/v1/models", "/v1/models/*"]
    return tuple(paths)


DEFAULT_PASSTHROUGH = _default_passthrough()
_QUERY_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
# A path pattern: a path of safe characters, `*` for any run of characters.
_PATTERN = re.compile(r"^(\*|/[A-Za-z0-9._~!$&'()+,;=:@/*-]*)$")


@dataclass(frozen=True, slots=True)
class ApiOptions:
    auth_header: str = "bearer"
    query: tuple[tuple[str, str], ...] = ()  # added to every upstream request
    endpoints: frozenset[str] | None = None  # None: every endpoint of the table
    passthrough: tuple[str, ...] = DEFAULT_PASSTHROUGH
    # Ask for usage on streams whose client did not (gateway/proxy/sse_filter.py).
    stream_usage: bool = False

    def serves(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints

    def allows(self, path: str) -> bool:
        """Whether `/providers/NAME` + `path` may be passed through."""
        return any(fnmatchcase(path, pattern) for pattern in self.passthrough)


DEFAULT_API = ApiOptions()


def parse_api_options(parser: Parser, raw: Mapping, file: Any, pname: str) -> ApiOptions:
    """The API fields of one provider; problems go to `parser`."""
    return ApiOptions(
        auth_header=_auth_header(parser, raw.get("auth_header", "bearer"), file, pname),
        query=_query(parser, raw.get("query"), file, pname),
        endpoints=_endpoints(parser, raw.get("endpoints"), file, pname),
        passthrough=_passthrough(parser, raw.get("passthrough"), file, pname)
        if raw.get("passthrough") is not None
        else DEFAULT_PASSTHROUGH,
        stream_usage=_flag(parser, raw.get("stream_usage", False), file, pname, "stream_usage"),
    )


def _flag(parser: Parser, value: object, file: Any, pname: str, field: str) -> bool:
    if isinstance(value, bool):
        return value
    parser.problem(file, "must be true or false", pname, field)
    return False


def _auth_header(parser: Parser, value: object, file: Any, pname: str) -> str:
    if value in AUTH_HEADERS:
        return str(value)
    known = ", ".join(AUTH_HEADERS)
    parser.problem(file, f"must be one of {known}", pname, "auth_header")
    return "bearer"


def _query(parser: Parser, value: object, file: Any, pname: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        parser.problem(file, "must be a mapping of parameter name to value", pname, "query")
        return ()
    pairs = []
    for name, v in value.items():
        field = f"query.{str(name)[:64]}"
        if type(v) is date:  # YAML reads an unquoted `api-version: 2024-10-21` as a date
            v = v.isoformat()
        if not isinstance(name, str) or not _QUERY_NAME.match(name):
            parser.problem(
                file, "a parameter name: letters, digits, '.', '_', '~', '-'", pname, field
            )
        elif not isinstance(v, (str, int, float)) or isinstance(v, bool):
            parser.problem(file, "must be a string", pname, field)
        elif problem := header_value_problem(str(v)):
            parser.problem(file, problem.replace("HTTP header", "URL"), pname, field)
        else:
            pairs.append((name, str(v)))
    return tuple(pairs)


def _endpoints(parser: Parser, value: object, file: Any, pname: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        parser.problem(file, "must be a list of endpoint names", pname, "endpoints")
        return None
    unknown = [e for e in value if e not in ENDPOINTS]
    if unknown:
        known = ", ".join(ENDPOINTS)
        parser.problem(
            file, f"unknown endpoint {unknown[0]!r} (known: {known})", pname, "endpoints"
        )
        return None
    return frozenset(value)


def _passthrough(parser: Parser, value: object, file: Any, pname: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        parser.problem(
            file, "must be a list of path patterns, e.g. [/v1/*, /tokenize]", pname, "passthrough"
        )
        return ()
    for pattern in value:
        if not _PATTERN.match(pattern) or "/../" in f"{pattern}/" or "//" in pattern:
            parser.problem(
                file,
                f"{pattern[:80]!r} is not a path pattern ('/path', '*' for any characters)",
                pname,
                "passthrough",
            )
            return ()
    return tuple(value)
