"""The admin listener's credential: required for everything but health probes once it leaves loopback."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from interceptor.page import PUBLIC_PATHS
from tiffin.contracts.errors import error_response
from tiffin.contracts.exceptions import Unauthenticated

# Probes carry no credential (a kubelet's or a load balancer's) and say nothing but up/ready. The dashboard's
# files carry no data: a browser loads them without the token, and the page then asks for it.
OPEN_PATHS = frozenset({"/healthz", "/readyz", *PUBLIC_PATHS})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def read_token(path: Path) -> str:
    """The admin token from its file (kept out of the environment and process lists); clear error if unusable."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"TIFFIN_ADMIN_TOKEN_FILE={path}: cannot read it ({exc.strerror})") from exc
    if len(token) < 16:
        raise SystemExit(f"TIFFIN_ADMIN_TOKEN_FILE={path}: the token must be at least 16 characters")
    return token


def require_token(token: str) -> Middleware:
    """Middleware: `Authorization: Bearer TOKEN` on every admin path except the probes and the page's files."""
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                response = error_response(Unauthenticated("the admin listener needs its token (Bearer)"))
                response.headers["WWW-Authenticate"] = 'Bearer realm="tiffin-admin"'
                return response
        return await handler(request)

    return check
