"""The platform manifests: every overlay renders, every object passes the real Kubernetes schemas (strict) and
every ScaledObject KEDA's CRD schema, and every pod is locked down the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifests import (
    OVERLAYS,
    ROOT,
    deploy_tree,
    is_placeholder,
    keda_crd,
    kustomize,
    name_of,
    pod_specs,
)

# The oldest Kubernetes the manifests promise to work on (gRPC probes are GA since 1.27) and the newest known.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
TARGETS = (*OVERLAYS, "production+external-redis")
# Validated elsewhere: ScaledObjects against KEDA's own CRD (below).
NOT_BUILTIN = {"ScaledObject"}


@pytest.fixture(scope="module", params=TARGETS)
def rendered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[dict[str, Any]]]:
    tree = deploy_tree(tmp_path_factory.mktemp("deploy"))
    target: str = request.param
    if target == "production+external-redis":
        folder = tree / "overlays" / "production-external-redis"
        folder.mkdir()
        (folder / "kustomization.yaml").write_text(
            yaml.safe_dump({"resources": ["../production"], "components": ["../../components/external-redis"]})
        )
    else:
        folder = tree / "overlays" / target
    return target, kustomize(folder)


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"{kind}/{name} is not in the rendered manifests: {[name_of(o) for o in objs]}")


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from>") for e in container.get("env", [])}


def test_every_overlay_renders_the_whole_platform(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    target, objs = rendered
    names = {name_of(o) for o in objs}
    expected = {
        "Namespace/tiffin",
        "CustomResourceDefinition/tiffindeployments.tiffin.io",
        "Deployment/tiffin-interceptor",
        "Service/tiffin-interceptor",
        "PodDisruptionBudget/tiffin-interceptor",
        "ScaledObject/tiffin-interceptor",
        "Ingress/tiffin",
        "Deployment/tiffin-scaler",
        "Service/tiffin-scaler",
        "ServiceAccount/tiffin-controller",
        "Role/tiffin-controller",
        "RoleBinding/tiffin-controller",
        "Deployment/tiffin-controller",
        "ConfigMap/tiffin-grafana-dashboard",
        "NetworkPolicy/tiffin-default-deny-ingress",
        "NetworkPolicy/tiffin-interceptor",
        "NetworkPolicy/tiffin-scaler-from-keda",
    }
    assert expected <= names, f"{target} lacks {sorted(expected - names)}"
    redis = {"StatefulSet/tiffin-redis", "Service/tiffin-redis", "Service/tiffin-redis-headless"}
    redis.add("NetworkPolicy/tiffin-redis")
    if target.endswith("external-redis"):
        assert not redis & names, "the external-redis component must remove the in-cluster Redis"
    else:
        assert redis <= names
    assert "ConfigMap/tiffin-deployments" in names, "the deployments ConfigMap is missing"
    for obj in objs:
        if obj["kind"] != "Namespace" and obj["kind"] != "CustomResourceDefinition":
            assert obj["metadata"].get("namespace") == "tiffin", f"{name_of(obj)} is not in namespace tiffin"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tiffin", name_of(obj)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_passes_the_kubernetes_schemas_strictly(
    rendered: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    target, objs = rendered
    problems = []
    for obj in objs:
        if obj["kind"] in NOT_BUILTIN or is_placeholder(obj):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name_of(obj)}: {exc.message} at {'/'.join(map(str, exc.path))}")
    assert not problems, f"{target} on Kubernetes {version}:\n" + "\n".join(problems)


def test_the_committed_crd_is_used_once_it_exists(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    crd = find(objs, "CustomResourceDefinition", "tiffindeployments.tiffin.io")
    if is_placeholder(crd):
        pytest.skip("deploy/base/crds/tiffindeployments.tiffin.io.yaml is not committed yet (`tiffin render --crd`)")
    assert crd["spec"]["group"] == "tiffin.io"
    assert crd["spec"]["names"]["kind"] == "TiffinDeployment"


def test_scaled_objects_pass_kedas_crd_schema(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    target, objs = rendered
    crd = yaml.safe_load(keda_crd().read_text())
    versions = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
    scaled = [o for o in objs if o["kind"] == "ScaledObject"]
    assert scaled, f"{target} has no ScaledObject"
    for obj in scaled:
        group, version = obj["apiVersion"].split("/")
        assert group == crd["spec"]["group"]
        # A CRD's openAPIV3Schema is OpenAPI 3.0, whose keywords are draft 4's (boolean exclusiveMinimum).
        jsonschema.Draft4Validator(versions[version]).validate(obj)
        assert obj["spec"]["scaleTargetRef"]["name"] == "tiffin-interceptor"


def test_every_pod_is_locked_down_with_resources_and_probes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    target, objs = rendered
    workloads = [o for o in objs if list(pod_specs(o))]
    assert len(workloads) >= 3
    for obj in workloads:
        (pod,) = pod_specs(obj)
        where = f"{target}: {name_of(obj)}"
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc["runAsUser"] > 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        for volume in pod.get("volumes", []):
            mode = volume.get("secret", {}).get("defaultMode", 0o644)
            if "secret" in volume and not mode & 0o004:
                assert psc["fsGroup"] == psc["runAsGroup"], f"{where}: cannot read its Secret {volume['name']}"
        # Only the controller talks to the Kubernetes API.
        assert pod["automountServiceAccountToken"] is (obj["metadata"]["name"] == "tiffin-controller"), where
        for container in pod["containers"] + pod.get("initContainers", []):
            csc = container["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, where
            assert csc["readOnlyRootFilesystem"] is True, where
            assert csc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in csc["capabilities"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"
            assert "readinessProbe" in container and "livenessProbe" in container, where
            assert ":" in container["image"] and not container["image"].endswith(":latest"), where


def test_the_controller_is_probed_on_its_healthz_listener(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    (pod,) = pod_specs(find(objs, "Deployment", "tiffin-controller"))
    (container,) = pod["containers"]
    env = env_of(container)
    # The kubelet probes from the node: the listener must not be loopback-only (its default).
    assert env["TIFFIN_CONTROLLER_HOST"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == int(env["TIFFIN_CONTROLLER_PORT"])
    for kind in ("readinessProbe", "livenessProbe"):
        assert container[kind]["httpGet"] == {"path": "/healthz", "port": "health"}, kind


def test_the_scaler_is_probed_over_grpc_health(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    (pod,) = pod_specs(find(objs, "Deployment", "tiffin-scaler"))
    (container,) = pod["containers"]
    assert container["readinessProbe"]["grpc"]["port"] == 9090
    assert container["startupProbe"]["grpc"]["port"] == 9090
    # A Redis outage makes the scaler NOT_SERVING; that must not restart it.
    assert "grpc" not in container["livenessProbe"]
    assert env_of(container)["TIFFIN_SCALER_PORT"] == "9090"
    assert find(objs, "Service", "tiffin-scaler")["spec"]["ports"][0]["port"] == 9090


def test_the_interceptor_serves_plain_http_behind_an_ingress_with_cert_managers_tls(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = rendered
    ingress = find(objs, "Ingress", "tiffin")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    (pod,) = pod_specs(find(objs, "Deployment", "tiffin-interceptor"))
    (container,) = pod["containers"]
    env = env_of(container)
    assert env["TIFFIN_PLAIN_HTTP"] == "1"
    assert "TIFFIN_TLS_CERT_FILES" not in env
    # A non-loopback admin listener must have a token (the interceptor refuses to start otherwise).
    assert env["TIFFIN_ADMIN_HOST"] == "0.0.0.0" and env["TIFFIN_ADMIN_TOKEN_FILE"]
    assert pod["terminationGracePeriodSeconds"] > float(env["TIFFIN_DRAIN_TIMEOUT_S"])
    assert "replicas" not in find(objs, "Deployment", "tiffin-interceptor")["spec"], "KEDA's HPA owns replicas"


def test_production_keeps_two_interceptors_and_two_scalers(tmp_path: Path) -> None:
    objs = kustomize(deploy_tree(tmp_path) / "overlays" / "production")
    assert find(objs, "ScaledObject", "tiffin-interceptor")["spec"]["minReplicaCount"] >= 2
    assert find(objs, "PodDisruptionBudget", "tiffin-interceptor")["spec"]["minAvailable"] >= 1
    assert find(objs, "Deployment", "tiffin-scaler")["spec"]["replicas"] >= 2


def test_the_controllers_rbac_is_namespaced_and_names_every_verb(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    assert not [o for o in objs if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    rules = find(objs, "Role", "tiffin-controller")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert not [g for g in granted if "*" in g], "no wildcards"
    assert not [g for g in granted if g[1] == "secrets"], "the controller reads no Secrets"
    applied = [("configmaps", ""), ("services", ""), ("deployments", "apps"),
               ("networkpolicies", "networking.k8s.io"), ("scaledobjects", "keda.sh")]  # fmt: skip
    for resource, group in applied:
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert (group, resource, verb) in granted
    # Model caches are applied but never deleted: downloaded weights outlive their TiffinDeployment.
    assert {("", "persistentvolumeclaims", v) for v in ("create", "patch")} <= granted
    assert ("", "persistentvolumeclaims", "delete") not in granted
    assert ("tiffin.io", "tiffindeployments/status", "patch") in granted
    assert ("tiffin.io", "tiffindeployments", "patch") in granted  # its finalizer
    assert {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")} <= granted
    binding = find(objs, "RoleBinding", "tiffin-controller")
    assert binding["subjects"][0]["name"] == "tiffin-controller"
    (pod,) = pod_specs(find(objs, "Deployment", "tiffin-controller"))
    assert pod["serviceAccountName"] == "tiffin-controller"


def test_the_deployments_configmap_is_the_controllers_to_fill_and_both_readers_mount_it(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    target, objs = rendered
    configmap = find(objs, "ConfigMap", "tiffin-deployments")
    # No `data`: the controller owns its keys (server-side apply); `kubectl apply -k` must not fight it.
    assert "data" not in configmap and "binaryData" not in configmap, target
    for name in ("tiffin-interceptor", "tiffin-scaler"):
        (pod,) = pod_specs(find(objs, "Deployment", name))
        (container,) = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        env = env_of(container)
        assert mounted[env["TIFFIN_CONFIG"]]["configMap"]["name"] == "tiffin-deployments", name
        # What the controller writes names model folders that exist only on a deployment's runners.
        assert env["TIFFIN_CHECK_MODEL_FOLDERS"] == "0", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_overlays_registry_image_reaches_the_controllers_platform_image(overlay: str, tmp_path: Path) -> None:
    folder = deploy_tree(tmp_path) / "overlays" / overlay
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    kustomization["images"] = [{"name": "tiffin/platform", "newName": "registry.test/tiffin/platform", "newTag": "9"}]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objs = kustomize(folder)
    (pod,) = pod_specs(find(objs, "Deployment", "tiffin-controller"))
    (container,) = pod["containers"]
    assert container["image"] == "registry.test/tiffin/platform:9"
    assert env_of(container)["TIFFIN_PLATFORM_IMAGE"] == "registry.test/tiffin/platform:9"


def test_the_controller_may_touch_every_kind_render_returns(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    render = pytest.importorskip("tiffin.kube.render", reason="tiffin render has not landed on this branch yet")
    reconcile = pytest.importorskip("tiffin.kube.controller.reconcile", reason="the controller has not landed yet")
    _, objs = rendered
    rules = find(objs, "Role", "tiffin-controller")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    kept = {(api_version, kind) for api_version, kind in reconcile.KEPT_KINDS}  # applied, never pruned
    every = ("get", "list", "watch", "create", "patch", "delete")
    for api_version, kind, plural in render.RENDERED_KINDS:
        group = api_version.split("/")[0] if "/" in api_version else ""
        verbs = ("create", "patch") if (api_version, kind) in kept else every
        for verb in verbs:
            assert (group, plural, verb) in granted, f"the controller cannot {verb} {kind} ({group}/{plural})"


# Where each platform container's settings are read: its package, and the shared plumbing.
COMPONENT_SOURCES = {
    "interceptor": ["interceptor", "tiffin/common", "tiffin/contracts"],
    "scaler": ["scaler", "tiffin/common", "tiffin/contracts"],
    "tiffin.kube.controller": ["tiffin/kube/controller", "tiffin/common"],
}


def test_every_environment_variable_set_is_one_the_component_reads(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    checked = 0
    for obj in objs:
        for pod in pod_specs(obj):
            for container in pod["containers"]:
                command = container.get("command", [])
                module = command[2] if command[:2] == ["python", "-m"] else None
                if module not in COMPONENT_SOURCES:
                    continue
                folders = [ROOT / f for f in COMPONENT_SOURCES[module]]
                if not folders[0].is_dir():
                    continue  # not on this branch yet
                source = "\n".join(p.read_text() for folder in folders for p in folder.rglob("*.py"))
                for name in env_of(container):
                    assert f'"{name}"' in source, f"{name_of(obj)}: {module} never reads {name}"
                    checked += 1
    assert checked >= 10


def test_redis_is_append_only_and_refuses_writes_before_its_memory_limit(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    target, objs = rendered
    if target.endswith("external-redis"):
        pytest.skip("no in-cluster Redis")
    redis = find(objs, "StatefulSet", "tiffin-redis")
    (pod,) = pod_specs(redis)
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = int(args[args.index("--maxmemory") + 1].removesuffix("mb")) * 2**20
    limit = container["resources"]["limits"]["memory"]
    unit = {"Gi": 2**30, "Mi": 2**20}[limit[-2:]]
    limit_bytes = int(limit[:-2]) * unit
    assert maxmemory <= 0.65 * limit_bytes, f"{target}: maxmemory leaves no room for a rewrite's fork under {limit}"
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/data" and redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policies_admit_redis_to_every_tiffin_pod_and_nothing_to_a_deployments_pods(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    target, objs = rendered
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    # The labels `tiffin render` gives a deployment's pods (tiffin.kube.render.labels).
    runner = {"app.kubernetes.io/name": "tiffin", "app.kubernetes.io/part-of": "tiffin",
              "app.kubernetes.io/managed-by": "tiffin", "tiffin.io/deployment": "smollm2",
              "app.kubernetes.io/component": "runner"}  # fmt: skip
    api = {**runner, "app.kubernetes.io/component": "api"}
    for pod in (runner, api):
        admitting = [p for p in policies if selects(p["spec"]["podSelector"], pod) and p["spec"].get("ingress")]
        assert not admitting, f"{target}: platform policies widen what render's policies admit to {pod}"
    assert [p for p in policies if selects(p["spec"]["podSelector"], runner)], "default deny must cover them"
    if target.endswith("external-redis"):
        return
    (redis_policy,) = [p for p in policies if p["metadata"]["name"] == "tiffin-redis"]
    (rule,) = redis_policy["spec"]["ingress"]
    assert any(selects(source["podSelector"], runner) for source in rule["from"]), "runners must reach Redis"
