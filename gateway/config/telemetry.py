"""The `usage:` and `tracing:` sections of the config.

```yaml
usage:
  enabled: true            # token accounting (gateway/proxy/usage.py); GATEWAY_USAGE=off too
tracing:                   # OpenTelemetry (gateway/tracing.py); needs gateway[otel]
  enabled: true
  endpoint: http://otel-collector:4318   # OTLP/HTTP; else OTEL_EXPORTER_OTLP_* applies
  service_name: gateway                  # else OTEL_SERVICE_NAME, else "gateway"
  exporter: otlp                         # otlp | console | none
  sample_ratio: 1.0                      # of traces the client did not sample already
```

Without a `tracing:` section, the standard environment turns tracing on:
OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set (and
OTEL_TRACES_EXPORTER not `none`). OTEL_SDK_DISABLED=true turns it off
whatever the file says. Both are read when the config is loaded.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from yarl import URL

if TYPE_CHECKING:  # validate.py imports these modules (through schema.py)
    from .validate import Parser

EXPORTERS = ("otlp", "console", "none")
INSTALL_HINT = "pip install gateway[otel]"


@dataclass(frozen=True, slots=True)
class UsageSettings:
    enabled: bool = True


DEFAULT_USAGE = UsageSettings()


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """Tracing is on when a config holds one of these (None: off)."""

    endpoint: str | None = None  # None: the OTLP exporter reads OTEL_* itself
    service_name: str = "gateway"
    exporter: str = "otlp"
    sample_ratio: float = 1.0


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("true", "1", "yes")


def parse_usage(parser: Parser, raw: object, path: Any) -> UsageSettings:
    env_off = os.environ.get("GATEWAY_USAGE", "").strip().lower() in ("off", "false", "0")
    if raw is None:
        return UsageSettings(enabled=not env_off)
    if not isinstance(raw, Mapping):
        parser.problem(path, "must be a mapping, e.g. {enabled: false}", field="usage")
        return UsageSettings()
    parser.unknown_keys(raw, {"enabled"}, path, prefix="usage.")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        parser.problem(path, "must be true or false", field="usage.enabled")
        return UsageSettings()
    return UsageSettings(enabled=enabled and not env_off)


def otel_installed() -> bool:
    return importlib.util.find_spec("opentelemetry.sdk") is not None


def parse_tracing(parser: Parser, raw: object, path: Any) -> TracingConfig | None:
    """The tracing settings, or None when tracing is off."""
    if _env_true("OTEL_SDK_DISABLED"):
        return None
    if raw is None:
        return _from_environment(parser, path)
    if not isinstance(raw, Mapping):
        parser.problem(path, "must be a mapping, e.g. {enabled: true}", field="tracing")
        return None
    allowed = {"enabled", "endpoint", "service_name", "exporter", "sample_ratio"}
    parser.unknown_keys(raw, allowed, path, prefix="tracing.")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        parser.problem(path, "must be true or false", field="tracing.enabled")
        return None
    if not enabled:
        return None
    if not otel_installed():
        parser.problem(
            path,
            f"tracing needs the OpenTelemetry SDK, which is not installed: {INSTALL_HINT}",
            field="tracing.enabled",
        )
        return None
    endpoint = raw.get("endpoint")
    if endpoint is not None and not _http_url(endpoint):
        parser.problem(
            path, "must be an http(s):// URL of an OTLP/HTTP receiver", field="tracing.endpoint"
        )
        endpoint = None
    service = raw.get("service_name", os.environ.get("OTEL_SERVICE_NAME") or "gateway")
    if not isinstance(service, str) or not service or len(service) > 200:
        parser.problem(path, "must be a non-empty string", field="tracing.service_name")
        service = "gateway"
    exporter = raw.get("exporter", "otlp")
    if exporter not in EXPORTERS:
        parser.problem(path, f"must be one of {', '.join(EXPORTERS)}", field="tracing.exporter")
        exporter = "otlp"
    ratio = raw.get("sample_ratio", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        parser.problem(path, "must be a number in [0, 1]", field="tracing.sample_ratio")
        ratio = 1.0
    return TracingConfig(endpoint, service, exporter, float(ratio))


def _from_environment(parser: Parser, path: Any) -> TracingConfig | None:
    names = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    found = next((n for n in names if os.environ.get(n)), None)
    if found is None or os.environ.get("OTEL_TRACES_EXPORTER", "").strip() == "none":
        return None
    if not otel_installed():
        parser.problem(
            path,
            f"{found} is set, so tracing is on, but the OpenTelemetry SDK is not "
            f"installed: {INSTALL_HINT} (or unset {found})",
            field="tracing",
        )
        return None
    return TracingConfig(service_name=os.environ.get("OTEL_SERVICE_NAME") or "gateway")


def _http_url(value: object) -> bool:
    if not isinstance(value, str) or len(value) > 2000:
        return False
    try:
        url = URL(value)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host)
