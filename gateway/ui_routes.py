"""The admin web page at /ui/: static files shipped inside the package.

No CDN and no build step: the gateway often runs without internet. The few
small files are read once, when the routes are added, and served from
memory; only names found in the package directory are served, so no request
path ever reaches the filesystem. Like the admin API, the page exists only
while the live config sets `admin.token` (checked per request, since a
reload can turn it on or off).
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from aiohttp import web

from .errors import error_response
from .lease import HOLDER

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# Everything from the gateway itself; no inline script or style, no frames,
# no form posts anywhere. connect-src 'self' covers the admin API calls.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate every time: after an upgrade the page and its catalogs
    # must match the running gateway.
    "Cache-Control": "no-cache",
}

UI_FILES = web.AppKey("ui_files", dict)


def _collect(root: Traversable, prefix: str = "") -> dict[str, tuple[bytes, str]]:
    found: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.update(_collect(entry, f"{name}/"))
            continue
        suffix = "." + entry.name.rpartition(".")[2]
        if suffix in _TYPES:
            found[name] = (entry.read_bytes(), _TYPES[suffix])
    return found


def load_ui_files() -> dict[str, tuple[bytes, str]]:
    """relative path -> (content, content type) for every servable file in gateway/ui."""
    return _collect(files("gateway") / "ui")


def _admin_enabled(app: web.Application) -> bool:
    holder = app.get(HOLDER)
    return holder is None or holder.current.admin_token is not None


async def _serve(request: web.Request) -> web.Response:
    if not _admin_enabled(request.app):
        return error_response(
            404, "The admin UI is disabled: set admin.token in the config", "admin_disabled"
        )
    path = request.match_info.get("path") or "index.html"
    entry = request.app[UI_FILES].get(path)
    if entry is None:
        return error_response(404, f"Unknown endpoint GET {request.path}", "unknown_endpoint")
    body, content_type = entry
    return web.Response(body=body, headers={**_HEADERS, "Content-Type": content_type})


async def _to_slash(request: web.Request) -> web.Response:
    # Relative, so that it stays right behind a proxy that adds a path prefix;
    # the page's relative links need the trailing slash.
    raise web.HTTPPermanentRedirect(location="ui/")


def add_ui_routes(app: web.Application) -> None:
    """Serve the page at /ui/ (and /ui). Add before any catch-all route."""
    app[UI_FILES] = load_ui_files()
    app.router.add_get("/ui", _to_slash)
    app.router.add_get("/ui/{path:.*}", _serve)
