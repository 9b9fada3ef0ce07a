"""gateway: a small, fast OpenAI-compatible gateway for custom providers.

Data flow, one module each: config (YAML -> frozen dataclasses) -> snapshot
(secrets resolved, upstream pools) -> router (model -> provider) -> forwarder
(bytes upstream and back) -> app (HTTP routes) -> server (process, signals).
"""

__version__ = "0.1.0"
