"""Application endpoints on the wire: their URL scheme and the published OpenAPI description.

An application's endpoints are routed by URL, not by the body's `model` field (their bodies are the
application's own types): `{path_prefix}/v1/apps/{deployment}/{endpoint}`. Beside them, each deployment with an
application has `.../openapi.json` and an interactive page at `.../docs`, served by the interceptor even at zero.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from tiffin.contracts import keys

APPS_PATH = "/v1/apps/"
"""What an application path starts with after the route's prefix."""
OPENAPI = "openapi.json"
DOCS = "docs"
RESERVED = frozenset({OPENAPI, DOCS})
"""Names under a deployment's application path that are not endpoints."""

_PATH = re.compile(r"^/v1/apps/(?P<deployment>[a-z0-9-]{1,63})/(?P<rest>.*)$")


@dataclass(frozen=True)
class AppPath:
    """A path under `/v1/apps/`: the deployment it names and what follows (an endpoint, `docs/...`)."""

    deployment: str
    rest: str


def parse_app_path(api_path: str) -> AppPath | None:
    """The deployment and remainder of `/v1/apps/{deployment}/{rest}`; None for any other path."""
    found = _PATH.match(api_path)
    if found is None:
        return None
    return AppPath(found["deployment"], found["rest"])


def endpoint_path(deployment: str, endpoint: str) -> str:
    """The API server's path of one endpoint (the interceptor's is the same behind the route's prefix)."""
    return f"{APPS_PATH}{deployment}/{endpoint}"


async def publish_openapi(redis: Redis, deployment: str, document: dict[str, Any]) -> None:
    """Store the application's OpenAPI description, so the docs page works while the deployment is at zero."""
    await redis.set(keys.app_openapi(deployment), json.dumps(document))


async def read_openapi(redis: Redis, deployment: str) -> dict[str, Any] | None:
    """The published description, or None if no process that loaded the application has published it yet."""
    raw = await redis.get(keys.app_openapi(deployment))
    if raw is None:
        return None
    document: dict[str, Any] = json.loads(raw)
    return document
