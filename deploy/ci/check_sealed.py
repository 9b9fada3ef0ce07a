"""Check a gateway config without its private key: for CI jobs that must not hold it.

    python3 deploy/ci/check_sealed.py --public-key keys/seal.pub CONFIG [CONFIG ...]

`gateway check` is the full check, and needs the private key because it
unseals every value. This one runs the same parser and validation (every
structural mistake, with file, provider and field), then checks each secret
field against the committed public key(s) without unsealing anything:

- a sealed value must be well formed, sealed for one of the given public keys
  (its key id), and for the scope of the field it sits in;
- a plain-text secret fails: it is about to be committed in clear;
- `env:NAME` passes (it is read from the gateway's environment at run time).

What it cannot see: a value sealed with the right key but altered, or sealed
from the wrong plain text. Only `gateway check` with the private key can.
Exit status 0 when everything passes, 1 otherwise. No secret is ever printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.sealing import KID_RE, load_public_key
from gateway.secrets import SecretError, config_secret_refs


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


def check(config_path: Path, kids: set[str]) -> list[str]:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    problems = []
    for ref in config_secret_refs(config):
        where = ref.file + (f": provider '{ref.provider}'" if ref.provider else "")
        where += f": field '{ref.field}'"
        if ref.kind == "plain":
            problems.append(f"{where}: plain-text secret: seal it with `gateway seal`")
        elif ref.kind == "sealed":
            problem = sealed_problem(ref.text, ref.scope, kids)
            if problem:
                problems.append(f"{where}: {problem}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--public-key", action="append", required=True, help="seal.pub (repeat during rotation)"
    )
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")
    args = parser.parse_args(argv)
    try:
        kids = {load_public_key(p).kid for p in args.public_key}
    except SecretError as exc:
        print(f"check_sealed: {exc}", file=sys.stderr)
        return 1
    failed = False
    for path in args.configs:
        problems = check(path, kids)
        if problems:
            failed = True
            n = len(problems)
            print(f"{path}: {n} problem{'s' * (n != 1)}:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
        else:
            print(f"{path}: OK without unsealing (structure, key ids and scopes)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
