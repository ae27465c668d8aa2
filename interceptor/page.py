"""The dashboard page on the admin listener: static HTML, CSS and JavaScript shipped in the package.

The files carry no data, so they load without the admin token; the page asks for the token and sends it on
its own fetches of `/api/dashboard` (which the admin middleware guards like every other path).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
FILES = {
    "/dashboard": ("dashboard.html", "text/html"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css"),
    "/dashboard/dashboard-charts.js": ("dashboard-charts.js", "text/javascript"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript"),
}
PUBLIC_PATHS = frozenset({*FILES, "/dashboard/"})

# Everything the page runs is its own file; nothing else may load, and fetches go to this listener only.
# (img-src data: is the empty favicon, so the browser does not ask for /favicon.ico.)
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a restarted tiffin's newer page wins over a cached one
}


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


async def _serve(request: web.Request) -> web.Response:
    name, content_type = FILES[request.path]
    return web.Response(body=_read(name), content_type=content_type, charset="utf-8", headers=HEADERS)


async def _to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard")


def add_page_routes(app: web.Application) -> None:
    """`/dashboard` and its two assets; `/dashboard/` redirects to the page."""
    for path in FILES:
        app.router.add_get(path, _serve)
    app.router.add_get("/dashboard/", _to_page)
