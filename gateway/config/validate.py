"""Field validators: one value in, a checked value (or None) out, problems collected.

`Parser` carries what one load accumulates: the problems (every one, not
just the first), the provider names seen so far (for duplicates and
aliases), the secrets that parsed (so `gateway check` can unseal them even
when the structure is broken), and the digest of every byte read, CA files
included (a changed bundle must make a new runtime).

A validator reports with `problem(file, message, provider, field)` and
returns None for an unusable value, so that callers go on checking the
other fields and the operator sees every mistake in one run.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import ssl
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from yarl import URL

from .schema import ENV_NAME_RE, Problem, SecretRef


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` -> (host, port); ValueError if malformed."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # raises ValueError
    if not host:
        host = "0.0.0.0"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number between 0 and 65535")
    if not re.match(r"^[A-Za-z0-9.:_-]+$", host):
        raise ValueError(f"host {host!r} is not a valid host name or address")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class NumberSection:
    """A mapping of numbers whose keys are a dataclass's fields (`limits`,
    `models`, a provider's `timeouts`): one table row instead of one more
    "mapping, unknown keys, numbers, dataclass" block."""

    name: str  # the key, and the prefix of its fields' names in problems
    cls: type  # the frozen dataclass built; its defaults fill what is left out
    integers: frozenset[str] = frozenset()  # whole numbers; the rest are seconds
    minimum: float = 0.0  # a value must be greater than this
    finite: bool = False  # refuse YAML's .inf and .nan

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(f.name for f in fields(self.cls))


class Parser:
    """Collects problems while turning raw YAML data into dataclasses."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.names: dict[str, str] = {}  # provider name -> file it was first defined in
        self.secrets: list[SecretRef] = []  # every secret field that parsed, for the report
        # Every file as read, so the digest describes exactly what was loaded.
        self.digest = hashlib.sha256()

    def problem(
        self, file: Path | str, message: str, provider: str | None = None, field: str | None = None
    ) -> None:
        self.problems.append(Problem(str(file), message, provider, field))

    def unknown_keys(
        self,
        data: Mapping,
        allowed: Collection[str],
        file: Path | str,
        provider: str | None = None,
        prefix: str = "",
    ) -> None:
        for key in data:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                self.problem(file, f"unknown key (known keys: {known})", provider, f"{prefix}{key}")

    def secret(
        self, value: Any, *, file: Path | str, field: str, scope: str, provider: str | None = None
    ) -> SecretRef | None:
        if not isinstance(value, str) or not value:
            self.problem(file, "must be a non-empty string", provider, field)
            return None
        if value.startswith("env:") and not ENV_NAME_RE.match(value[4:]):
            self.problem(file, "env: must be followed by a variable name", provider, field)
            return None
        ref = SecretRef(value, scope, str(file), field, provider)
        self.secrets.append(ref)
        return ref

    def number(
        self,
        value: Any,
        *,
        file: Path | str,
        field: str,
        provider: str | None = None,
        minimum: float = 0.0,
        integer: bool = False,
    ) -> int | float | None:
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or value <= minimum:
            kind = "an integer" if integer else "a number"
            self.problem(file, f"must be {kind} greater than {minimum:g}", provider, field)
            return None
        return value

    def numbers(
        self, raw: Any, section: NumberSection, file: Path | str, provider: str | None = None
    ) -> Any:
        """`section`'s dataclass from a mapping of numbers (its defaults when
        `raw` is None or unusable); keys are checked in the order written."""
        name = section.name
        if raw is None:
            return section.cls()
        if not isinstance(raw, Mapping):
            self.problem(file, "must be a mapping", provider, name)
            return section.cls()
        allowed = section.keys
        self.unknown_keys(raw, allowed, file, provider, f"{name}.")
        values = {}
        for key in (k for k in raw if k in allowed):
            integer = key in section.integers
            v = self.number(
                raw[key],
                file=file,
                field=f"{name}.{key}",
                provider=provider,
                minimum=section.minimum,
                integer=integer,
            )
            if v is not None and section.finite and not v < float("inf"):
                self.problem(file, "must be a finite number", provider, f"{name}.{key}")
            elif v is not None:
                values[key] = v if integer else float(v)
        return section.cls(**values)

    def ca_bundle(self, value: Any, file: Path, pname: str, base_url: str | None) -> str | None:
        """The PEM text of `ca_file` (relative to `file`'s directory), if usable."""
        if not isinstance(value, str) or not value:
            self.problem(file, "must be a path to a PEM file of CA certificates", pname, "ca_file")
            return None
        if isinstance(base_url, str) and URL(base_url).scheme != "https":
            self.problem(file, "only applies to an https:// base_url", pname, "ca_file")
            return None
        path = file.parent / value
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.problem(file, f"cannot read {path}: {exc.strerror}", pname, "ca_file")
            return None
        self.digest.update(data)
        try:
            pem = data.decode("ascii")
            if "-----BEGIN CERTIFICATE-----" not in pem:
                raise ValueError
            # A bare context: only this bundle is parsed, not the system's.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
        except (ValueError, ssl.SSLError):
            self.problem(file, f"{path} holds no usable PEM CA certificate", pname, "ca_file")
            return None
        return pem

    def proxy_url(self, value: Any, file: Path, pname: str) -> str | None:
        """`http://host:port` of an outbound proxy, normalised; None if unusable."""
        example = "must be http://HOST:PORT of an HTTP proxy, e.g. http://10.0.0.1:3128"
        try:
            url = URL(value) if isinstance(value, str) else None
        except ValueError:
            url = None
        if url is None or url.scheme != "http" or not url.host:
            self.problem(file, example, pname, "proxy")
            return None
        if url.user or url.password:
            self.problem(file, "proxy credentials are not supported", pname, "proxy")
            return None
        if url.path not in ("", "/") or url.query_string or url.fragment:
            self.problem(file, example, pname, "proxy")
            return None
        host = f"[{url.host}]" if ":" in url.host else url.host
        return f"http://{host}:{url.port}"

    def base_url(self, value: Any, file: Path, pname: str) -> str | None:
        """`base_url` without its trailing slash, if an absolute http(s) URL."""
        if not isinstance(value, str) or not value:
            self.problem(file, "must be a URL string", pname, "base_url")
            return None
        try:
            url = URL(value)
        except ValueError as exc:
            self.problem(file, f"not a valid URL: {exc}", pname, "base_url")
            return None
        if url.scheme not in ("http", "https") or not url.host:
            self.problem(
                file,
                "must be an absolute http:// or https:// URL, e.g. http://127.0.0.1:8000/v1",
                pname,
                "base_url",
            )
            return None
        if url.user or url.password:
            self.problem(file, "must not contain credentials; use api_key", pname, "base_url")
            return None
        if url.query_string or url.fragment:
            self.problem(file, "must not have a query or fragment", pname, "base_url")
            return None
        return value.rstrip("/")
