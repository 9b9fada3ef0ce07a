"""Command line: `gateway serve | check | demo-upstream`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, config_path_from_env, parse_listen

DEMO_LISTEN = "127.0.0.1:8081"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _listen_arg(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="OpenAI-compatible gateway for custom providers."
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    config_help = "config file (default: $GATEWAY_CONFIG or config/gateway.yaml)"
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help=config_help)
    serve.add_argument(
        "--listen", type=_listen_arg, help="HOST:PORT (default: $GATEWAY_LISTEN or config)"
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help=f"also run the built-in demo upstream on {DEMO_LISTEN} (see --demo-listen)",
    )
    serve.add_argument("--demo-listen", type=_listen_arg, default=DEMO_LISTEN)
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds to let requests in flight finish on SIGTERM (default 30)",
    )
    serve.add_argument("--log-level", default=os.environ.get("GATEWAY_LOG_LEVEL", "info"))

    check = sub.add_parser("check", help="validate the config and unseal every secret")
    check.add_argument("--config", help=config_help)

    demo = sub.add_parser("demo-upstream", help="run only the built-in demo upstream")
    demo.add_argument("--listen", type=_listen_arg, default=DEMO_LISTEN)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import install_uvloop, serve

    _setup_logging(args.log_level)
    install_uvloop()
    path = config_path_from_env(args.config)
    listen = args.listen or os.environ.get("GATEWAY_LISTEN")
    try:
        asyncio.run(
            serve(
                path,
                listen=listen,
                demo_listen=args.demo_listen if args.demo else None,
                shutdown_grace=args.shutdown_grace,
            )
        )
    except ConfigError as exc:
        print(f"gateway: invalid configuration:\n{_indent(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .reload import load_snapshot

    _setup_logging("warning")
    path = config_path_from_env(args.config)
    try:
        snapshot = load_snapshot(Path(path))
    except ConfigError as exc:
        n = len(exc.problems)
        print(f"{path}: {n} problem{'s' * (n != 1)}:\n{_indent(exc)}", file=sys.stderr)
        return 1
    names = ", ".join(snapshot.providers) or "none"
    print(f"{path}: OK ({len(snapshot.providers)} providers: {names})")
    return 0


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .demo_upstream import create_demo_app
    from .server import install_uvloop

    _setup_logging("info")
    install_uvloop()
    host, port = parse_listen(args.listen)
    web.run_app(create_demo_app(), host=host, port=port, access_log=None, print=None)
    return 0


def _indent(exc: ConfigError) -> str:
    return "\n".join(f"  - {p}" for p in exc.problems)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"serve": cmd_serve, "check": cmd_check, "demo-upstream": cmd_demo_upstream}
    return handler[args.command](args)
