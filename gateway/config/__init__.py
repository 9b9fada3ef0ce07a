"""Configuration: YAML files -> one immutable `GatewayConfig`.

Every mistake is collected (not just the first) as a `Problem` naming the
file, the provider and the field, so that `gateway check` can list them all
and a reload can be rejected with one clear message. Secrets are *not*
resolved here: fields that hold them keep a `SecretRef` (the text as written),
which `gateway.secrets` turns into plain text when a snapshot is built.

The package, in the order data flows through it:

- schema.py: the frozen dataclasses, the key tables (`TOP_KEYS`,
  `PROVIDER_FIELDS`), the naming rules, `Problem` and `ConfigError`;
- validate.py: `Parser` (collects problems, secrets and the digest) and
  the field validators, table-driven number sections included;
- sections.py: the main file's sections, run from one table (`SECTIONS`);
- provider.py: one provider entry, from `providers:` or a fragment;
- provider_api.py, replicas.py, telemetry.py: the provider's API fields,
  its replicas, and the `usage:`/`tracing:` sections, each beside its rules;
- load.py: reading the files, `load_config`, `parse_provider` (the admin
  API's entry point) and `config_path_from_env`;
- check_all.py: `load_config` whose error also lists the secrets' problems
  (`gateway check`, reloads). Not re-exported: it imports gateway.secrets,
  which imports this package.

The names below are what callers import from `gateway.config`.
"""

from __future__ import annotations

from .load import config_path_from_env, include_files, load_config, load_yaml, parse_provider
from .schema import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_LISTEN,
    ENV_NAME_RE,
    NAME_RE,
    OPENAI_BASE_URL,
    PROVIDER_FIELDS,
    PROVIDER_KEYS,
    PROVIDER_TYPES,
    RESERVED_HEADERS,
    RESERVED_NAMES,
    TOP_KEYS,
    AccessLog,
    AdminConfig,
    AuthConfig,
    ConfigError,
    GatewayConfig,
    Limits,
    ModelsSettings,
    Problem,
    ProviderConfig,
    SecretRef,
    Timeouts,
)
from .validate import parse_listen

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LISTEN",
    "ENV_NAME_RE",
    "NAME_RE",
    "OPENAI_BASE_URL",
    "PROVIDER_FIELDS",
    "PROVIDER_KEYS",
    "PROVIDER_TYPES",
    "RESERVED_HEADERS",
    "RESERVED_NAMES",
    "TOP_KEYS",
    "AccessLog",
    "AdminConfig",
    "AuthConfig",
    "ConfigError",
    "GatewayConfig",
    "Limits",
    "ModelsSettings",
    "Problem",
    "ProviderConfig",
    "SecretRef",
    "Timeouts",
    "config_path_from_env",
    "include_files",
    "load_config",
    "load_yaml",
    "parse_listen",
    "parse_provider",
]
