"""The `cors:` section: its dataclass, its keys and the rules it is parsed by.

What the gateway does with it (preflights, the headers of each API answer)
is gateway/cors.py; this module is only the config side, so that the config
package needs nothing of aiohttp's server.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..headercheck import header_name_problem

if TYPE_CHECKING:  # validate.py imports these modules (through schema.py)
    from .validate import Parser

CORS_KEYS = ("allow_origins", "allow_headers", "expose_headers", "max_age", "allow_credentials")
# What a browser app needs to read besides the safelisted headers: the ids to
# quote in a bug report, the gateway's timing, and what the OpenAI SDKs read
# to back off (rate limits, retry hints). Rate-limit names as OpenAI sends them.
DEFAULT_EXPOSE_HEADERS = (
    "X-Request-Id",
    "X-Upstream-Request-Id",
    "X-Gateway-Overhead-Ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
)
DEFAULT_MAX_AGE = 600
# Chromium caps a preflight cache at 2 h and Firefox at 24 h; more is a typo.
MAX_MAX_AGE = 86400
# A serialised origin as browsers send it: scheme://host[:port], nothing more.
_ORIGIN_RE = re.compile(
    r"^([A-Za-z][A-Za-z0-9+.-]*)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$"
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """The `cors:` section, with the header values it sends built once at load."""

    allow_origins: tuple[str, ...]  # normalised; ("*",) allows any origin
    allow_headers: tuple[str, ...] | None = None  # None: reflect what the preflight asks
    expose_headers: tuple[str, ...] = DEFAULT_EXPOSE_HEADERS
    max_age: int = DEFAULT_MAX_AGE
    allow_credentials: bool = False
    origin_set: frozenset[str] = field(init=False, repr=False, compare=False)
    any_origin: bool = field(init=False, repr=False, compare=False)
    expose_line: str = field(init=False, repr=False, compare=False)
    allow_headers_line: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__  # frozen: derived values are set once, here
        setattr_(self, "origin_set", frozenset(self.allow_origins))
        setattr_(self, "any_origin", self.allow_origins == ("*",))
        setattr_(self, "expose_line", ", ".join(self.expose_headers))
        headers = self.allow_headers
        setattr_(self, "allow_headers_line", None if headers is None else ", ".join(headers))

    def allows(self, origin: str) -> bool:
        """Whether a request's `Origin` may read the gateway's answers."""
        return self.any_origin or origin in self.origin_set


def normalize_origin(text: object) -> str:
    """`text` as browsers serialise an origin (lower case, no default port).

    Raises ValueError with the reason it is not an origin."""
    if not isinstance(text, str) or not text:
        raise ValueError("must be an origin string such as https://app.example.com")
    if text.lower() == "null":
        raise ValueError(
            "the 'null' origin cannot be allowed: sandboxed frames and file:// pages "
            "send it, so any page could claim it"
        )
    if "*" in text:
        raise ValueError("wildcards are not supported: list each origin, or use '*' alone")
    found = _ORIGIN_RE.match(text)
    if found is None:
        raise ValueError(_origin_hint(text))
    scheme, host, port = found.group(1).lower(), found.group(2).lower(), found.group(3)
    if host.startswith("["):
        try:  # browsers send an IPv6 address in its shortest form
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
    if port is not None and not 0 < int(port) <= 65535:
        raise ValueError(f"port {port} is not between 1 and 65535")
    if port is None or _DEFAULT_PORTS.get(scheme) == port.lstrip("0"):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


def _origin_hint(text: str) -> str:
    """Why `text` is not scheme://host[:port], for the commonest slips."""
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme:
        return "must start with a scheme: scheme://host[:port], e.g. https://app.example.com"
    if any(c in rest for c in "/?#"):
        return "must be scheme://host[:port] with no path, query or '/' at the end"
    if "@" in rest:
        return "must not contain a user name or password"
    if not rest.isascii():
        return "write the host in its ASCII (xn--) form, as browsers send it"
    return "must be scheme://host[:port], e.g. https://app.example.com:8443"


def parse_cors(parser: Parser, raw: object, file: Any) -> CorsConfig | None:
    """The `cors:` section (None: CORS off); problems go to `parser`."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        parser.problem(file, "must be a mapping with allow_origins", field="cors")
        return None
    parser.unknown_keys(raw, CORS_KEYS, file, prefix="cors.")
    problems: list[tuple[str, str]] = []
    origins = _origins(raw.get("allow_origins"), problems)
    allow_headers = _names(raw.get("allow_headers"), "allow_headers", problems)
    expose = _names(raw.get("expose_headers"), "expose_headers", problems)
    max_age = raw.get("max_age", DEFAULT_MAX_AGE)
    if isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= MAX_MAX_AGE:
        problems.append(("max_age", f"must be a whole number of seconds, 0 to {MAX_MAX_AGE}"))
    credentials = raw.get("allow_credentials", False)
    if not isinstance(credentials, bool):
        problems.append(("allow_credentials", "must be true or false"))
    elif credentials and origins == ("*",):
        # Browsers refuse credentials with a wildcard origin; reflecting any
        # origin instead would hand every site the user's cookies.
        problems.append(
            ("allow_credentials", "cannot be true with allow_origins ['*']: list the origins")
        )
    for name, message in problems:
        parser.problem(file, message, field=f"cors.{name}")
    if problems or origins is None:
        return None
    return CorsConfig(
        allow_origins=origins,
        allow_headers=allow_headers,
        expose_headers=DEFAULT_EXPOSE_HEADERS if expose is None else expose,
        max_age=max_age,
        allow_credentials=credentials,
    )


def _origins(value: object, problems: list[tuple[str, str]]) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not value:
        problems.append(
            ("allow_origins", "required: a non-empty list, e.g. [https://app.example.com] or ['*']")
        )
        return None
    if "*" in value:
        if len(value) > 1:
            problems.append(("allow_origins", "'*' allows every origin: it must be the only entry"))
        return ("*",)
    origins: list[str] = []
    for i, text in enumerate(value):
        try:
            origin = normalize_origin(text)
        except ValueError as exc:
            problems.append((f"allow_origins[{i}]", str(exc)))
            continue
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _names(value: object, key: str, problems: list[tuple[str, str]]) -> tuple[str, ...] | None:
    """A list of header names (an empty list is allowed: send none); None when absent."""
    if value is None:
        return None
    if not isinstance(value, list):
        problems.append((key, "must be a list of header names"))
        return None
    before = len(problems)
    for i, name in enumerate(value):
        reason = header_name_problem(name)
        if reason is not None:
            problems.append((f"{key}[{i}]", reason))
    return tuple(value) if len(problems) == before else None
