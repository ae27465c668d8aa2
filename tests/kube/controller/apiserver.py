"""TEST DOUBLE of the Kubernetes API server: an aiohttp server on a real socket, answering with the API's shapes.

No Kubernetes API server can run on these machines, so the controller's tests talk to this double when
KUBECONFIG names no reachable cluster. It keeps namespaced objects in memory and answers the REST calls the
controller makes with the shapes the real API server returns (recorded from it):
- lists: `{kind: XList, apiVersion, metadata: {resourceVersion}, items}`;
- watches: newline-delimited `{type: ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, object}` after a resourceVersion;
  a version older than the compacted history gets an ERROR event holding a 410 `Expired` Status;
- server-side apply (PATCH application/apply-patch+yaml with fieldManager; creates when absent; each field
  manager's applied fields merge with the others', and a field it applied before and no longer applies goes;
  lists are replaced whole, as atomic lists are), JSON merge
  patches of objects and of their `status` subresource, POST (409 AlreadyExists), PUT with optimistic
  concurrency (409 Conflict on a stale resourceVersion), DELETE honouring finalizers (deletionTimestamp first);
- errors as `Status` objects: 404 NotFound, 409, 410, 429 TooManyRequests (Retry-After), 500 InternalError.
Unchanged writes keep the resourceVersion and send no watch event, as the real server does. There is no
garbage collector (ownerReferences are stored, not acted on) and no scheduler: tests set a Deployment's
status themselves, as the kubelet and KEDA would.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>status))?)?$"
)

KINDS = {
    ("v1", "configmaps"): "ConfigMap",
    ("v1", "services"): "Service",
    ("v1", "persistentvolumeclaims"): "PersistentVolumeClaim",
    ("apps/v1", "deployments"): "Deployment",
    ("networking.k8s.io/v1", "networkpolicies"): "NetworkPolicy",
    ("keda.sh/v1alpha1", "scaledobjects"): "ScaledObject",
    ("tiffin.io/v1alpha1", "tiffindeployments"): "TiffinDeployment",
    ("coordination.k8s.io/v1", "leases"): "Lease",
}
_STOP = object()


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `Status` object as the API server sends it with an error."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}  # fmt: skip


def _error(code: int, reason: str, message: str, **details: Any) -> web.Response:
    headers = {"Retry-After": "1"} if code == 429 else None
    return web.json_response(status(code, reason, message, details), status=code, headers=headers)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _selected(obj: dict[str, Any], selector: str | None) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


@dataclass
class Fault:
    method: str
    path_pattern: str
    code: int
    times: int


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    content_type: str


@dataclass
class FakeApiServer:
    """The double's state; `app()` serves it. Tests inject faults, compact history and drop watches."""

    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # collection -> name -> object
    version: int = 1
    compacted: int = 0  # watches from a version below this get 410
    history: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    missing_kinds: set[str] = field(default_factory=set)  # plurals whose CRD is "not installed"
    applied: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (coll., name, manager)
    _watchers: dict[str, list[asyncio.Queue[Any]]] = field(default_factory=dict)

    # --- test controls ---------------------------------------------------------------------------------------

    def fail(self, method: str, path_pattern: str, code: int, times: int = 1) -> None:
        """The next `times` requests of `method` whose path matches `path_pattern` (re.search) get `code`."""
        self.faults.append(Fault(method, path_pattern, code, times))

    def compact(self) -> None:
        """Forget the history so far: a watch from any version handed out until now gets 410 Gone."""
        self.compacted = self.version + 1
        self.history.clear()

    def drop_watches(self) -> None:
        """End every open watch stream (the API server restarted, or a load balancer cut it)."""
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(_STOP)

    def applies(self, name_contains: str = "") -> list[Seen]:
        """Server-side apply requests seen so far."""
        return [s for s in self.seen if s.content_type == "application/apply-patch+yaml" and name_contains in s.path]

    def items(self, api_version: str, plural: str, namespace: str) -> dict[str, dict[str, Any]]:
        return self.objects.get(self._collection(api_version, namespace, plural), {})

    # --- storage ---------------------------------------------------------------------------------------------

    @staticmethod
    def _collection(api_version: str, namespace: str, plural: str) -> str:
        return f"{api_version}/{namespace}/{plural}"

    def _record(self, collection: str, kind: str, obj: dict[str, Any]) -> None:
        self.history.append((self.version, collection, kind, copy.deepcopy(obj)))
        for queue in self._watchers.get(collection, []):
            queue.put_nowait((kind, copy.deepcopy(obj)))

    def _store(self, collection: str, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
        """Write `new` (creating when `old` is None); a write that changes nothing changes no version."""
        meta = new.setdefault("metadata", {})
        if old is not None:
            for keep in ("uid", "creationTimestamp", "generation"):
                if keep in old["metadata"]:
                    meta[keep] = old["metadata"][keep]
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:
                return new
            if {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
                k: v for k, v in old.items() if k not in ("metadata", "status")
            }:
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        else:
            meta.update(uid=str(uuid.uuid4()), generation=1,
                        creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))  # fmt: skip
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.objects[collection].pop(meta["name"], None)
            self._record(collection, "DELETED", new)
            return new
        self.objects.setdefault(collection, {})[meta["name"]] = new
        self._record(collection, "ADDED" if old is None else "MODIFIED", new)
        return new

    # --- HTTP ------------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, dict(request.query), request.content_type))
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and re.search(fault.path_pattern, request.path):
                fault.times -= 1
                reasons = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
                return _error(fault.code, reasons.get(fault.code, "Unknown"), "injected by the test")
        match = _PATH.match(request.path)
        if match is None:
            return _error(404, "NotFound", "the server could not find the requested resource")
        api_version = match["core"] or f"{match['group']}/{match['version']}"
        plural, name, sub = match["plural"], match["name"], match["sub"]
        if plural in self.missing_kinds or (api_version, plural) not in KINDS:
            return _error(404, "NotFound", "the server could not find the requested resource")
        collection = self._collection(api_version, match["ns"], plural)
        kind = KINDS[(api_version, plural)]
        items = self.objects.setdefault(collection, {})
        body: Any = await request.json() if request.can_read_body else None
        if name is None:
            if request.method == "GET" and request.query.get("watch") in ("1", "true"):
                return await self._watch(request, collection)
            if request.method == "GET":
                selector = request.query.get("labelSelector")
                listed = [copy.deepcopy(o) for o in items.values() if _selected(o, selector)]
                meta = {"resourceVersion": str(self.version)}
                return web.json_response({"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta,
                                          "items": listed})  # fmt: skip
            if request.method == "POST":
                if body["metadata"]["name"] in items:
                    return _error(409, "AlreadyExists", f'{plural} "{body["metadata"]["name"]}" already exists')
                body["metadata"]["namespace"] = match["ns"]
                return web.json_response(self._store(collection, None, body), status=201)
            return _error(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        current = items.get(name)
        not_found = _error(404, "NotFound", f'{plural} "{name}" not found', name=name, kind=plural)
        if request.method == "GET":
            return web.json_response(current) if current is not None else not_found
        if request.method == "DELETE":
            if current is None:
                return not_found
            gone = copy.deepcopy(current)
            gone["metadata"].setdefault("deletionTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            if not gone["metadata"].get("finalizers"):
                self.version += 1
                gone["metadata"]["resourceVersion"] = str(self.version)
                del items[name]
                self._record(collection, "DELETED", gone)
                return web.json_response(gone)
            return web.json_response(self._store(collection, current, gone))
        if request.method == "PUT":
            if current is None:
                return not_found
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return _conflict(plural, name)
            return web.json_response(self._store(collection, current, body))
        if request.method == "PATCH" and request.content_type == "application/apply-patch+yaml":
            if "fieldManager" not in request.query:
                return _error(422, "Invalid", "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value")
            return await self._apply(collection, current, body, match["ns"], request.query["fieldManager"])
        if request.method == "PATCH" and request.content_type == "application/merge-patch+json":
            if current is None:
                return not_found
            wanted = body.get("metadata", {}).get("resourceVersion")
            if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                return _conflict(plural, name)
            if sub == "status":
                patched = {**copy.deepcopy(current), "status": merge_patch(current.get("status"), body.get("status"))}
            else:
                patched = merge_patch(current, {k: v for k, v in body.items() if k != "status"})
            return web.json_response(self._store(collection, current, patched))
        return _error(415, "UnsupportedMediaType", f"unknown body format: {request.content_type}")

    async def _apply(
        self, collection: str, current: dict[str, Any] | None, body: dict[str, Any], namespace: str, manager: str
    ) -> web.Response:
        # Forced: what a manager applies replaces what it applied before; fields other writers own stay (a
        # Deployment's replicas from KEDA's HPA, status, another manager's annotation).
        slot = (collection, body["metadata"]["name"], manager)
        new = copy.deepcopy(current) if current is not None else {}
        previous = self.applied.get(slot) if current is not None else None
        if previous is not None:
            new = _without(new, previous, body)
        new = _merged(new, body)
        new["metadata"]["namespace"] = namespace
        if current is None and body.get("kind") == "Deployment":
            new.setdefault("spec", {}).setdefault("replicas", 1)  # the API server's default
        self.applied[slot] = copy.deepcopy(body)
        return web.json_response(self._store(collection, current, new), status=200 if current else 201)

    async def _watch(self, request: web.Request, collection: str) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        selector = request.query.get("labelSelector")
        timeout_s = float(request.query.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if since < self.compacted:
            error = status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
            await resp.write(json.dumps({"type": "ERROR", "object": error}).encode() + b"\n")
            return resp
        # Replay and subscribe with no await between: no event can fall in the gap.
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for at, where, kind, obj in self.history:
            if where == collection and at > since:
                queue.put_nowait((kind, obj))
        self._watchers.setdefault(collection, []).append(queue)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    item = await queue.get()
                    if item is _STOP:
                        break
                    kind, obj = item
                    if _selected(obj, selector):
                        await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        except (TimeoutError, ConnectionResetError):
            pass  # the stream ends as the real one does at timeoutSeconds; a client gone ends it too
        finally:
            self._watchers[collection].remove(queue)
        return resp


def _without(obj: dict[str, Any], previous: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """`obj` less the fields `previous` (a manager's last apply) set and `body` (its new one) does not."""
    for key, value in previous.items():
        if key not in body:
            obj.pop(key, None)
        elif isinstance(value, dict) and isinstance(body[key], dict) and isinstance(obj.get(key), dict):
            obj[key] = _without(obj[key], value, body[key])
    return obj


def _merged(obj: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """`body`'s fields set on `obj`: maps merge key by key, anything else (lists too) is replaced."""
    for key, value in body.items():
        if isinstance(value, dict) and isinstance(obj.get(key), dict):
            obj[key] = _merged(obj[key], value)
        else:
            obj[key] = copy.deepcopy(value)
    return obj


def _conflict(plural: str, name: str) -> web.Response:
    message = (f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
               "please apply your changes to the latest version and try again")  # fmt: skip
    return _error(409, "Conflict", message, name=name, kind=plural)
