"""Command line: `gateway serve | check | schema | keygen | seal | demo-upstream`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from . import __version__
from .config import ConfigError, config_path_from_env, parse_listen
from .demo_port import DEMO_LISTEN
from .usage_report import add_usage_command, cmd_usage


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


def _key_name_arg(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use letters, digits, '.', '-' and '_' (no slashes)"
        )
    return value


def _port_arg(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0 to 65535)")
    return int(value)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


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
        help=f"also run the built-in demo upstream on {DEMO_LISTEN} (see --demo-port)",
    )
    serve.add_argument("--demo-listen", type=_listen_arg, default=DEMO_LISTEN)
    serve.add_argument(
        "--demo-port",
        type=_port_arg,
        metavar="N",
        help="run the demo upstream on port N instead of 8081 (0 = any free port; implies "
        "--demo); providers whose base_url is 127.0.0.1:8081 follow it",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds to let requests in flight finish on SIGTERM (default 30)",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=int(os.environ.get("GATEWAY_WORKERS", "1")),
        help="processes sharing the port with SO_REUSEPORT (default: $GATEWAY_WORKERS or 1)",
    )
    serve.add_argument(
        "--drain-delay",
        type=float,
        default=0.0,
        help="seconds to keep accepting after SIGTERM while /readyz answers 503, so a "
        "load balancer can stop routing first (default 0: a loopback sidecar needs none)",
    )
    serve.add_argument("--log-level", default=os.environ.get("GATEWAY_LOG_LEVEL", "info"))

    check = sub.add_parser("check", help="validate the config and unseal every secret")
    check.add_argument("--config", help=config_help)
    check.add_argument(
        "--public-key",
        action="append",
        metavar="FILE",
        help="check without the private key: sealed values against this seal.pub "
        "(key id and scope), plain-text secrets refused; repeat during a rotation",
    )
    check.add_argument(
        "--strict",
        action="store_true",
        help="also fail on warnings (a config with no providers)",
    )
    check.add_argument(
        "--probe",
        action="store_true",
        help="also connect to every upstream (base_url, each replica, or the proxy) and "
        "resolve discovery names: fail on any this machine cannot reach",
    )

    schema = sub.add_parser(
        "schema",
        help="print the JSON Schema of the config file, for editors (yaml-language-server)",
    )
    schema.add_argument(
        "--provider",
        action="store_true",
        help="the schema of one include: fragment (providers.d/NAME.yaml) instead",
    )

    keygen = sub.add_parser("keygen", help="create a key pair for sealing secrets")
    keygen.add_argument(
        "--out", required=True, help="directory for NAME.key (private, mode 0600) and NAME.pub"
    )
    keygen.add_argument(
        "--name",
        type=_key_name_arg,
        default="seal",
        help="file name without extension (default: seal); e.g. seal-2025-07 for rotation",
    )

    seal = sub.add_parser(
        "seal", help="seal a secret read from standard input; prints sealed:v1:..."
    )
    seal.add_argument("--public-key", required=True, help="the public key file (seal.pub)")
    seal.add_argument(
        "--scope",
        required=True,
        help="where the value will be used: the provider's name, 'auth' or 'admin'",
    )
    # Catches a secret typed as an argument, so that argparse does not echo
    # it back in an "unrecognized arguments" error.
    seal.add_argument("stray", nargs="*", help=argparse.SUPPRESS)

    add_usage_command(sub)  # gateway usage --url URL (usage_report.py)
    demo = sub.add_parser("demo-upstream", help="run only the built-in demo upstream")
    demo.add_argument("--listen", type=_listen_arg, default=DEMO_LISTEN)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from .demo_port import DemoPortInUse, bind_demo_socket, follow_demo
    from .metrics_board import MetricsBoard
    from .reload import load_snapshot
    from .server import install_uvloop, serve
    from .workers import run_workers

    _setup_logging(args.log_level)
    path = config_path_from_env(args.config)
    listen = args.listen or os.environ.get("GATEWAY_LISTEN")
    workers = args.workers
    # Made before forking: the workers share it (see metrics_board.py).
    board = MetricsBoard(workers) if workers > 1 else None
    demo = None
    if args.demo or args.demo_port is not None:
        # Bound here, before the config is read and workers forked: a taken
        # port is reported at once, and every load sees where the demo is.
        try:
            demo = bind_demo_socket(args.demo_listen, args.demo_port)
        except DemoPortInUse as exc:
            print(f"gateway: cannot start: {exc.strerror}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"gateway: cannot start the demo upstream: {exc}", file=sys.stderr)
            return 1
        follow_demo(demo)

    def run_one(index: int) -> int:
        if demo is not None and index != 0:
            demo.close()  # one demo upstream for the whole process tree
        install_uvloop()
        try:
            asyncio.run(
                serve(
                    path,
                    listen=listen,
                    demo_listen=demo if index == 0 else None,
                    shutdown_grace=args.shutdown_grace,
                    drain_delay=args.drain_delay,
                    reuse_port=workers > 1,
                    metrics_board=board,
                    worker_index=index,
                )
            )
        except ConfigError as exc:
            return _invalid(exc)
        except OSError as exc:
            print(f"gateway: cannot start: {exc}", file=sys.stderr)
            return 1
        return 0

    if workers == 1:
        return run_one(0)
    try:
        load_snapshot(path)  # fail once, in the parent, before forking
    except ConfigError as exc:
        return _invalid(exc)
    return run_workers(workers, run_one)


def cmd_check(args: argparse.Namespace) -> int:
    from .check import full_check, public_key_check
    from .sealing import load_public_key
    from .secrets import SecretError

    _setup_logging("warning")
    path = Path(config_path_from_env(args.config))
    if args.public_key:
        kids, key_errors = set(), []
        for key_file in args.public_key:  # every unreadable key at once, like the config
            try:
                kids.add(load_public_key(key_file).kid)
            except SecretError as exc:
                key_errors.append(str(exc))
        if key_errors:
            print("\n".join(f"gateway check: {e}" for e in key_errors), file=sys.stderr)
            return 1
        problems = public_key_check(path, kids)
        ok = f"{path}: OK without unsealing (structure, key ids and scopes)"
    else:
        snapshot, problems = full_check(path)
        if snapshot is not None:
            n = len(snapshot.providers)
            names = ", ".join(snapshot.providers) or "none"
            ok = f"{path}: OK ({n} provider{'s' * (n != 1)}: {names})"
            if not n:
                # Valid, but a gateway with nothing to route to: often a
                # wrong `include:` path or an empty ConfigMap.
                print(f"{path}: warning: no providers are configured", file=sys.stderr)
                if args.strict:
                    problems = ["no providers are configured (--strict)"]
    if args.probe and not problems:
        problems = _probe(path)
    if problems:
        n = len(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        print(f"{path}: {n} problem{'s' * (n != 1)}:\n{lines}", file=sys.stderr)
        return 1
    print(ok)
    return 0


def _probe(path: Path) -> list[str]:
    """`check --probe`: the upstreams this machine cannot reach (gateway/probe.py)."""
    from .config import load_config
    from .probe import probe

    return asyncio.run(probe(load_config(path), str(path)))


def cmd_schema(args: argparse.Namespace) -> int:
    from .schema import render

    sys.stdout.write(render(provider=args.provider))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from .sealing import write_keypair

    try:
        key_path, pub_path, kid = write_keypair(args.out, args.name)
    except FileExistsError as exc:
        print(f"gateway keygen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gateway keygen: cannot write keys in {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"private key: {key_path} (mode 0600: never commit it; mount it as a Secret)")
    print(f"public key:  {pub_path} (key id {kid}: safe to commit)")
    print(f"next: gateway seal --public-key {pub_path} --scope PROVIDER_NAME")
    return 0


MAX_SECRET_BYTES = 64 * 1024


def _read_secret(scope: str) -> str:
    """The secret from standard input: hidden when typed, one trailing newline dropped."""
    from .secrets import SecretError

    if sys.stdin is None:
        raise SecretError("no standard input to read the secret from")
    if sys.stdin.isatty():
        with warnings.catch_warnings():
            # getpass falls back to echoing with only a warning; refuse instead.
            warnings.simplefilter("error", getpass.GetPassWarning)
            try:
                return getpass.getpass(f"Secret for scope '{scope}' (input hidden): ")
            except getpass.GetPassWarning:
                raise SecretError(
                    "cannot turn off echo on this terminal; pipe the secret in instead"
                ) from None
            except EOFError:
                raise SecretError("no secret given") from None
    data = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"the secret is longer than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("the secret on standard input is not UTF-8 text") from None
    # `echo KEY | gateway seal` and a file ending in a newline both mean KEY.
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def cmd_seal(args: argparse.Namespace) -> int:
    from .sealing import check_scope, load_public_key
    from .secrets import SecretError

    if args.stray:
        print(
            "gateway seal: the secret is read from standard input, never from the command "
            "line (arguments end up in shell history and `ps`: if that was a real key, "
            "rotate it)",
            file=sys.stderr,
        )
        return 2
    try:
        # Key and scope first, so that nobody types a secret for nothing.
        public = load_public_key(args.public_key)
        check_scope(args.scope)
        sealed = public.seal(_read_secret(args.scope), args.scope)
    except SecretError as exc:
        print(f"gateway seal: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    print(sealed)
    return 0


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .demo_port import DemoPortInUse, bind_demo_socket
    from .demo_upstream import create_demo_app
    from .server import install_uvloop

    _setup_logging("info")
    try:
        sock = bind_demo_socket(args.listen, hint="--listen HOST:PORT")
    except OSError as exc:
        reason = exc.strerror if isinstance(exc, DemoPortInUse) else exc
        print(f"gateway demo-upstream: cannot start: {reason}", file=sys.stderr)
        return 1
    install_uvloop()
    web.run_app(create_demo_app(), sock=sock, access_log=None, print=None)
    return 0


def _invalid(exc: ConfigError) -> int:
    print(f"gateway: invalid configuration:\n{_indent(exc)}", file=sys.stderr)
    return 2


def _indent(exc: ConfigError) -> str:
    return "\n".join(f"  - {p}" for p in exc.problems)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "serve": cmd_serve,
        "check": cmd_check,
        "schema": cmd_schema,
        "keygen": cmd_keygen,
        "seal": cmd_seal,
        "demo-upstream": cmd_demo_upstream,
        "usage": cmd_usage,
    }
    return handler[args.command](args)
