"""Every config problem in one run: structure, keys and secrets together.

`load_config` collects every structural mistake, but unsealing used to
happen only once the structure was right, so an operator fixed a typo, ran
`gateway check` again, and only then learnt that a key was sealed for the
wrong scope or an `env:` variable was unset. Here the secrets that did parse
are resolved even when the structure is broken, and their problems are
added to the same ConfigError. A broken config is still rejected whole: this
only makes the message complete. It costs nothing on a config that loads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..secrets import SecretError, SecretResolver
from .load import load_config as _load_config
from .schema import NAME_RE, RESERVED_NAMES, ConfigError, GatewayConfig, Problem, SecretRef


def trusted_scope(ref: SecretRef) -> bool:
    """Whether a sealed value's scope can be checked: a provider whose name is
    itself broken has no scope to check against (its name is reported)."""
    return ref.scope in RESERVED_NAMES or bool(NAME_RE.match(ref.scope))


def checkable(refs: Iterable[SecretRef]) -> list[SecretRef]:
    """The secrets of a broken config worth checking now (see trusted_scope)."""
    return [r for r in refs if r.kind != "sealed" or trusted_scope(r)]


def load_resolver(
    seal_key_file: Path | None, config_path: Path
) -> tuple[SecretResolver, Problem | None]:
    """The resolver with the private keys named by GATEWAY_SEAL_KEY_FILE (which
    wins) or `seal_key_file`; with a key that does not load, a resolver
    without keys and the problem on `seal_key_file`."""
    from ..sealing import Keyring

    from_env = os.environ.get("GATEWAY_SEAL_KEY_FILE")
    path = Path(from_env) if from_env else seal_key_file
    if path is None:
        return SecretResolver(), None
    try:
        keyring = Keyring.load(path)
    except SecretError as exc:
        via = " (path from GATEWAY_SEAL_KEY_FILE)" if from_env else ""
        return SecretResolver(), Problem(str(config_path), f"{exc}{via}", field="seal_key_file")
    return SecretResolver(unseal=keyring.unseal, seal=keyring.seal), None


def secret_problems(
    refs: Iterable[SecretRef], seal_key_file: Path | None, config_path: Path
) -> list[Problem]:
    """Why each secret does not resolve. Without a usable key, sealed values
    are left out: the key's own problem says why they cannot be checked."""
    resolver, key_problem = load_resolver(seal_key_file, config_path)
    refs = list(refs)
    if key_problem is not None:
        refs = [r for r in refs if r.kind != "sealed"]
    problems = [key_problem] if key_problem else []
    problems.extend(resolver.resolve_all(refs)[1])
    return problems


def load_config(path: Path) -> GatewayConfig:
    """`config.load_config`, whose ConfigError also lists the secrets' problems."""
    try:
        return _load_config(path)
    except ConfigError as exc:
        if not exc.secrets:
            raise
        extra = secret_problems(checkable(exc.secrets), exc.seal_key_file, Path(path))
        raise ConfigError(exc.problems + extra) from None
