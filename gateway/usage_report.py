"""`GET /admin/usage` and `gateway usage`: what each client and model used since start-up.

The figures are the token counters of `/metrics` (gateway_tokens_total and
the requests whose usage was read), grouped for people: per client and per
`provider/model`, tokens by kind and requests, plus the answers that
reported no usage. Under `--workers N` they are the merged figures of every
worker, exactly as `/metrics` gives them (`Metrics.merged()`). Admin token
required, as for the rest of the admin API.
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import orjson

from .proxy.usage import KINDS

if TYPE_CHECKING:  # the CLI side imports neither
    from aiohttp import web

    from .metrics import Metrics

TOKEN_ENV = "GATEWAY_ADMIN_TOKEN"
MAX_REPORT_BYTES = 16 << 20  # the CLI reads no more of an answer than this


def _row() -> dict[str, Any]:
    return {"requests": 0, "tokens": {}}


def usage_report(metrics: Metrics) -> dict[str, Any]:
    """The merged figures, per client and per provider/model."""
    m = metrics.merged()
    clients: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    for (provider, model, client), n in m.usage_requests.items():
        clients.setdefault(client, _row())["requests"] += n
        models.setdefault(f"{provider}/{model}", _row())["requests"] += n
    for (provider, model, kind, client), n in m.tokens_total.items():
        for row in (
            clients.setdefault(client, _row()),
            models.setdefault(f"{provider}/{model}", _row()),
        ):
            row["tokens"][kind] = row["tokens"].get(kind, 0) + n
    return {
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.started)),
        "clients": dict(sorted(clients.items())),
        "models": dict(sorted(models.items())),
        "requests_without_usage": dict(sorted(m.requests_without_usage.items())),
    }


def add_usage_routes(app: web.Application, metrics: Metrics) -> None:
    from aiohttp import web

    from .admin_auth import admin_route, authorize

    async def get_usage(request: web.Request) -> web.Response:
        authorize(request)
        return web.Response(
            body=orjson.dumps(usage_report(metrics)), content_type="application/json"
        )

    app.router.add_get("/admin/usage", admin_route(get_usage))


# -- the CLI -------------------------------------------------------------------


def add_usage_command(sub: Any) -> None:
    """`gateway usage --url URL`: the table of GET /admin/usage."""
    p = sub.add_parser("usage", help="print what each client and model used since start-up")
    p.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:8080")
    p.add_argument(
        "--token-env",
        default=TOKEN_ENV,
        help=f"environment variable holding the admin token (default {TOKEN_ENV})",
    )
    p.add_argument("--json", action="store_true", help="print the JSON as received")
    p.add_argument("--timeout", type=float, default=10.0)


def cmd_usage(args: argparse.Namespace) -> int:
    token = os.environ.get(args.token_env, "").strip()
    if not token:
        print(f"gateway usage: set {args.token_env} to the admin token")
        return 2
    url = args.url.rstrip("/") + "/admin/usage"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with _opener().open(request, timeout=args.timeout) as resp:
            body = resp.read(MAX_REPORT_BYTES)
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode("utf-8", "replace")
        print(f"gateway usage: {url} answered HTTP {exc.code}: {detail}")
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"gateway usage: cannot reach {url}: {exc}")
        return 1
    if args.json:
        print(body.decode("utf-8", "replace"))
        return 0
    try:
        report = orjson.loads(body)
    except orjson.JSONDecodeError:
        print(f"gateway usage: {url} did not answer JSON")
        return 1
    print(format_report(report))
    return 0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the token is for this URL only: a redirect is an error


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirect())


def format_report(report: dict[str, Any]) -> str:
    """Two small tables (clients, models) and the answers without usage."""
    lines = [f"Usage since {report.get('since')}"]
    for title, rows in (("client", report.get("clients", {})), ("model", report.get("models", {}))):
        lines.append("")
        lines.extend(_table(title, rows))
    missing = report.get("requests_without_usage") or {}
    if missing:
        lines.append("")
        lines.append("answers without usage: " + ", ".join(f"{p} {n}" for p, n in missing.items()))
    return "\n".join(lines)


def _table(title: str, rows: dict[str, Any]) -> list[str]:
    header = [title.upper(), "REQUESTS", *(k.upper() for k in KINDS)]
    table = [header]
    for name, row in rows.items():
        tokens = row.get("tokens", {})
        table.append([name, str(row.get("requests", 0)), *(str(tokens.get(k, 0)) for k in KINDS)])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    out = []
    for r in table:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    if len(table) == 1:
        out.append("(none)")
    return out
