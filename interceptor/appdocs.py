"""An application's docs page and OpenAPI description, served by the edge itself (no replica needed, no CDN).

    GET {prefix}/v1/apps/{deployment}/docs               Swagger UI for the deployment's endpoints
    GET {prefix}/v1/apps/{deployment}/docs/assets/FILE   its scripts and styles, from the swagger-ui-bundle package
    GET {prefix}/v1/apps/{deployment}/openapi.json       the description the application's loader published

They answer without an API key, like any API's public reference: they say what the endpoints accept, not
what they answer, and the endpoints themselves still need a key ("Authorize" on the page takes it). A
deployment at zero keeps its docs: the description is read from Redis (`tiffin.contracts.apps`).
"""

from __future__ import annotations

import asyncio
import html
from pathlib import Path

import swagger_ui_bundle
from aiohttp import web
from redis.exceptions import RedisError

from interceptor.middleware import request_id
from interceptor.relay import Relay
from tiffin.contracts.apps import APPS_PATH, DOCS, OPENAPI, RESERVED, parse_app_path, read_openapi
from tiffin.contracts.errors import error_response
from tiffin.contracts.exceptions import BackendUnavailable, MethodNotAllowed, NotFound, RequestError

_ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
_FILES = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "application/javascript",
    "favicon-32x32.png": "image/png",
}
"""The bundle's files the page uses (nothing else of the package's folder is served)."""

# Scripts and styles only from this origin (Swagger UI sets inline styles; it loads nothing from elsewhere).
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)
_INIT_JS = """\
window.addEventListener("load", function () {
  var base = window.location.pathname.replace(/\\/docs\\/?$/, "");
  window.ui = SwaggerUIBundle({
    url: base + "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    tryItOutEnabled: true,
    displayRequestDuration: true
  });
});
"""
_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/tiffin-docs.js"></script>
</body>
</html>
"""


def is_endpoint_path(path: str) -> bool:
    """Whether `path` (`.../v1/apps/{deployment}/{name}`) can name an endpoint: the docs page and its files cannot,
    so a POST to them is refused here instead of waking the deployment to say 404."""
    _, _, tail = path.partition(APPS_PATH)
    _, _, name = tail.partition("/")
    return bool(name) and "/" not in name and name not in RESERVED


async def serve_app_docs(relay: Relay, request: web.Request) -> web.StreamResponse:
    """GET under `/v1/apps/{deployment}/`: the docs page, its assets, or the OpenAPI description."""
    rid = request_id(request)
    try:
        route = relay.router.match(request.host, request.path)
        target = parse_app_path(route.api_path)
        deployment = next(
            (d for d in route.candidates if target is not None and d.name == target.deployment and d.app), None
        )
        if target is None or deployment is None:
            raise NotFound("no application at this path", code="unknown_app")
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use GET")
        prefix = request.path[: len(request.path) - len(route.api_path)]
        base = f"{prefix}/v1/apps/{deployment.name}"
        if target.rest == OPENAPI:
            return await _openapi(relay, deployment.name, prefix, rid)
        if target.rest in (DOCS, DOCS + "/"):
            page = _PAGE.format(title=html.escape(f"{deployment.name} API"), assets=f"{base}/docs/assets")
            return web.Response(text=page, content_type="text/html", headers={"Content-Security-Policy": _CSP})
        asset = target.rest.removeprefix(DOCS + "/assets/")
        if asset == "tiffin-docs.js":
            return web.Response(text=_INIT_JS, content_type="application/javascript")
        if asset in _FILES:
            return web.Response(
                body=await asyncio.to_thread((_ASSETS / asset).read_bytes),
                content_type=_FILES[asset],
                headers={"Cache-Control": "public, max-age=86400"},
            )
        if target.rest.startswith(DOCS + "/"):
            raise NotFound("no such file of the docs page", code="route_not_found")
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; endpoints take POST")
    except RequestError as exc:
        return error_response(exc, rid)


async def _openapi(relay: Relay, name: str, prefix: str, rid: str) -> web.Response:
    try:
        async with asyncio.timeout(relay.edge.redis_timeout_s):
            document = await read_openapi(relay.redis, name)
    except (RedisError, OSError, TimeoutError) as exc:
        raise BackendUnavailable("cannot read the application's description now; retry", retry_after=2) from exc
    if document is None:
        raise NotFound(
            f"the description of '{name}' is published when its application is first loaded; call an endpoint "
            "or start the deployment, then retry",
            code="openapi_not_published",
        )
    # Paths are the API server's (/v1/apps/...); behind a route prefix the server URL carries it.
    document["servers"] = [{"url": prefix or "/"}]
    return web.json_response(document, headers={"X-Request-Id": rid})
