"""What may go into an HTTP request head: the rules, in one place.

Config text becomes header bytes in two ways: a provider's `headers:` (parsed
in `gateway.config`) and secrets (`api_key`, `proxy_auth`, `auth.api_keys`,
`admin.token`, resolved in `gateway.secrets`). The hot path writes them into
prebuilt request heads without further checks, so a CR or LF here would end
the header early and let the rest be read as another header or another
request (request smuggling). Both places ask these functions, so a value is
refused whatever its way in: YAML, `env:`, a sealed value, the admin API.

Messages name the kind of problem, never the value: it may be a secret.
"""

from __future__ import annotations

import re

# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# RFC 9110 section 5.5: a field value is VCHAR, obs-text (0x80-0xFF), SP and
# HTAB. Anything else (CR, LF, NUL, the other C0 controls, DEL) is refused.
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Secrets allow no HTAB either: no key has one, and it would be stripped or
# split by whoever parses the header.
_BAD_SECRET_RE = re.compile(r"[\x00-\x1f\x7f]")
_BREAK_RE = re.compile(r"[\r\n]")


def _value_problem(value: str, bad: re.Pattern[str], controls: str) -> str | None:
    if _BREAK_RE.search(value):
        return "contains a line break (CR or LF), which would end the HTTP header early"
    if bad.search(value):
        return f"contains a control character ({controls}), not allowed in an HTTP header"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "contains a character that cannot be sent in an HTTP header (outside Latin-1)"
    return None


def header_name_problem(name: object) -> str | None:
    """Why `name` cannot be a header name (an RFC 9110 token), or None."""
    if not isinstance(name, str) or not _TOKEN_RE.match(name):
        return "not a valid HTTP header name (letters, digits and !#$%&'*+.^_`|~- only)"
    return None


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be a header value, or None."""
    return _value_problem(value, _BAD_VALUE_RE, "e.g. NUL, VT or DEL")


def secret_problem(value: str) -> str | None:
    """Why a resolved secret cannot go into a header (or be compared with one), or None."""
    return _value_problem(value, _BAD_SECRET_RE, "e.g. NUL, TAB, VT or DEL")


def trim_env_newline(value: str) -> str:
    """An `env:` value without ONE trailing newline (`\\n` or `\\r\\n`).

    A Kubernetes Secret made from a file (`kubectl create secret
    --from-file`, `echo key > file`) usually ends in one; that is a file's
    line end, not part of the key. More than one, or a break inside, is
    left for `secret_problem` to refuse: that is no longer a line end.
    """
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


def printable(text: str, limit: int = 60) -> str:
    """`text` with control characters escaped, for naming a bad header name
    in an error without writing raw CR/LF into a log line."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."
