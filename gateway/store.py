"""The provider store: one readable YAML file per provider in `include:`.

What the admin API writes is a file an operator can read, diff and commit:
`include/NAME.yaml`. Writes are atomic (temp file in the same directory,
fsync, rename, fsync the directory), so a crash or a concurrent reader never
sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import yaml

from .config import PROVIDER_FIELDS, load_yaml

# Order of keys in a written file: the way a person would write it.
FIELD_ORDER = PROVIDER_FIELDS


def fragment_path(include_dir: Path, name: str) -> Path:
    return include_dir / f"{name}.yaml"


def render(record: dict) -> str:
    ordered = {k: record[k] for k in FIELD_ORDER if record.get(k) is not None}
    header = "# Written by the gateway admin API; safe to edit and commit.\n"
    return header + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def remove(path: Path) -> None:
    path.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_raw(path: Path) -> dict:
    data = load_yaml(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def writable_problem(include_dir: Path | None) -> str | None:
    """Why the store cannot be written to, or None when it can."""
    if include_dir is None:
        return "the config has no include: directory to store providers in"
    if not include_dir.is_dir():
        return f"the include directory {include_dir} does not exist"
    if not os.access(include_dir, os.W_OK):
        return f"the include directory {include_dir} is not writable (read-only GitOps mount)"
    return None
