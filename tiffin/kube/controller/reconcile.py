"""Reconcile one TiffinDeployment: validate its spec, render, server-side apply, prune, record status.

Deletion goes through a finalizer (`tiffin.io/cleanup`): the controller prunes every object carrying the
deployment's labels, then releases the resource. Owner references are set too (garbage collection cleans up
if the finalizer is ever removed by hand), but pruning does not depend on them: the finalizer makes deletion
explicit and observable (and testable without a garbage collector).

An invalid spec does not crash or retry in a loop: it is reported in the `Applied` condition, naming the field,
and the objects of the last valid spec keep serving.

The model cache a deployment's render creates (its PersistentVolumeClaim) is the one exception: it is neither
owned nor pruned, so deleting a TiffinDeployment (or changing its cache) never deletes downloaded weights; a
TiffinDeployment created again under the same name finds its cache. `kubectl delete pvc NAME-models` frees it.

Every valid spec's YAML also goes into the deployments ConfigMap the interceptor and scaler read (`Catalog`);
an invalid one keeps its last valid YAML there, as its objects keep serving.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from tiffin.contracts import keys
from tiffin.contracts.config import Deployment, field_problems
from tiffin.contracts.exceptions import ConfigError
from tiffin.kube.controller.catalog import Catalog
from tiffin.kube.controller.conditions import Counts, condition, status_body
from tiffin.kube.controller.kubeapi import KubeApi, KubeApiError, Resource
from tiffin.kube.controller.replicas import LABEL_DEPLOYMENT, MANAGED, counts_of
from tiffin.kube.render import RENDERED_KINDS, Platform, config_yaml, render

log = structlog.get_logger("tiffin.kube.controller.reconcile")

GROUP_VERSION = "tiffin.io/v1alpha1"
KIND = "TiffinDeployment"
FINALIZER = "tiffin.io/cleanup"

# Kept on delete and on change: the model cache (weights take long to download; see the module's docstring).
KEPT_KINDS = frozenset({("v1", "PersistentVolumeClaim")})

# Every kind `render` may return, listed when pruning (a kind a new render no longer returns at all must
# still be found), but the kept ones. Listing a kind whose CRD is absent (404) is skipped.
PRUNE_KINDS: tuple[tuple[str, str], ...] = tuple(
    (api_version, kind) for api_version, kind, _ in RENDERED_KINDS if (api_version, kind) not in KEPT_KINDS
)

ObjectKey = tuple[str, str, str]  # apiVersion, kind, name


class InvalidSpec(ValueError):
    """The resource's spec is not a valid deployment; `problems` name each field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _loc(loc: tuple[int | str, ...]) -> str:
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def deployment_of(resource: dict[str, Any]) -> tuple[Deployment, str]:
    """The validated deployment (metadata.name is its name) and its YAML text; `InvalidSpec` names the fields."""
    spec = resource.get("spec") or {}
    if not isinstance(spec, dict):
        raise InvalidSpec(["spec: must be a mapping of fields"])
    data = {"name": resource["metadata"]["name"], **{k: v for k, v in spec.items() if k != "name"}}
    try:
        deployment = Deployment.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'metadata.name' if loc[:1] == ('name',) else _loc(loc)}: {msg}" for loc, msg in field_problems(exc)
        ]
        raise InvalidSpec(problems) from exc
    return deployment, yaml.safe_dump(data, sort_keys=False)


def rendered(resource: dict[str, Any], platform: Platform) -> tuple[Deployment, list[dict[str, Any]]]:
    """The deployment and what it renders to; `InvalidSpec` when its spec is invalid or cannot run on Kubernetes."""
    deployment, source = deployment_of(resource)
    try:
        return deployment, render(deployment, platform, source)
    except ConfigError as exc:  # render's own `field: problem` lines, relative to the deployment file
        raise InvalidSpec([_field_of(p) for p in exc.problems]) from exc


def manifests(resource: dict[str, Any], platform: Platform) -> list[dict[str, Any]]:
    """What the resource renders to; `InvalidSpec` when its spec is invalid or cannot run on Kubernetes."""
    return rendered(resource, platform)[1]


def _field_of(problem: str) -> str:
    return "metadata." + problem if problem.startswith("name:") else "spec." + problem


def key_of(obj: dict[str, Any]) -> ObjectKey:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


class Reconciler:
    """Brings the cluster to what each TiffinDeployment renders to; a watch `Handler` for the resources."""

    def __init__(self, api: KubeApi, platform: Platform, catalog: Catalog | None = None) -> None:
        self.api = api
        self.platform = platform
        self.namespace = platform.namespace
        self.catalog = catalog or Catalog(api, platform.namespace)
        self.entries: dict[str, str] = {}  # name -> YAML of its last valid spec, what the catalog should hold
        self._reported: dict[str, str] = {}  # the catalog's left-out names the Ready conditions were refreshed for
        self.resources = Resource(GROUP_VERSION, "tiffindeployments", platform.namespace)
        self.counts: dict[str, dict[keys.Component, Counts]] = {}
        self._done: dict[str, int] = {}  # uid -> generation applied by this process
        self._live: dict[str, dict[str, Any]] = {}  # name -> last seen resource
        # Two watches act on one resource (its own events; its workloads' counts and deletion): one at a time.
        self._locks: dict[str, asyncio.Lock] = {}
        # What this process last wrote to each resource's status: the Applied condition and generation it stands
        # for, and the whole body. Kept here, not read back from the watch, whose copy may trail our own writes.
        self._applied: dict[str, tuple[dict[str, Any], int]] = {}
        self._written: dict[str, dict[str, Any]] = {}

    # --- watch handler -------------------------------------------------------------------------------------------

    async def synced(self, items: list[dict[str, Any]]) -> None:
        """After a list (start, restart, 410): reconcile every resource, whatever was done before."""
        self._done.clear()
        self._written.clear()  # the list is fresh: compare with what it shows
        self._live = {item["metadata"]["name"]: item for item in items}
        # What the ConfigMap holds for resources still here: an invalid spec keeps its last valid YAML there.
        carried = await self.catalog.entries()
        self.entries = {name: text for name, text in carried.items() if name in self._live}
        for item in items:
            await self.reconcile(item)
        await self._publish()

    async def changed(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if kind == "DELETED":
            self._live.pop(meta["name"], None)
            self._done.pop(meta.get("uid", ""), None)
            for memo in (self._locks, self._applied, self._written):
                memo.pop(meta["name"], None)
            self.entries.pop(meta["name"], None)
            await self._publish()
            return
        self._live[meta["name"]] = obj
        # A status-only change (our own status patch among them) does not move the generation.
        if not meta.get("deletionTimestamp") and self._done.get(meta.get("uid", "")) == meta.get("generation"):
            return
        await self.reconcile(obj)
        await self._publish()

    async def _publish(self) -> None:
        """Write the deployments ConfigMap; refresh the Ready condition of each resource it newly leaves out or
        takes back (not under a resource's lock: it takes theirs)."""
        await self.catalog.publish(dict(self.entries))
        # Compared with what the statuses were last refreshed for (a deletion publishes under its own lock).
        before, after = self._reported, dict(self.catalog.left_out)
        self._reported = after
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                await self._refresh(name)

    async def counts_changed(self, name: str, counts: dict[keys.Component, Counts]) -> None:
        """The replica sync saw new counts: refresh the resource's Ready condition and replica columns."""
        self.counts[name] = counts
        await self._refresh(name)

    async def _refresh(self, name: str) -> None:
        async with self._lock(name):
            resource = self._live.get(name)
            if resource is None or resource["metadata"].get("deletionTimestamp") or name not in self._applied:
                return  # gone, going, or not reconciled yet (the reconcile writes the whole status)
            applied, generation = self._applied[name]
            await self._write_status(resource, applied, generation)

    async def workload_deleted(self, name: str) -> None:
        """A workload of `name` went away: put it back unless its resource is going too (or the render dropped it)."""
        if name not in self._live:
            return
        try:
            # Read afresh: this runs on the workloads' watch, which may be ahead of the resources' watch, and a
            # stale copy (its finalizer not yet seen) would make the conditional finalizer patch fail with 409.
            resource = await self.api.get(self.resources, name)
            if resource is None or resource["metadata"].get("deletionTimestamp"):
                return
            await self.reconcile(resource)
        except KubeApiError as exc:  # not this watch's to retry: the next resync reconciles it again
            log.warning("reconcile_failed", deployment=name, error=str(exc))

    # --- reconcile ---------------------------------------------------------------------------------------------

    async def reconcile(self, resource: dict[str, Any]) -> None:
        """One pass over one resource; raises `KubeApiError` only when trying again may succeed."""
        async with self._lock(resource["metadata"]["name"]):
            await self._reconcile(resource)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _reconcile(self, resource: dict[str, Any]) -> None:
        meta = resource["metadata"]
        name, generation = meta["name"], int(meta.get("generation") or 0)
        if meta.get("deletionTimestamp"):
            await self._finalize(resource)
            return
        if FINALIZER not in (meta.get("finalizers") or []):
            resource = await self._set_finalizers(resource, [*(meta.get("finalizers") or []), FINALIZER])
        try:
            deployment, objects = rendered(resource, self.platform)
        except InvalidSpec as exc:
            log.warning("spec_invalid", deployment=name, problems=exc.problems)
            await self._write_status(
                resource, self._applied_condition(resource, False, "InvalidSpec", str(exc)), generation
            )
            self._done[meta["uid"]] = generation
            return
        self.entries[name] = config_yaml(deployment)
        try:
            applied, pruned = await self._apply(resource, objects)
        except KubeApiError as exc:
            if exc.retryable:
                raise
            # The API refused an object (invalid, forbidden): say so on the resource; a spec change retries.
            log.warning("apply_refused", deployment=name, error=str(exc))
            await self._write_status(
                resource, self._applied_condition(resource, False, "ApplyFailed", str(exc)), generation
            )
            self._done[meta["uid"]] = generation
            return
        message = f"{applied} objects applied" + (f", {pruned} pruned" if pruned else "")
        await self._write_status(resource, self._applied_condition(resource, True, "Applied", message), generation)
        self._done[meta["uid"]] = generation
        log.info("reconciled", deployment=name, generation=generation, applied=applied, pruned=pruned)

    async def _apply(self, resource: dict[str, Any], objects: list[dict[str, Any]]) -> tuple[int, int]:
        meta = resource["metadata"]
        owner = {
            "apiVersion": GROUP_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        for obj in objects:
            obj_meta = obj.setdefault("metadata", {})
            obj_meta["namespace"] = self.namespace
            if (obj["apiVersion"], obj["kind"]) not in KEPT_KINDS:  # owned: the garbage collector would delete it
                obj_meta["ownerReferences"] = [owner]
            answer = await self.api.apply(obj, self.namespace)
            found = counts_of(answer) if answer.get("kind") == "Deployment" else None
            if found is not None:
                self.counts.setdefault(found[0], {})[found[1]] = found[2]
        kinds = ({(a, k) for a, k in PRUNE_KINDS} | {(o["apiVersion"], o["kind"]) for o in objects}) - KEPT_KINDS
        pruned = await self._prune(meta["name"], {key_of(o) for o in objects}, kinds)
        return len(objects), pruned

    async def _prune(self, name: str, keep: set[ObjectKey], kinds: set[tuple[str, str]]) -> int:
        """Delete what carries the deployment's labels and is not in `keep`; returns how many went."""
        selector = f"{MANAGED},{LABEL_DEPLOYMENT}={name}"
        pruned = 0
        for api_version, kind in sorted(kinds):
            collection = Resource.of({"apiVersion": api_version, "kind": kind}, self.namespace)
            try:
                listed = await self.api.list(collection, selector)
            except KubeApiError as exc:
                if exc.status == 404:
                    continue  # that kind is not installed (KEDA's CRDs absent): nothing of it to prune
                raise
            for item in listed.get("items") or []:
                item_name = item["metadata"]["name"]
                if (api_version, kind, item_name) in keep:
                    continue
                if await self.api.delete(collection, item_name):
                    pruned += 1
                    log.info("pruned", deployment=name, kind=kind, name=item_name)
        return pruned

    async def _finalize(self, resource: dict[str, Any]) -> None:
        meta = resource["metadata"]
        finalizers = meta.get("finalizers") or []
        if FINALIZER not in finalizers:
            return
        # Out of the catalog first: the interceptors stop taking its requests before its workloads go.
        self.entries.pop(meta["name"], None)
        await self.catalog.publish(dict(self.entries))
        pruned = await self._prune(meta["name"], set(), set(PRUNE_KINDS))
        await self._set_finalizers(resource, [f for f in finalizers if f != FINALIZER])
        self.counts.pop(meta["name"], None)
        log.info("deleted", deployment=meta["name"], pruned=pruned)

    async def _set_finalizers(self, resource: dict[str, Any], finalizers: list[str]) -> dict[str, Any]:
        # resourceVersion makes the patch conditional: another writer's finalizer list is never overwritten
        # (409 Conflict instead, retried after the next list).
        meta = resource["metadata"]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        return await self.api.merge_patch(self.resources, meta["name"], patch)

    def _applied_condition(self, resource: dict[str, Any], ok: bool, reason: str, message: str) -> dict[str, Any]:
        generation = int(resource["metadata"].get("generation") or 0)
        return condition("Applied", ok, reason, message, generation, self._status(resource).get("conditions") or [])

    def _status(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The resource's status as last written by this process, else as the resource shows it."""
        name = resource["metadata"]["name"]
        return self._written.get(name) or resource.get("status") or {}

    async def _write_status(self, resource: dict[str, Any], applied: dict[str, Any], generation: int) -> None:
        name = resource["metadata"]["name"]
        self._applied[name] = (applied, generation)
        current = self._status(resource)
        previous = current.get("conditions") or []
        body = status_body(generation, applied, self.counts.get(name, {}), previous, self.catalog.left_out.get(name))
        if current == body:
            return
        try:
            await self.api.merge_patch(self.resources, name, {"status": body}, "status")
        except KubeApiError as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise
        self._written[name] = body
