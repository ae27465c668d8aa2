"""The controller against the Kubernetes API test double: create, update with pruning, delete, invalid specs.

The tests know `render` only through its interface: the objects it returns (apiVersion, kind, name, labels).
"""

from __future__ import annotations

from typing import Any

from tests.kube.controller.conftest import NAMESPACE, RESOURCES, Cluster, StartController, eventually
from tiffin.contracts.config import Deployment
from tiffin.kube.controller.kubeapi import Resource, plural
from tiffin.kube.controller.reconcile import FINALIZER
from tiffin.kube.render import Platform, render

SPEC: dict[str, Any] = {"model": "smollm2", "runner": {"max_replicas": 2}}


def rendered(name: str, spec: dict[str, Any] = SPEC) -> list[dict[str, Any]]:
    return render(Deployment.model_validate({"name": name, **spec}), Platform(namespace=NAMESPACE))


def present(cluster: Cluster, obj: dict[str, Any]) -> dict[str, Any] | None:
    return cluster.fake.items(obj["apiVersion"], plural(obj["kind"]), NAMESPACE).get(obj["metadata"]["name"])


def labelled(cluster: Cluster, deployment: str) -> list[str]:
    """Every stored object carrying the deployment's label, as 'collection/name', but its model cache (a PVC the
    controller keeps on delete)."""
    return sorted(
        f"{collection}/{name}"
        for collection, items in cluster.fake.objects.items()
        for name, obj in items.items()
        if (obj["metadata"].get("labels") or {}).get("tiffin.io/deployment") == deployment
        and obj["kind"] != "PersistentVolumeClaim"
    )


def rendered_pruned(name: str, spec: dict[str, Any] = SPEC) -> list[dict[str, Any]]:
    """What render returns for `name` that the controller owns and prunes (all but the model cache)."""
    return [o for o in rendered(name, spec) if o["kind"] != "PersistentVolumeClaim"]


def model_cache(cluster: Cluster, deployment: str) -> dict[str, Any] | None:
    return cluster.fake.items("v1", "persistentvolumeclaims", NAMESPACE).get(f"{deployment}-models")


async def applied(cluster: Cluster, name: str, generation: int) -> dict[str, Any] | None:
    cond = await cluster.condition(name, "Applied")
    if cond and cond["status"] == "True" and cond["observedGeneration"] == generation:
        return cond
    return None


async def test_create_applies_every_rendered_object_owned_by_the_resource(
    cluster: Cluster, start_controller: StartController
) -> None:
    await start_controller()
    created = await cluster.create("smol", SPEC)
    await eventually(lambda: applied(cluster, "smol", 1), "Applied=True for generation 1")

    resource = await cluster.get("smol")
    assert resource is not None
    assert FINALIZER in resource["metadata"]["finalizers"]
    assert resource["status"]["observedGeneration"] == 1
    for obj in rendered("smol"):
        stored = present(cluster, obj)
        assert stored is not None, f"{obj['kind']} {obj['metadata']['name']} was not applied"
        if obj["kind"] == "PersistentVolumeClaim":  # the model cache outlives the resource: nothing owns it
            assert "ownerReferences" not in stored["metadata"]
            continue
        owner = stored["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("TiffinDeployment", "smol", created["metadata"]["uid"])
        assert owner["controller"] is True
        assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "tiffin"
    applies = cluster.fake.applies()
    assert applies and all(s.query == {"fieldManager": "tiffin-controller", "force": "true"} for s in applies)


async def test_update_applies_the_new_generation_and_prunes_what_the_render_dropped(
    cluster: Cluster, start_controller: StartController
) -> None:
    await start_controller()
    await cluster.create("smol", SPEC)
    await cluster.create("other", SPEC)
    await eventually(lambda: applied(cluster, "smol", 1), "smol applied")
    await eventually(lambda: applied(cluster, "other", 1), "other applied")
    # An object an earlier render returned (labelled as the controller labels them), which the render no
    # longer returns; and one of another deployment, which must survive.
    configmaps = Resource("v1", "configmaps", NAMESPACE)
    labels = {"app.kubernetes.io/managed-by": "tiffin", "tiffin.io/deployment": "smol"}
    stale = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "smol-stale", "labels": labels}}
    keep = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "other-extra", "labels": {**labels, "tiffin.io/deployment": "other"}}}  # fmt: skip
    for obj in (stale, keep):
        await cluster.api.request("POST", configmaps.path(), body=obj)

    await cluster.api.merge_patch(RESOURCES, "smol", {"spec": {"runner": {"max_replicas": 3}}})
    cond = await eventually(lambda: applied(cluster, "smol", 2), "Applied=True for generation 2")

    assert "smol-stale" not in cluster.fake.items("v1", "configmaps", NAMESPACE)
    assert "other-extra" in cluster.fake.items("v1", "configmaps", NAMESPACE)
    assert "1 pruned" in cond["message"]
    for obj in rendered("smol", {"model": "smollm2", "runner": {"max_replicas": 3}}):
        assert present(cluster, obj) is not None


async def test_delete_prunes_everything_then_releases_the_resource(
    cluster: Cluster, start_controller: StartController
) -> None:
    await start_controller()
    await cluster.create("smol", SPEC)
    await cluster.create("other", SPEC)
    await eventually(lambda: applied(cluster, "smol", 1), "smol applied")
    await eventually(lambda: applied(cluster, "other", 1), "other applied")
    assert labelled(cluster, "smol")

    await cluster.api.delete(RESOURCES, "smol")

    async def gone() -> bool:
        return await cluster.get("smol") is None

    await eventually(gone, "the resource is gone once its finalizer is removed")
    assert labelled(cluster, "smol") == []
    assert len(labelled(cluster, "other")) == len(rendered_pruned("other"))
    # The model cache stays (weights take long to download), and a resource made again finds it.
    cache = model_cache(cluster, "smol")
    assert cache is not None
    await cluster.create("smol", SPEC)
    await eventually(lambda: applied(cluster, "smol", 1), "smol applied again")
    again = model_cache(cluster, "smol")
    assert again is not None and again["metadata"]["uid"] == cache["metadata"]["uid"]


async def test_an_invalid_spec_is_reported_by_field_and_a_fix_applies(
    cluster: Cluster, start_controller: StartController
) -> None:
    await start_controller()
    await cluster.create("smol", {"model": "smollm2", "runner": {"max_replicas": 0}, "colour": "blue"})

    async def refused() -> dict[str, Any] | None:
        cond = await cluster.condition("smol", "Applied")
        return cond if cond and cond["reason"] == "InvalidSpec" else None

    cond = await eventually(refused, "Applied=False with reason InvalidSpec")
    assert cond["status"] == "False"
    assert "spec.runner.max_replicas" in cond["message"]
    assert "spec.colour: unknown field" in cond["message"]
    ready = await cluster.condition("smol", "Ready")
    assert ready is not None and ready["status"] == "False"
    assert labelled(cluster, "smol") == []

    await cluster.api.merge_patch(RESOURCES, "smol", {"spec": {"runner": {"max_replicas": 1}, "colour": None}})
    await eventually(lambda: applied(cluster, "smol", 2), "the fixed spec is applied")
    assert len(labelled(cluster, "smol")) == len(rendered_pruned("smol"))


async def test_a_workload_deleted_by_hand_comes_back(cluster: Cluster, start_controller: StartController) -> None:
    await start_controller()
    await cluster.create("smol", SPEC)
    await eventually(lambda: applied(cluster, "smol", 1), "smol applied")
    workloads = [o for o in rendered("smol") if o["kind"] == "Deployment"]
    uids = {o["metadata"]["name"]: present(cluster, o)["metadata"]["uid"] for o in workloads}  # type: ignore[index]

    await cluster.api.delete(Resource("apps/v1", "deployments", NAMESPACE), workloads[0]["metadata"]["name"])

    async def recreated() -> bool:
        stored = present(cluster, workloads[0])
        return stored is not None and stored["metadata"]["uid"] != uids[workloads[0]["metadata"]["name"]]

    await eventually(recreated, "the deleted workload is applied again")


async def test_a_resync_repairs_drift_no_watch_reports(cluster: Cluster, start_controller: StartController) -> None:
    running = await start_controller(watch_timeout_s=1, resync_s=0.5)
    await cluster.create("smol", SPEC)
    await eventually(lambda: applied(cluster, "smol", 1), "smol applied")
    config = next(o for o in rendered("smol") if o["kind"] == "ConfigMap")
    name = config["metadata"]["name"]
    lists = running.controller.watchers[0].lists

    # Deleted by hand: nothing watches ConfigMaps, so only a resync puts it back.
    await cluster.api.delete(Resource("v1", "configmaps", NAMESPACE), name)

    async def restored() -> bool:
        return present(cluster, config) is not None

    await eventually(restored, "the resync applied the ConfigMap again")
    assert running.controller.watchers[0].lists > lists
