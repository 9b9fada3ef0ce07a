"""Loading: the YAML files (the main one and its `include:` fragments) -> `GatewayConfig`.

Every file is read once and hashed as read (the digest tells a reload
whether anything changed). The sections are parsed by the table in
sections.py and the providers by provider.py; every problem is collected,
and the config is rejected whole with all of them (`ConfigError`).
`parse_provider` is the admin API's entry point: the same rules for one
fragment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from . import sections
from .provider import parse_provider_entry
from .schema import (
    DEFAULT_CONFIG_PATH,
    TOP_KEYS,
    ConfigError,
    GatewayConfig,
    Problem,
    ProviderConfig,
)
from .validate import Parser

# libyaml's parser when PyYAML was built with it (the wheels are): the pure
# Python one took 85% of a 200-provider reload's ~110 ms, on the event loop.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, with libyaml where available."""
    return yaml.load(text, Loader=_YAML_LOADER)


def _read_yaml(path: Path, parser: Parser) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        parser.problem(path, "file not found")
        return None
    except OSError as exc:
        parser.problem(path, f"cannot read: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        parser.problem(path, "not UTF-8 text")
        return None
    parser.digest.update(str(path).encode())
    parser.digest.update(text.encode())
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or "invalid YAML"
        parser.problem(path, f"invalid YAML{where}: {reason}")
        return None


def include_files(include_dir: Path) -> list[Path]:
    """The fragment files of an include directory, in a stable order."""
    return sorted(
        p
        for p in include_dir.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
    )


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate the config file and its fragments. Raises ConfigError."""
    path = Path(path)
    parser = Parser()
    data = _main_file(parser, path)
    parser.unknown_keys(data, TOP_KEYS, path)
    listen_host, listen_port = sections.listen(parser, data, path)
    fields = {key: parse(parser, data.get(key), path) for key, parse in sections.SECTIONS}
    providers = _providers(parser, data.get("providers") or [], path)
    include, fragments = _include(parser, data.get("include"), path, providers)
    aliases = sections.aliases(parser, data.get("aliases") or {}, path)
    if parser.problems:
        raise ConfigError(parser.problems, tuple(parser.secrets), fields["seal_key_file"])
    return GatewayConfig(
        path=path,
        listen_host=listen_host,
        listen_port=listen_port,
        include=include,
        providers=tuple(providers),
        aliases=MappingProxyType(aliases),
        files=(path, *fragments),
        digest=parser.digest.hexdigest()[:16],
        **fields,
    )


def _main_file(parser: Parser, path: Path) -> Mapping:
    """The main file's top-level mapping; a file that cannot be read or is
    not a mapping stops the load here (nothing else can be checked)."""
    data = _read_yaml(path, parser)
    if parser.problems:
        raise ConfigError(parser.problems)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError([Problem(str(path), "the top level must be a mapping")])
    return data


def _providers(parser: Parser, raw: Any, path: Path) -> list[ProviderConfig]:
    if not isinstance(raw, list):
        parser.problem(path, "must be a list of providers", field="providers")
        return []
    parsed = (parse_provider_entry(parser, p, path, "config", i) for i, p in enumerate(raw))
    return [p for p in parsed if p]


def _include(
    parser: Parser, raw: Any, path: Path, providers: list[ProviderConfig]
) -> tuple[Path | None, list[Path]]:
    """The include directory and its fragment files; the providers they
    hold are appended to `providers`."""
    if raw is None:
        return None, []
    if not isinstance(raw, str):
        parser.problem(path, "must be a directory path", field="include")
        return None, []
    include = path.parent / raw
    if not include.is_dir():
        parser.problem(path, f"directory {include} does not exist", field="include")
        return include, []
    fragments = include_files(include)
    for frag in fragments:
        raw_provider = _read_yaml(frag, parser)
        if raw_provider is None:
            continue
        provider = parse_provider_entry(parser, raw_provider, frag, "store", 0)
        if provider is not None:
            providers.append(provider)
    return include, fragments


def config_path_from_env(cli_value: str | None) -> Path:
    """--config wins, then GATEWAY_CONFIG, then the default."""
    return Path(cli_value or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH)


def parse_provider(
    raw: object, file: str | os.PathLike[str]
) -> tuple[ProviderConfig | None, list[Problem]]:
    """Validate one provider as an `include:` fragment, with the loader's own rules.

    Used by the admin API so that a provider it accepts is exactly one the
    config loader accepts.
    """
    parser = Parser()
    provider = parse_provider_entry(parser, raw, Path(file), "store", 0)
    return provider, parser.problems
