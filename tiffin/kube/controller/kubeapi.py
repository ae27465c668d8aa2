"""A small typed layer over kubernetes-asyncio's ApiClient: plain-dict REST calls, errors as `KubeApiError`.

The controller handles objects of any kind as plain dicts (what `render` returns), so it speaks the REST paths
directly instead of the generated per-kind classes; kubernetes-asyncio still provides the configuration
(kubeconfig or in-cluster service account), authentication and the HTTP pool.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration

from tiffin.contracts.exceptions import TiffinError

FIELD_MANAGER = "tiffin-controller"

# Plurals of the kinds the controller touches; others fall back to the English rule below (no discovery
# round trip: the set of kinds `render` returns is small and known).
_PLURALS = {
    "Ingress": "ingresses",
    "NetworkPolicy": "networkpolicies",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "TiffinDeployment": "tiffindeployments",
}

# HTTP statuses worth trying again (the API server is busy, restarting, or a write raced another).
RETRYABLE = frozenset({409, 429, 500, 502, 503, 504})


class KubeApiError(TiffinError):
    """The Kubernetes API answered with an error Status (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}")

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later without anything changing on our side."""
        return self.status == 0 or self.status in RETRYABLE


class Gone(KubeApiError):
    """410: the resourceVersion a watch started from is too old; list again."""


def plural(kind: str) -> str:
    """The resource name of a kind in REST paths (Deployment -> deployments)."""
    if kind in _PLURALS:
        return _PLURALS[kind]
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    if lower.endswith("s"):
        return lower + "es"
    return lower + "s"


@dataclass(frozen=True)
class Resource:
    """A namespaced collection: apiVersion and plural (ConfigMaps in `tiffin`: v1, configmaps)."""

    api_version: str
    plural: str
    namespace: str

    @classmethod
    def of(cls, obj: dict[str, Any], namespace: str) -> Resource:
        """The collection an object belongs to (its own namespace wins over `namespace`)."""
        meta = obj.get("metadata", {})
        return cls(obj["apiVersion"], plural(obj["kind"]), meta.get("namespace") or namespace)

    def path(self, name: str | None = None, subresource: str | None = None) -> str:
        root = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        out = f"{root}/namespaces/{self.namespace}/{self.plural}"
        if name is not None:
            out += f"/{name}"
        if subresource is not None:
            out += f"/{subresource}"
        return out


def _error(status: int, body: bytes) -> KubeApiError:
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    reason = str(data.get("reason") or "Unknown")
    message = str(data.get("message") or body[:200].decode(errors="replace"))
    return (Gone if status == 410 else KubeApiError)(status, reason, message)


class KubeApi:
    """REST calls on plain dicts; every error surfaces as `KubeApiError` (status 0: not reachable)."""

    def __init__(self, configuration: Configuration, request_timeout_s: float = 30.0) -> None:
        self.client = ApiClient(configuration)
        self.request_timeout_s = request_timeout_s

    async def close(self) -> None:
        await self.client.close()

    async def _open(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        limits: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        try:
            resp: aiohttp.ClientResponse = await self.client.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=limits or aiohttp.ClientTimeout(total=self.request_timeout_s),
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeApiError(0, "Unreachable", str(exc) or type(exc).__name__) from exc
        return resp

    async def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One call; the decoded JSON answer, or `KubeApiError` for a status outside 2xx."""
        resp = await self._open(method, path, query, body, content_type)
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeApiError(0, "Unreachable", str(exc) or type(exc).__name__) from exc
        finally:
            resp.release()
        if not 200 <= resp.status < 300:
            raise _error(resp.status, raw)
        data: dict[str, Any] = json.loads(raw) if raw else {}
        return data

    async def get(self, resource: Resource, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", resource.path(name))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, resource: Resource, label_selector: str | None = None) -> dict[str, Any]:
        """The collection's List object (items and metadata.resourceVersion)."""
        query = {"labelSelector": label_selector} if label_selector else None
        return await self.request("GET", resource.path(), query)

    async def apply(self, obj: dict[str, Any], namespace: str, manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply as `manager` (`tiffin-controller`), forcing ownership of the fields it sets."""
        resource = Resource.of(obj, namespace)
        query = {"fieldManager": manager, "force": "true"}
        path = resource.path(obj["metadata"]["name"])
        return await self.request("PATCH", path, query, obj, "application/apply-patch+yaml")

    async def merge_patch(
        self, resource: Resource, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386) of the object or of its subresource (`status`)."""
        path = resource.path(name, subresource)
        return await self.request("PATCH", path, {"fieldManager": FIELD_MANAGER}, patch, "application/merge-patch+json")

    async def delete(self, resource: Resource, name: str) -> bool:
        """Delete in the background (dependents follow); False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            await self.request("DELETE", resource.path(name), None, body)
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def watch(
        self, resource: Resource, resource_version: str, label_selector: str | None = None, timeout_s: int = 300
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Watch events after `resource_version` until the server ends the stream (after `timeout_s`).

        Yields {type, object}; BOOKMARK events are yielded too (they carry a newer resourceVersion).
        Raises `Gone` when the version is too old, however the server says it (HTTP 410 or an ERROR event).
        """
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        # No total deadline: the stream is long-lived; a silent connection still fails after a read timeout.
        limits = aiohttp.ClientTimeout(sock_connect=self.request_timeout_s, sock_read=timeout_s + 30)
        resp = await self._open("GET", resource.path(), query, limits=limits)
        try:
            if resp.status != 200:
                raise _error(resp.status, await resp.read())
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise KubeApiError(0, "Unreachable", str(exc) or type(exc).__name__) from exc
                if not line:
                    return
                if not line.strip():
                    continue
                event: dict[str, Any] = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise _error(int(status.get("code") or 500), json.dumps(status).encode())
                yield event
        finally:
            resp.release()
