"""Where `gateway serve --demo` runs the demo upstream, and the config following it.

The shipped config/gateway.yaml points its `demo` provider at the demo
upstream's default address, 127.0.0.1:8081. When that port is taken
(another gateway, a dev server), the newcomer used to get a bare
"address already in use" with no hint of which port or what to do. Now the
demo socket is bound first, in the parent process (before any worker is
forked and before the config is read), so that:

- a taken port is reported at once, naming the address and the flag
  (`--demo-port N`, 0 = any free port) that moves it;
- with the port moved, every provider whose base_url is the default demo
  address (127.0.0.1 or localhost, port 8081) follows it, at load and at
  every reload: the example config needs no edit.

Nothing here runs without `--demo`: `moved_demo` is one `is None` test per
config load.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket

from yarl import URL

from .config import GatewayConfig, parse_listen

DEMO_LISTEN = "127.0.0.1:8081"
DEMO_HOSTS = frozenset({"127.0.0.1", "localhost"})
_DEFAULT_PORT = parse_listen(DEMO_LISTEN)[1]

log = logging.getLogger("gateway.demo")

# The demo upstream's port when it is not the default; set once at start-up,
# before the first config load (and inherited by forked workers).
_moved_port: int | None = None


class DemoPortInUse(OSError):
    """The demo upstream's address is taken; the message says how to move it."""


def bind_demo_socket(
    listen: str, port: int | None = None, hint: str = "--demo-port"
) -> socket.socket:
    """A socket bound to `listen` (its port replaced by `port` when given, 0 =
    any free port), ready for the demo upstream. Raises DemoPortInUse."""
    host, listen_port = parse_listen(listen)
    port = listen_port if port is None else port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        how = (
            "move it, add --demo-port N (0 = any free port); the example config's demo "
            "provider follows it"
            if hint == "--demo-port"
            else f"move it, pass {hint}"
        )
        raise DemoPortInUse(
            exc.errno,
            f"port {port} is in use: the demo upstream cannot listen on {host}:{port} "
            f"(another `gateway serve --demo` running?). To {how}",
        ) from None
    return sock


def follow_demo(sock: socket.socket) -> None:
    """Make providers at the default demo address follow the bound socket's port."""
    global _moved_port
    port = sock.getsockname()[1]
    _moved_port = None if port == _DEFAULT_PORT else port
    if _moved_port is not None:
        log.info(
            "demo upstream on port %d: providers with base_url on port %d of 127.0.0.1 or "
            "localhost are sent there",
            port,
            _DEFAULT_PORT,
        )


def moved_demo(config: GatewayConfig) -> GatewayConfig:
    """`config` with the default demo address replaced by the moved one, if moved."""
    if _moved_port is None:
        return config
    providers = []
    for p in config.providers:
        url = URL(p.base_url)
        if url.host in DEMO_HOSTS and url.port == _DEFAULT_PORT:
            p = dataclasses.replace(p, base_url=str(url.with_port(_moved_port)))
        providers.append(p)
    return dataclasses.replace(config, providers=tuple(providers))
