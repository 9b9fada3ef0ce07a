"""Secret resolution: the one place where config text becomes a secret's value.

A value in config is `sealed:v1:...` (unsealed with the gateway's private
keys, see `gateway.sealing`), `env:NAME` (read from the environment) or plain
text (accepted with a loud warning). The resolved value is wrapped in
`Secret`, whose repr and str never show it, so that it cannot slip into a log
line or an exception message by accident.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import Problem, SecretRef
from .headercheck import secret_problem, trim_env_newline

if TYPE_CHECKING:
    from .config import GatewayConfig

log = logging.getLogger("gateway.secrets")


class Secret:
    """A secret's plain text; only `reveal()` gives it out."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison, for inbound tokens.

        aiohttp decodes header bytes that are not UTF-8 with surrogateescape;
        encoding them back the same way compares the bytes as received
        (a plain `.encode()` raised, and the request answered 500)."""
        return hmac.compare_digest(
            self._value.encode(), candidate.encode("utf-8", "surrogateescape")
        )

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # never pickle a secret into anything
        raise TypeError("Secret values cannot be pickled")


class SecretError(Exception):
    """A secret could not be resolved. The message never contains the secret."""


# An unsealer takes (sealed text, scope) and returns plain text or raises
# SecretError. It is `gateway.sealing.Keyring.unseal` when keys are loaded.
Unsealer = Callable[[str, str], str]


@dataclass(frozen=True, slots=True)
class SecretResolver:
    unseal: Unsealer | None = None
    # Seals plain text for a scope with the gateway's own public key (the
    # admin API stores keys this way); None when no key is loaded.
    seal: Unsealer | None = None
    environ: dict[str, str] | None = None
    warn_plain: bool = True

    def resolve(self, ref: SecretRef) -> Secret:
        """The secret's plain text, checked for what a header can carry.

        Every secret (provider keys, proxy credentials, inbound keys, the
        admin token; at load, reload, `gateway check` and through the admin
        API) is resolved here, so this is the one check that a value can
        safely go into a request head. Raises SecretError.
        """
        value, source = self._text(ref)
        problem = secret_problem(value)
        if problem:
            raise SecretError(f"{source} {problem}")
        if ref.kind == "plain" and self.warn_plain:
            where = f"provider '{ref.provider}' " if ref.provider else ""
            log.warning(
                "%s: %sfield '%s' holds a PLAIN-TEXT secret; seal it with "
                "`gateway seal --scope %s` before committing this file",
                ref.file,
                where,
                ref.field,
                ref.scope,
            )
        return Secret(value)

    def _text(self, ref: SecretRef) -> tuple[str, str]:
        """The plain text, and how to name it in an error (never the value)."""
        kind = ref.kind
        if kind == "env":
            name = ref.text[4:]
            env = os.environ if self.environ is None else self.environ
            value = env.get(name)
            if value is None:
                raise SecretError(f"environment variable {name} is not set")
            # A Secret made from a file ends in a newline: not part of the key.
            value = trim_env_newline(value)
            if not value:
                raise SecretError(f"environment variable {name} is empty")
            return value, f"the value of environment variable {name}"
        if kind == "sealed":
            if self.unseal is None:
                raise SecretError(
                    "value is sealed but no private key is loaded "
                    "(set seal_key_file or GATEWAY_SEAL_KEY_FILE)"
                )
            return self.unseal(ref.text, ref.scope), "the unsealed value"
        return ref.text, "the value"

    def resolve_all(
        self, refs: Iterable[SecretRef]
    ) -> tuple[dict[SecretRef, Secret], list[Problem]]:
        """Resolve every ref, collecting a Problem for each failure."""
        resolved: dict[SecretRef, Secret] = {}
        problems: list[Problem] = []
        for ref in refs:
            try:
                resolved[ref] = self.resolve(ref)
            except SecretError as exc:
                problems.append(Problem(ref.file, str(exc), ref.provider, ref.field))
        return resolved, problems


def config_secret_refs(config: GatewayConfig) -> list[SecretRef]:
    """Every secret a config holds: provider keys and proxy credentials, inbound
    API keys, the admin token."""
    refs = [p.api_key for p in config.providers if p.api_key is not None]
    refs += [p.proxy_auth for p in config.providers if p.proxy_auth is not None]
    if config.auth:
        refs.extend(config.auth.api_keys)
    if config.admin:
        refs.append(config.admin.token)
    return refs
