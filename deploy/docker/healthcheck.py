"""Health probe for the gateway container: exit 0 when GET PATH answers 200.

    python /opt/gateway/healthcheck.py [/healthz | /readyz]

The image's HEALTHCHECK runs it, and so do the sidecar's Kubernetes probes
(as `exec` probes): a sidecar listening on 127.0.0.1 cannot be reached by
the kubelet's httpGet probes, which connect to the pod IP from the node.

Where the gateway listens, first match wins:
  GATEWAY_HEALTHCHECK_URL   a base URL, e.g. http://127.0.0.1:9090
  GATEWAY_LISTEN            as `gateway serve` reads it
  `listen:` in the config   $GATEWAY_CONFIG, default /etc/gateway/gateway.yaml
  127.0.0.1:8080            the gateway's default
A wildcard host (0.0.0.0, ::) is probed on loopback. `serve --listen` cannot
be seen from here: use GATEWAY_LISTEN instead when the probe must follow it.

Standard library only (a probe must not depend on the config parsing), and
no proxy: HTTP(S)_PROXY in the environment must not reroute a loopback probe.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.request

DEFAULT_CONFIG = "/etc/gateway/gateway.yaml"
DEFAULT_LISTEN = "127.0.0.1:8080"
TIMEOUT = 3.0
# A top-level `listen: HOST:PORT` line. A regex, not a YAML parser: the probe
# must keep working while a broken config is on disk (the gateway rejects it
# and keeps serving on the address it started with).
_LISTEN_RE = re.compile(r"""^listen:[ \t]*["']?([^\s"'#]+)""", re.MULTILINE)


def _config_listen() -> str | None:
    path = os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG
    try:
        with open(path, encoding="utf-8") as f:
            match = _LISTEN_RE.search(f.read())
    except (OSError, UnicodeDecodeError):
        return None
    return match.group(1) if match else None


def base_url() -> str:
    explicit = os.environ.get("GATEWAY_HEALTHCHECK_URL")
    if explicit:
        return explicit.rstrip("/")
    listen = os.environ.get("GATEWAY_LISTEN") or _config_listen() or DEFAULT_LISTEN
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    url = base_url() + path
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        # The reason shows in `kubectl describe pod` and `docker inspect`.
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
