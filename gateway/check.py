"""`gateway check`: the GitOps pre-merge check, with or without the private key.

With the private key (`seal_key_file` or GATEWAY_SEAL_KEY_FILE) the check
builds the whole snapshot: every structural mistake and every secret that
does not unseal is reported. A CI job that must not hold the private key can
pass `--public-key seal.pub` instead: the same parsing and validation, then
each secret field is checked against the committed public key(s) without
unsealing anything:

- a sealed value must be well formed, sealed with one of the given keys (its
  key id) and for the scope of the field it sits in;
- a plain-text secret fails: it is about to be committed in clear;
- `env:NAME` passes (it is read from the gateway's environment at run time).

What the public-key check cannot see: a value sealed with the right key but
altered, or sealed from the wrong plain text. No secret is ever printed.
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError, load_config
from .config.check_all import checkable
from .reload import load_snapshot
from .sealing import KID_RE
from .secrets import config_secret_refs
from .snapshot import Snapshot


def full_check(path: Path) -> tuple[Snapshot | None, list[str]]:
    """Parse, validate and unseal everything: (snapshot, []) or (None, problems)."""
    try:
        return load_snapshot(path), []
    except ConfigError as exc:
        return None, [str(p) for p in exc.problems]


def sealed_problem(text: str, scope: str, kids: set[str]) -> str | None:
    """Why a sealed value cannot be right for `scope` and `kids`, or None."""
    parts = text.split(":")
    if len(parts) != 5 or parts[1] != "v1" or not KID_RE.match(parts[2]) or not parts[4]:
        return "malformed sealed value (expected sealed:v1:KEY_ID:SCOPE:DATA)"
    _, _, kid, sealed_scope, _ = parts
    if sealed_scope != scope:
        return (
            f"sealed for scope '{sealed_scope}', not '{scope}': seal it again with "
            f"`gateway seal --scope {scope}`"
        )
    if kid not in kids:
        return (
            f"sealed with key id '{kid}', not with the given public key(s) "
            f"({', '.join(sorted(kids))}): seal it again with the committed seal.pub"
        )
    return None


def public_key_check(path: Path, kids: set[str]) -> list[str]:
    """Every problem the check can find without the private key."""
    try:
        refs = config_secret_refs(load_config(path))
        problems = []
    except ConfigError as exc:
        # The structure is broken: the secrets that did parse are checked too,
        # so that one run lists everything.
        refs = checkable(exc.secrets)
        problems = [str(p) for p in exc.problems]
    for ref in refs:
        where = ref.file + (f": provider '{ref.provider}'" if ref.provider else "")
        where += f": field '{ref.field}'"
        if ref.kind == "plain":
            problems.append(f"{where}: plain-text secret: seal it with `gateway seal`")
        elif ref.kind == "sealed":
            problem = sealed_problem(ref.text, ref.scope, kids)
            if problem:
                problems.append(f"{where}: {problem}")
    return problems
