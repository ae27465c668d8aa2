"""The deployments ConfigMap the interceptor and scaler read, written by the controller (API test double).

A new, changed or deleted TiffinDeployment changes the ConfigMap `tiffin-deployments` and the content hash on
the interceptor's and scaler's pod templates (so they roll); an unchanged one, a status write or a controller
restart changes neither. The set written is one the components can load (checked with their own loader).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.kube.controller.conftest import NAMESPACE, RESOURCES, Cluster, StartController, eventually
from tests.kube.controller.test_lifecycle import applied
from tiffin.contracts.config import Deployment, load_deployments
from tiffin.kube.controller.catalog import ANNOTATION, CONFIGMAP, ROLLOUT, ROLLOUT_MANAGER, digest
from tiffin.kube.controller.kubeapi import Resource
from tiffin.kube.render import config_yaml

CONFIGMAPS = Resource("v1", "configmaps", NAMESPACE)
WORKLOADS = Resource("apps/v1", "deployments", NAMESPACE)
SPEC: dict[str, Any] = {"model": "smollm2"}


async def install_platform(cluster: Cluster) -> None:
    """What `kubectl apply -k deploy/overlays/dev` leaves: the ConfigMap without data, the two readers."""
    labels = {"app.kubernetes.io/name": "tiffin", "app.kubernetes.io/component": "deployments"}
    await cluster.api.request("POST", CONFIGMAPS.path(), body={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP, "labels": labels}})  # fmt: skip
    for name in ROLLOUT:
        template = {
            "metadata": {"labels": {"app": name}, "annotations": {"kept": "yes"}},
            "spec": {"containers": [{"name": name.removeprefix("tiffin-"), "image": "tiffin/platform"}]},
        }
        body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template}}  # fmt: skip
        await cluster.api.request("POST", WORKLOADS.path(), body=body)


def data(cluster: Cluster) -> dict[str, str] | None:
    stored = cluster.fake.items("v1", "configmaps", NAMESPACE).get(CONFIGMAP)
    return None if stored is None else dict(stored.get("data") or {})


def stamps(cluster: Cluster) -> set[str | None]:
    """The hash on each reader's pod template (one value when both carry the same)."""
    items = cluster.fake.items("apps/v1", "deployments", NAMESPACE)
    return {(items[n]["spec"]["template"]["metadata"].get("annotations") or {}).get(ANNOTATION) for n in ROLLOUT}


def versions(cluster: Cluster) -> list[str]:
    """resourceVersions of the ConfigMap and the two readers: any write to them moves one."""
    found = [cluster.fake.items("v1", "configmaps", NAMESPACE)[CONFIGMAP]]
    found += [cluster.fake.items("apps/v1", "deployments", NAMESPACE)[n] for n in ROLLOUT]
    return [o["metadata"]["resourceVersion"] for o in found]


async def published(cluster: Cluster, wanted: dict[str, str]) -> bool:
    return data(cluster) == wanted and stamps(cluster) == {digest(wanted)}


def yaml_of(name: str, spec: dict[str, Any]) -> str:
    return config_yaml(Deployment.model_validate({"name": name, **spec}))


async def test_an_empty_cluster_publishes_an_empty_set(cluster: Cluster, start_controller: StartController) -> None:
    await install_platform(cluster)
    await start_controller()
    await eventually(lambda: published(cluster, {}), "an empty ConfigMap and its hash on both readers")


async def test_new_changed_and_deleted_deployments_change_the_configmap_and_roll_the_readers(
    cluster: Cluster, start_controller: StartController, tmp_path: Path
) -> None:
    await install_platform(cluster)
    await start_controller()
    await eventually(lambda: published(cluster, {}), "the empty set")

    await cluster.create("smol", SPEC)
    first = {"smol.yaml": yaml_of("smol", SPEC)}
    await eventually(lambda: published(cluster, first), "smol.yaml published and stamped")
    # What the interceptor and the scaler do with the mounted folder: it loads (model folders are not checked
    # there on a cluster: TIFFIN_CHECK_MODEL_FOLDERS=0).
    for key, text in first.items():
        (tmp_path / key).write_text(text)
    assert [d.name for d in load_deployments([tmp_path], check_models=False)] == ["smol"]
    for name in ROLLOUT:  # only the annotation is the rollout manager's: the rest of the template stays
        stored = cluster.fake.items("apps/v1", "deployments", NAMESPACE)[name]
        assert stored["spec"]["template"]["metadata"]["annotations"]["kept"] == "yes"
        assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "tiffin/platform"
        assert stored["spec"]["selector"] == {"matchLabels": {"app": name}}
    assert cluster.fake.items("v1", "configmaps", NAMESPACE)[CONFIGMAP]["metadata"]["labels"]
    rollout_applies = [s for s in cluster.fake.applies("/deployments/tiffin-") if "smol" not in s.path]
    assert rollout_applies and all(s.query["fieldManager"] == ROLLOUT_MANAGER for s in rollout_applies)

    changed = {"model": "smollm2", "limits": {"max_queue": 7}}
    await cluster.api.merge_patch(RESOURCES, "smol", {"spec": changed})
    second = {"smol.yaml": yaml_of("smol", changed)}
    assert second != first
    await eventually(lambda: published(cluster, second), "the changed YAML published and stamped")

    await cluster.create("other", SPEC)
    both = {**second, "other.yaml": yaml_of("other", SPEC)}
    await eventually(lambda: published(cluster, both), "other.yaml added")

    await cluster.api.delete(RESOURCES, "smol")
    await eventually(lambda: published(cluster, {"other.yaml": both["other.yaml"]}), "smol.yaml removed")


async def test_unchanged_deployments_a_status_write_and_a_restart_write_nothing(
    cluster: Cluster, start_controller: StartController
) -> None:
    await install_platform(cluster)
    running = await start_controller()
    await cluster.create("smol", SPEC)
    wanted = {"smol.yaml": yaml_of("smol", SPEC)}
    await eventually(lambda: applied(cluster, "smol", 1), "smol applied")
    await eventually(lambda: published(cluster, wanted), "smol published")
    before = versions(cluster)

    # A status-only change (no new generation), then a restart that lists and reconciles everything again.
    await cluster.api.merge_patch(RESOURCES, "smol", {"status": {"note": "by hand"}}, "status")
    await running.stop()
    again = await start_controller(identity="controller-b")

    async def relisted() -> bool:
        reconciler = again.controller.reconciler
        return reconciler is not None and "smol" in reconciler.entries and again.leading

    await eventually(relisted, "the new leader reconciled smol")
    await eventually(lambda: applied(cluster, "smol", 1), "still applied")
    assert versions(cluster) == before


async def test_an_invalid_change_keeps_the_last_valid_yaml_even_across_a_restart(
    cluster: Cluster, start_controller: StartController
) -> None:
    await install_platform(cluster)
    running = await start_controller()
    await cluster.create("smol", SPEC)
    wanted = {"smol.yaml": yaml_of("smol", SPEC)}
    await eventually(lambda: published(cluster, wanted), "smol published")

    await cluster.api.merge_patch(RESOURCES, "smol", {"spec": {"colour": "blue"}})

    async def refused() -> bool:
        cond = await cluster.condition("smol", "Applied")
        return bool(cond and cond["reason"] == "InvalidSpec")

    await eventually(refused, "the invalid spec reported")
    assert data(cluster) == wanted  # its objects keep serving, and so does its entry
    await running.stop()
    await start_controller(identity="controller-b")
    await eventually(refused, "reported again by the new leader")
    assert data(cluster) == wanted


async def test_a_route_taken_twice_leaves_the_later_deployment_out(
    cluster: Cluster, start_controller: StartController, tmp_path: Path
) -> None:
    await install_platform(cluster)
    await start_controller()
    shared = {"model": "smollm2", "routing": {"models": ["shared"]}}
    await cluster.create("alpha", shared)
    await cluster.create("beta", shared)
    await eventually(lambda: applied(cluster, "beta", 1), "beta applied")
    await eventually(lambda: published(cluster, {"alpha.yaml": yaml_of("alpha", shared)}), "only alpha published")
    for key, text in (data(cluster) or {}).items():
        (tmp_path / key).write_text(text)
    assert [d.name for d in load_deployments([tmp_path], check_models=False)] == ["alpha"]


async def test_without_the_readers_installed_the_configmap_is_still_written(
    cluster: Cluster, start_controller: StartController
) -> None:
    await start_controller()
    await cluster.create("smol", SPEC)

    async def written() -> bool:
        return data(cluster) == {"smol.yaml": yaml_of("smol", SPEC)}

    await eventually(written, "the ConfigMap created by the apply")
    assert cluster.fake.items("apps/v1", "deployments", NAMESPACE).keys().isdisjoint(ROLLOUT)


async def test_a_deployment_left_out_says_why_and_is_taken_back_when_the_route_frees(
    cluster: Cluster, start_controller: StartController
) -> None:
    await install_platform(cluster)
    await start_controller()
    shared = {"model": "smollm2", "routing": {"models": ["shared"]}}
    await cluster.create("alpha", shared)
    await cluster.create("beta", shared)

    async def route_taken() -> dict[str, Any] | None:
        ready = await cluster.condition("beta", "Ready")
        return ready if ready and ready["reason"] == "RouteTaken" else None

    ready = await eventually(route_taken, "beta: Ready=False, RouteTaken")
    assert ready["status"] == "False"
    assert "'alpha'" in ready["message"] and "shared" in ready["message"]
    alpha = await cluster.condition("alpha", "Ready")
    assert alpha is not None and alpha["reason"] != "RouteTaken"

    await cluster.api.delete(RESOURCES, "alpha")
    await eventually(lambda: published(cluster, {"beta.yaml": yaml_of("beta", shared)}), "beta published instead")

    async def served() -> dict[str, Any] | None:
        ready = await cluster.condition("beta", "Ready")
        return ready if ready and ready["reason"] != "RouteTaken" else None

    await eventually(served, "beta's Ready no longer says RouteTaken")
